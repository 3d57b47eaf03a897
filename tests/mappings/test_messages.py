"""Message types and rules beyond the hard cases: SIU, VXU, A47, MRG in A06, errors, profiles,
local lab codes, identity across messages."""

from __future__ import annotations

import pytest

from adapters.hl7v2 import parse_message
from mappings import FacilityProfile, MappingError, UnsupportedMessage, convert, identity, load_profiles
from terminology import Terminology

from .conftest import CORPUS_DIR, needs_corpus, only, validate

MSH = "MSH|^~\\&|HIS|HOSPA|HUB|ALLIANCE|20240320090000+0800||{type}|CTRL{n}|P|2.5.1"
PID = "PID|1||MRN5^^^HOSPA^MR||李^小龙||19700101|M"


def msg(*segments: str, type_: str = "ADT^A01^ADT_A01", n: int = 1):
    return parse_message("\r".join([MSH.format(type=type_, n=n), *segments]) + "\r")


def test_siu_status_by_trigger_start_from_ais_and_participants():
    segs = ["SCH|A100^HIS|F200^RIS|||||CHK^Checkup^L|||^^^20240321090000+0800^20240321093000+0800",
            PID, "AIS|1||US01^Ultrasound^L|20240321100000+0800|||20|MIN",
            "AIP|1||D01^WANG^FANG^^^^^^HOSPA", "AIL|1||US^Room 3^^HOSPA"]
    booked = convert(msg(*segs, type_="SIU^S12^SIU_S12"))
    appt = only(booked, "Appointment")
    assert appt["status"] == "booked"
    assert appt["start"] == "2024-03-21T10:00:00+08:00" and appt["minutesDuration"] == 20   # AIS-4/7
    assert "end" not in appt                       # SCH-11's end belongs to SCH-11's start
    assert appt["participant"][0] == {"actor": {"reference": f"Patient/{only(booked, 'Patient')['id']}"},
                                      "status": "accepted"}
    assert appt["participant"][1]["actor"]["reference"].startswith("Practitioner/")
    assert appt["participant"][2]["actor"] == {"display": "HOSPA US Room 3"}
    assert appt["id"] == identity.resource_id("Appointment", identity.org_system("HOSPA", "appointment"), "A100")
    cancelled = convert(msg(segs[0].replace("|||||CHK", "||||CANC^Patient request^L|CHK"), *segs[1:],
                            type_="SIU^S15^SIU_S12", n=2))
    appt2 = only(cancelled, "Appointment")
    assert appt2["status"] == "cancelled" and appt2["id"] == appt["id"]
    assert appt2["cancelationReason"]["coding"][0]["code"] == "CANC"
    assert only(convert(msg(*segs, type_="SIU^S26^SIU_S12")), "Appointment")["status"] == "noshow"
    for r in (booked, cancelled):
        for res in r.resources():
            validate(res)


