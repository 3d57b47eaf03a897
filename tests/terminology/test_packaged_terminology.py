"""Lookup / validate / translate / expand against the packaged data, with exact codes."""

import pytest

from terminology import NotSupported, UnknownConceptMap, UnknownValueSet, urls

V2_0001 = urls.v2_table("0001")
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"


# --- $lookup -----------------------------------------------------------------------------------

def test_lookup_v2_sex_returns_display_and_zh_cn_designation(packaged):
    result = packaged.lookup(V2_0001, "F")
    assert result.display == "Female"
    assert result.version == "2.9"
    assert result.display_for("zh-CN") == "女"
    assert result.display_for("zh") == "女"
    assert result.display_for("fr") == "Female"


def test_lookup_unknown_code_or_system_is_none(packaged):
    assert packaged.lookup(V2_0001, "Z") is None
    assert packaged.lookup("http://example.org/nope", "F") is None
    assert packaged.lookup(V2_0001, "F", version="2.1") is None


def test_lookup_reports_hierarchy_as_parent_and_child_properties(packaged):
    result = packaged.lookup(urls.V3_ACT_CODE, "IMP")
    props = {(p.code, p.value) for p in result.properties}
    assert ("parent", "_ActEncounterCode") in props
    assert {("child", "ACUTE"), ("child", "NONAC")} <= props
    assert result.display_for("zh-CN") == "住院"


def test_lookup_flags_abstract_and_deprecated_concepts(packaged):
    assert packaged.lookup(urls.V3_ACT_CODE, "_ActEncounterCode").abstract
    off_scale_low = packaged.lookup(urls.v2_table("0078"), "<")
    assert ("status", "deprecated") in {(p.code, p.value) for p in off_scale_low.properties}
    assert not off_scale_low.inactive  # deprecated is still usable


def test_lookup_ucum_is_grammar_based(packaged):
    assert packaged.lookup(urls.UCUM, "mg/dL").display == "mg/dL"
    assert packaged.lookup(urls.UCUM, "mg/DL") is None


# --- $validate-code ----------------------------------------------------------------------------

def test_validate_code_in_value_set_with_display_in_english_or_chinese(packaged):
    assert packaged.validate_code(GENDER_VS, urls.ADMINISTRATIVE_GENDER, "female", "Female") == (True, "")
    assert packaged.validate_code(GENDER_VS, urls.ADMINISTRATIVE_GENDER, "female", " female ") == (True, "")
    assert packaged.validate_code(GENDER_VS, urls.ADMINISTRATIVE_GENDER, "female", "女") == (True, "")


def test_validate_code_rejects_wrong_display_with_expected_one(packaged):
    ok, message = packaged.validate_code(GENDER_VS, urls.ADMINISTRATIVE_GENDER, "female", "Male")
    assert not ok and "'Female'" in message


def test_validate_code_rejects_code_outside_value_set(packaged):
    ok, message = packaged.validate_code(GENDER_VS, V2_0001, "F")
    assert not ok and "not in value set" in message
    ok, _ = packaged.validate_code("http://hl7.org/fhir/ValueSet/identifier-type", urls.v2_table("0203"), "NI")
    assert not ok  # NI is in table 0203 but not in the R4 identifier-type value set
    assert packaged.validate_code("http://hl7.org/fhir/ValueSet/identifier-type",
                                  urls.v2_table("0203"), "MR") == (True, "")


def test_validate_code_without_system_uses_the_only_match(packaged):
    assert packaged.validate_code(GENDER_VS, code="male") == (True, "")


def test_validate_code_excluded_abstract_code_is_invalid(packaged):
    vs = "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode"
    assert packaged.validate_code(vs, urls.V3_ACT_CODE, "AMB") == (True, "")
    assert packaged.validate_code(vs, urls.V3_ACT_CODE, "_ActEncounterCode")[0] is False


def test_validate_code_against_code_system_only(packaged):
    assert packaged.validate_code(system=urls.v2_table("0085"), code="C") == (True, "")
    ok, message = packaged.validate_code(system=urls.v2_table("0085"), code="Q")
    assert not ok and "Unknown code" in message
    ok, message = packaged.validate_code(system="http://loinc.org", code="2345-7")
    assert not ok and "Unknown code system" in message
    assert packaged.validate_code(system=urls.UCUM, code="10*9/L") == (True, "")


def test_validate_code_unknown_value_set_raises(packaged):
    with pytest.raises(UnknownValueSet):
        packaged.validate_code("http://example.org/ValueSet/none", V2_0001, "F")