@needs_corpus
def test_vxu_immunizations_route_dose_and_their_observations():
    r = convert(parse_message((CORPUS_DIR / "hl7-v2-to-fhir-ig/test_conversions/VXU_V04.hl7").read_bytes()))
    imms = r.resources("Immunization")
    assert len(imms) == 3
    first = imms[0]
    assert first["vaccineCode"]["coding"][0] == {"system": "http://hl7.org/fhir/sid/ndc", "code": "49281-0215-88",
                                                 "display": "TENIVAC"}
    # RXA-3 has no offset: the sender's zone is MSH-7's (-0500)
    assert first["occurrenceDateTime"] == "2015-06-24T08:30:00-05:00"
    assert first["status"] == "completed" and first["primarySource"] is True
    assert first["doseQuantity"] == {"value": 0.5, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"}
    assert first["lotNumber"] == "315841" and first["manufacturer"] == {"display": "Sanofi Pasteur"}
    assert first["route"]["coding"][0]["code"] == "C28161" and first["site"]["coding"][0]["code"] == "RD"
    assert imms[1]["primarySource"] is False and "doseQuantity" not in imms[1]      # 999 = unknown amount
    obs = r.resources("Observation")
    assert len(obs) == 4 and all(o["partOf"] == [{"reference": f"Immunization/{first['id']}"}] for o in obs)
    for res in r.resources():
        validate(res)


def test_a47_identifier_change_is_a_merge_and_a06_mrg_is_not():
    a47 = convert(msg("EVN|A47|20240320090000+0800", PID, "MRG|OLD5^^^HOSPA^MR", type_="ADT^A47^ADT_A30"))
    new_id = identity.patient_id(identity.org_system("HOSPA", "mrn"), "MRN5")
    old_id = identity.patient_id(identity.org_system("HOSPA", "mrn"), "OLD5")
    assert a47.merges == [(new_id, old_id)]
    a06 = convert(msg(PID, "MRG|||PACCT001", "PV1|1|I|W1^1^1||||||||||||||||V77^^^HOSPA^VN",
                      type_="ADT^A06^ADT_A06"))
    assert a06.merges == [] and len(a06.resources("Patient")) == 1


def test_several_obr_under_one_order_number_stay_apart():
    r = convert(msg(PID, "ORC|RE|REQ1^HIS", "OBR|1|REQ1^HIS||P1^Panel one^L", "OBX|1|NM|A^A^L||1|||||F",
                    "OBR|2|REQ1^HIS||P2^Panel two^L", "OBX|1|NM|A^A^L||2|||||F",
                    "OBR|3|REQ1^HIS||P2^Panel two^L", "OBX|1|NM|A^A^L||3|||||F", type_="ORU^R01^ORU_R01"))
    assert [s["code"]["coding"][0]["code"] for s in r.resources("ServiceRequest")] == ["P1", "P2", "P2"]
    assert len(r.resources("DiagnosticReport")) == 3
    assert sorted(o["valueQuantity"]["value"] for o in r.resources("Observation")) == [1, 2, 3]
    assert sum("ids include OBR-1" in w for w in r.warnings) == 2


def test_obr_15_specimen_source_of_v2_3_and_v2_4():
    r = convert(msg(PID, "OBR|1|O7^HIS|F7^LIS|GLU^Glucose^L|||20240320080000||||||||BLD^Blood^HL70070",
                    "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F", type_="ORU^R01^ORU_R01"))
    spec = only(r, "Specimen")
    assert spec["type"]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0070", "code": "BLD",
                                         "display": "Blood"}
    assert spec["collection"] == {"collectedDateTime": "2024-03-20T08:00:00+08:00"}
    assert only(r, "Observation")["specimen"] == {"reference": f"Specimen/{spec['id']}"}
    assert only(r, "DiagnosticReport")["specimen"] == [{"reference": f"Specimen/{spec['id']}"}]
    validate(spec)


def test_ed_in_an_order_is_a_document_reference_related_to_the_order():
    r = convert(msg(PID, "ORC|NW|O5^HIS", "OBR|1|O5^HIS||XR^Chest^L",
                    "OBX|1|ED|IMG^Thumbnail^L||^IM^JPEG^Base64^/9j/4AAQ||||||F", type_="OML^O21^OML_O21"))
    doc = only(r, "DocumentReference")
    assert doc["content"] == [{"attachment": {"contentType": "image/jpeg", "data": "/9j/4AAQ", "title": "Thumbnail"}}]
    assert doc["context"]["related"] == [{"reference": f"ServiceRequest/{only(r, 'ServiceRequest')['id']}"}]
    assert r.resources("Observation") == []
    for res in r.resources():
        validate(res)


@pytest.mark.parametrize("trigger, status, end", [("A01", "finished", True), ("A03", "finished", True),
                                                  ("A08", "finished", True), ("A11", "cancelled", True),
                                                  ("A13", "in-progress", False), ("A05", "planned", True)])
def test_encounter_status_by_trigger(trigger, status, end):
    pv1 = "PV1|1|I|W1^1^1||||||||||||||||V9^^^HOSPA^VN|" + "|" * 24 + "20240301080000|20240305100000"
    enc = only(convert(msg("EVN|" + trigger, PID, pv1, type_=f"ADT^{trigger}^ADT_A01")), "Encounter")
    assert enc["status"] == status and enc["period"]["start"] == "2024-03-01T08:00:00+08:00"
    assert ("end" in enc["period"]) is end
    assert enc["id"] == identity.resource_id("Encounter", identity.org_system("HOSPA", "visit"), "V9")


@pytest.mark.parametrize("sent, gender", [("F", "female"), ("M", "male"), ("U", "unknown"), ("2", "female"),
                                          ("1", "male"), ("9", "unknown"), ("X", "other"), ("Q", None)])
def test_sex_from_table_0001_or_gbt_2261_1(sent, gender):
    p = only(convert(msg(f"PID|1||MRN5^^^HOSPA^MR||李^小龙||19700101|{sent}")), "Patient")
    assert p.get("gender") == gender


def test_in1_coverage():
    fields = [""] * 37
    fields[:5] = ["IN1", "1", "P01^城镇职工医保", "C330^^^HOSPA", "杭州市医保中心"]
    fields[12], fields[13], fields[36] = "20240101", "20241231", "YB12345"
    in1 = "|".join(fields)
    r = convert(msg(PID, in1))
    cov = only(r, "Coverage")
    assert cov["beneficiary"] == {"reference": f"Patient/{only(r, 'Patient')['id']}"}
    assert cov["payor"] == [{"display": "杭州市医保中心"}] and cov["subscriberId"] == "YB12345"
    assert cov["period"] == {"start": "2024-01-01", "end": "2024-12-31"} and cov["status"] == "active"
    assert cov["class"][0]["value"] == "P01"
    validate(cov)


def test_memoized_codes_and_units_stay_with_their_sender():
    m = msg(PID, "OBR|1|O1^HIS|F1^LIS|P^Panel^L", "OBX|1|NM|GLU^Glucose^L||5.5|u1^unit^L|1-2||||F",
            type_="ORU^R01^ORU_R01")
    for org in ("HOSPA", "HOSPB", "HOSPA"):
        obs = only(convert(m, org), "Observation")
        local = f"https://yilian.example.org/fhir/CodeSystem/local/{org}/"
        assert obs["code"]["coding"][0]["system"] == local + "lab"
        assert obs["valueQuantity"]["system"] == local + "unit"
        assert obs["referenceRange"][0]["low"]["system"] == local + "unit"


def test_same_patient_from_adt_and_oru_is_one_resource():
    adt = convert(msg(PID))
    oru = convert(msg(PID, "OBR|1|O1^HIS|F1^LIS|GLU^Glucose^L", "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F",
                      type_="ORU^R01^ORU_R01", n=2))
    assert only(adt, "Patient")["id"] == only(oru, "Patient")["id"]
    assert only(oru, "Patient")["name"] == [{"text": "李小龙", "family": "李", "given": ["小龙"]}]


@pytest.mark.parametrize("segments, type_, code, where", [
    (["PID|1||^^^HOSPA^MR||DOE^JOHN"], "ADT^A01^ADT_A01", 101, ("PID", 3)),
    ([PID, "OBR|1|O1|F1|GLU^Glucose^L", "OBX|1|NM|||5.5|mmol/L|||||F"], "ORU^R01^ORU_R01", 101, ("OBX", 3)),
    ([PID, "OBR|1|O1|F1", "OBX|1|NM|GLU^Glucose^L||5.5"], "ORU^R01^ORU_R01", 101, ("OBR", 4)),
    ([PID, "ORC|RE|O1|F1", "RXA|0|1|2024-03-01||88^flu^CVX|0.5"], "VXU^V04^VXU_V04", 102, ("RXA", 3)),
    ([PID, "OBR|1|O1|F1|R^Report^L", "OBX|1|ED|PDF^Report^L||^AP^PDF^Base64^not*base64"], "ORU^R01^ORU_R01",
     102, ("OBX", 5)),
    (["EVN|A01"], "ADT^A01^ADT_A01", 101, ("PID", None)),
    ([PID, "OBR|1|O1|F1|GLU^Glucose^L", "OBX|1|QQ|GLU^Glucose^L||5.5"], "ORU^R01^ORU_R01", 103, ("OBX", 2)),
])
def test_structural_problems_are_mapping_errors_with_segment_and_field(segments, type_, code, where):
    with pytest.raises(MappingError) as err:
        convert(msg(*segments, type_=type_))
    assert type(err.value) is MappingError
    assert err.value.code == code and (err.value.segment, err.value.field) == where


def test_bad_message_time_is_a_data_type_error():
    bad = parse_message(MSH.format(type="ADT^A01", n=1).replace("20240320090000+0800", "2024-03-20") + "\r" + PID)
    with pytest.raises(MappingError) as err:
        convert(bad)
    assert (err.value.code, err.value.segment, err.value.field) == (102, "MSH", 7)


def test_unsupported_message_types():
    for type_ in ("ADT^A29^ADT_A21", "BAR^P01^BAR_P01", "QBP^Q11^QBP_Q11"):
        with pytest.raises(UnsupportedMessage) as err:
            convert(msg(PID, type_=type_))
        assert err.value.code == 200 and (err.value.segment, err.value.field) == ("MSH", 9)
        assert type_.rsplit("^", 1)[0] in err.value.text


PROFILES = """
[HOSPZ]
timezone = "+07:00"
source = "LegacyHIS"
[HOSPZ.assigning_authorities]
"ZHOSP" = "HOSPZ"
"OTHER" = "HOSPA"
[HOSPZ.fields]
"PID-3" = "PID-4"
[HOSPZ.code_tables."PID-8"]
"1" = "M"
"2" = "F"
[HOSPZ.coding_systems]
"L" = "urn:yilian:hospz:lis"
[[HOSPZ.extra_identifiers]]
field = "PID-2"
kind = "health-card"
type = "HC"
"""