# --- $translate --------------------------------------------------------------------------------

@pytest.mark.parametrize("table, code, system, target", [
    ("0001", "F", urls.ADMINISTRATIVE_GENDER, "female"),
    ("0001", "A", urls.ADMINISTRATIVE_GENDER, "other"),
    ("0002", "M", urls.V3_MARITAL_STATUS, "M"),
    ("0002", "A", urls.V3_MARITAL_STATUS, "L"),
    ("0002", "U", urls.V3_NULL_FLAVOR, "UNK"),
    ("0004", "I", urls.V3_ACT_CODE, "IMP"),
    ("0004", "O", urls.V3_ACT_CODE, "AMB"),
    ("0004", "E", urls.V3_ACT_CODE, "EMER"),
    ("0078", "HH", urls.V3_OBSERVATION_INTERPRETATION, "HH"),
    ("0078", "<", urls.V3_OBSERVATION_INTERPRETATION, "<"),
    ("0085", "F", urls.OBSERVATION_STATUS, "final"),
    ("0085", "C", urls.OBSERVATION_STATUS, "corrected"),
    ("0085", "A", urls.OBSERVATION_STATUS, "amended"),
    ("0085", "D", urls.OBSERVATION_STATUS, "entered-in-error"),
    ("0085", "W", urls.OBSERVATION_STATUS, "entered-in-error"),
    ("0085", "X", urls.OBSERVATION_STATUS, "cancelled"),
    ("0123", "F", urls.DIAGNOSTIC_REPORT_STATUS, "final"),
    ("0123", "R", urls.DIAGNOSTIC_REPORT_STATUS, "partial"),
    ("0123", "O", urls.DIAGNOSTIC_REPORT_STATUS, "registered"),
    ("0203", "MR", urls.v2_table("0203"), "MR"),
])
def test_translate_v2_codes_to_fhir(packaged, table, code, system, target):
    results = packaged.translate(urls.v2_table(table), code, target_system=system)
    assert [(t.system, t.code) for t in results] == [(system, target)]


def test_translate_returns_equivalence_display_and_map(packaged):
    [t] = packaged.translate(urls.v2_table("0123"), "O")
    assert (t.equivalence, t.display) == ("wider", "Registered")
    assert t.conceptmap == urls.concept_map("v2-0123-to-diagnostic-report-status")
    assert t.coding() == {"system": urls.DIAGNOSTIC_REPORT_STATUS, "code": "registered", "display": "Registered"}


def test_translate_codes_the_ig_leaves_unmapped_give_nothing(packaged):
    assert packaged.translate(urls.v2_table("0085"), "U") == []
    assert packaged.translate(urls.v2_table("0078"), "QCF") == []
    assert packaged.translate(urls.v2_table("0203"), "NOT-A-CODE") == []


def test_translate_encounter_class_keeps_v2_codes_without_v3_equivalent(packaged):
    assert [(t.system, t.code) for t in packaged.translate(urls.v2_table("0004"), "R")] == [
        (urls.v2_table("0004"), "R")]


def test_translate_reverse_reads_fhir_to_v2_maps_backwards(packaged):
    results = packaged.translate(urls.v2_table("0200"), "L", reverse=True)
    assert ("http://hl7.org/fhir/name-use", "official") in {(t.system, t.code) for t in results}


def test_translate_restricted_to_unknown_map_raises(packaged):
    with pytest.raises(UnknownConceptMap):
        packaged.translate(V2_0001, "F", conceptmap_url="http://example.org/ConceptMap/none")


# --- $expand -----------------------------------------------------------------------------------

def test_expand_whole_system(packaged):
    assert packaged.expand(GENDER_VS) == [
        (urls.ADMINISTRATIVE_GENDER, "male", "Male"), (urls.ADMINISTRATIVE_GENDER, "female", "Female"),
        (urls.ADMINISTRATIVE_GENDER, "other", "Other"), (urls.ADMINISTRATIVE_GENDER, "unknown", "Unknown")]


def test_expand_is_a_filter_with_exclude(packaged):
    codes = [c for _, c, _ in packaged.expand("http://terminology.hl7.org/ValueSet/v3-ActEncounterCode")]
    assert codes == ["AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR"]


def test_expand_two_includes_keeps_compose_order(packaged):
    members = packaged.expand("http://hl7.org/fhir/ValueSet/marital-status")
    assert len(members) == 11
    assert members[-1] == (urls.V3_NULL_FLAVOR, "UNK", "unknown")