def test_facility_profile_from_toml_connects_a_quirky_his(tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES, encoding="utf-8")
    profile = load_profiles(path)["HOSPZ"]
    m = parse_message("MSH|^~\\&|OLD|ZHOSP|HUB|ALLIANCE|20240320090000||ORU^R01|Z1|P|2.4\r"
                      "PID|1|HC778||Z9^^^ZHOSP^MR~Q1^^^OTHER^MR|王^五||19800101|1\r"
                      "OBR|1|O9^OLD|F9^LIS|GLU^Glucose^L\r"
                      "OBX|1|NM|GLU^葡萄糖^L||5.5|mmol/L|3.9-6.1||||F\r")
    term = Terminology.load_default()
    csv = tmp_path / "lab.csv"
    csv.write_text("local_system,local_code,local_display,loinc,catalogue_code,unit_ucum\n"
                   "urn:yilian:hospz:lis,GLU,葡萄糖,14749-6,CAT-GLU,mmol/L\n", encoding="utf-8")
    term.add_lab_codes(csv, "HOSPZ")
    r = convert(m, "HOSPZ", profile, term)
    p = only(r, "Patient")
    ids = {(i["system"], i["value"]) for i in p["identifier"]}
    assert (identity.org_system("HOSPZ", "mrn"), "Z9") in ids          # PID-3 read from PID-4
    assert (identity.org_system("HOSPA", "mrn"), "Q1") in ids          # authority OTHER is HOSPA
    assert (identity.org_system("HOSPZ", "health-card"), "HC778") in ids
    assert p["id"] == identity.patient_id(identity.org_system("HOSPZ", "mrn"), "Z9")
    assert p["gender"] == "male"                                         # local table 1 -> M
    assert p["meta"]["source"] == "urn:yilian:org:HOSPZ#LegacyHIS"
    assert r.event_time == "2024-03-20T09:00:00+07:00"
    code = only(r, "Observation")["code"]["coding"]
    assert code[0] == {"system": "urn:yilian:hospz:lis", "code": "GLU", "display": "葡萄糖"}   # kept
    assert {"system": "http://loinc.org", "code": "14749-6"}.items() <= code[1].items()       # added
    for res in r.resources():
        validate(res)


@pytest.mark.parametrize("text, problem", [
    ('[H]\ntimezone = "8"\n', "timezone"),
    ('[H]\nfields = { "PID-3" = "OBX-2" }\n', "field move"),
    ('[H]\ncolour = "blue"\n', "unknown keys"),
    ('[H\n', "Expected"),
])
def test_bad_profiles_are_refused_with_the_reason(tmp_path, text, problem):
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MappingError) as err:
        load_profiles(path)
    assert err.value.code == 207 and problem in err.value.text and str(path) in err.value.text


def test_default_profile_compiles_once_and_profiles_do_not_leak(tmp_path):
    moved = FacilityProfile(organization="HOSPA", fields={"PID-3": "PID-4"})
    m = msg("PID|1||MRN5^^^HOSPA^MR|ALT9^^^HOSPA^MR|李^小龙")
    assert {i["value"] for i in only(convert(m, profile=moved), "Patient")["identifier"]} == {"ALT9"}
    assert {i["value"] for i in only(convert(m), "Patient")["identifier"]} == {"MRN5", "ALT9"}


def test_only_registration_replaces_a_patient_and_the_member_organization_is_a_stub():
    """ADT owns demographics; an ORU's Patient and every member Organization are create-only
    (``ifNoneMatch: *``), so the hub writes them only where it holds none."""
    from adapters.hl7v2 import parse_message
    from mappings import convert

    pid = "PID|1||M-1^^^HOSPA^MR||周^七||19810203|F"
    adt = convert(parse_message(("MSH|^~\\&|HIS|HOSPA|HUB|ALLIANCE|20261201080000||ADT^A08^ADT_A01|C1|P|2.5\r"
                                 f"EVN|A08|20261201080000\r{pid}\rPV1|1|O\r").encode()), "HOSPA")
    oru = convert(parse_message(("MSH|^~\\&|LIS|HOSPA|HUB|ALLIANCE|20261201090000||ORU^R01^ORU_R01|C2|P|2.5.1\r"
                                 f"{pid}\rOBR|1|P1|F1^LIS|24331-1^Lipid^LN|||20261201090000||||||||||||||||CH|F\r"
                                 "OBX|1|NM|2093-3^Chol^LN||5.2|mmol/L|||||F\r").encode()), "HOSPA")

    def requests(result):
        return {e["request"]["url"].split("/")[0]: e["request"] for e in result.bundle["entry"]}

    assert "ifNoneMatch" not in requests(adt)["Patient"]
    assert requests(oru)["Patient"]["ifNoneMatch"] == "*"
    assert requests(oru)["Observation"] == {"method": "PUT", "url": requests(oru)["Observation"]["url"]}
    for result in (adt, oru):
        assert requests(result)["Organization"]["ifNoneMatch"] == "*"
        org = result.resources("Organization")[0]
        assert org["identifier"][0]["value"] == "HOSPA"