def test_expand_concept_list_from_another_system(packaged):
    members = packaged.expand("http://terminology.hl7.org/ValueSet/v2-0125", count=2)
    assert members == [(urls.v2_table("0440"), "AD", "Address"),
                       (urls.v2_table("0440"), "AUI", "Authorization information")]


def test_expand_text_filter_matches_designations_and_pages(packaged):
    vs = urls.value_set(urls.GBT_3304_ETHNICITY)
    assert packaged.expand(vs, filter="Uygur") == [(urls.code_system(urls.GBT_3304_ETHNICITY), "05", "维吾尔族")]
    assert [c for _, c, _ in packaged.expand(vs, offset=54)] == ["55", "56"]
    assert [c for _, c, _ in packaged.expand(vs, offset=2, count=3)] == ["03", "04", "05"]


def test_expand_unknown_value_set_raises(packaged):
    with pytest.raises(UnknownValueSet):
        packaged.expand("http://example.org/ValueSet/none")


# --- adding resources --------------------------------------------------------------------------

def test_add_value_set_with_property_filter_and_descendent_of(fresh):
    fresh.add({"resourceType": "ValueSet", "url": "http://example.org/ValueSet/inpatient",
               "compose": {"include": [{"system": urls.V3_ACT_CODE,
                                        "filter": [{"property": "concept", "op": "descendent-of",
                                                    "value": "IMP"}]}]}})
    assert [c for _, c, _ in fresh.expand("http://example.org/ValueSet/inpatient")] == ["ACUTE", "NONAC"]
    fresh.add({"resourceType": "ValueSet", "url": "http://example.org/ValueSet/deprecated-flags",
               "compose": {"include": [{"system": urls.v2_table("0078"),
                                        "filter": [{"property": "status", "op": "=", "value": "deprecated"}]}]}})
    assert "<" in [c for _, c, _ in fresh.expand("http://example.org/ValueSet/deprecated-flags")]


def test_add_unsupported_filter_raises_not_supported(fresh):
    fresh.add({"resourceType": "ValueSet", "url": "http://example.org/ValueSet/bad",
               "compose": {"include": [{"system": urls.V3_ACT_CODE,
                                        "filter": [{"property": "concept", "op": "generalizes", "value": "IMP"}]}]}})
    with pytest.raises(NotSupported):
        fresh.expand("http://example.org/ValueSet/bad")


def test_add_code_system_and_concept_map_are_used_at_once(fresh):
    fresh.add({"resourceType": "CodeSystem", "url": "http://example.org/cs", "version": "1", "content": "complete",
               "concept": [{"code": "a", "display": "A"}]})
    fresh.add({"resourceType": "CodeSystem", "url": "http://example.org/cs", "version": "2", "content": "complete",
               "concept": [{"code": "a", "display": "A2"}, {"code": "b", "display": "B"}]})
    assert fresh.lookup("http://example.org/cs", "a").display == "A2"
    assert fresh.lookup("http://example.org/cs", "a", version="1").display == "A"
    assert fresh.lookup("http://example.org/cs", "b", version="1") is None
    cm = {"resourceType": "ConceptMap", "url": "http://example.org/cm",
          "group": [{"source": "http://example.org/cs", "target": V2_0001,
                     "element": [{"code": "a", "target": [{"code": "F", "equivalence": "equivalent"}]}]}]}
    fresh.add(cm)
    assert [t.code for t in fresh.translate("http://example.org/cs", "a")] == ["F"]
    cm["group"][0]["element"][0]["target"][0]["code"] = "M"
    fresh.add(cm)  # replacing a map drops its old rows
    assert [(t.code, t.display) for t in fresh.translate("http://example.org/cs", "a")] == [("M", "Male")]


def test_add_leaves_snapshots_already_read_untouched(fresh):
    before = fresh._state
    fresh.add({"resourceType": "CodeSystem", "url": "http://example.org/x", "content": "complete",
               "concept": [{"code": "x"}]})
    assert "http://example.org/x" not in before.latest_cs
    assert fresh.lookup("http://example.org/x", "x").code == "x"


def test_resources_lists_everything_loaded(packaged):
    types = {r["resourceType"] for r in packaged.resources()}
    assert types == {"CodeSystem", "ValueSet", "ConceptMap"}
    assert any(r["url"] == urls.code_system(urls.GBT_2261_1_SEX) for r in packaged.resources())
