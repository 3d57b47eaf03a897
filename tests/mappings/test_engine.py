"""The spec engine: rule paths, repeats, required fields, field moves, compile cache; the data
files load and name only mappers and builders that exist."""

from __future__ import annotations

import copy

import pytest

from adapters.hl7v2 import parse_message
from mappings import FacilityProfile, MappingError, supported_message_types
from mappings.context import Context
from mappings.engine import SegmentSpec, _setter, compiled_specs, message_specs
from mappings.walk import BUILDERS
from terminology import Terminology


def test_setter_paths():
    res: dict = {}
    _setter("a", False)(res, 1)
    _setter("b", True)(res, 1)
    _setter("b", True)(res, 2)
    _setter("c.d", False)(res, 3)
    _setter("e[].f", True)(res, 4)
    _setter("e[].f", True)(res, 5)
    assert res == {"a": 1, "b": [1, 2], "c": {"d": 3}, "e": [{"f": 4}, {"f": 5}]}


@pytest.fixture(scope="module")
def term():
    return Terminology.load_default()


def _ctx(text: str, term, profile=FacilityProfile()) -> Context:
    m = parse_message("MSH|^~\\&|A|B|C|D|20240301120000||ADT^A01|1|P|2.5\r" + text + "\r")
    return Context(m, "HOSPA", profile, term)


SPEC = {"segment": "ZZZ", "fields": [
    {"field": 1, "type": "ST", "to": "one"},
    {"field": 2, "type": "ST", "to": "many", "repeat": True},
    {"field": 3, "type": "DTM", "to": "when.start", "as": "date", "required": True},
    {"field": 4, "type": "ST", "to": "part", "comp": 2},
]}


def test_rules_repeat_components_nulls_and_required(term):
    ctx = _ctx("ZZZ|x~y|a~b|20240301|p^q", term)
    seg = ctx.msg.segment("ZZZ")
    assert SegmentSpec(SPEC, FacilityProfile()).apply(ctx, seg, {}) == {
        "one": "x", "many": ["a", "b"], "when": {"start": "2024-03-01"}, "part": "q"}
    ctx = _ctx('ZZZ|""|a||p', term)
    with pytest.raises(MappingError) as err:
        SegmentSpec(SPEC, FacilityProfile()).apply(ctx, ctx.msg.segment("ZZZ"), {})
    assert (err.value.code, err.value.segment, err.value.field) == (101, "ZZZ", 3)
    ctx = _ctx("ZZZ|||2024-03-01", term)
    with pytest.raises(MappingError) as err:
        SegmentSpec(SPEC, FacilityProfile()).apply(ctx, ctx.msg.segment("ZZZ"), {})
    assert (err.value.code, err.value.segment, err.value.field) == (102, "ZZZ", 3)


def test_field_move_reads_another_field(term):
    moved = FacilityProfile(fields={"ZZZ-1": "ZZZ-4"})
    ctx = _ctx("ZZZ|x||20240301|moved", term, moved)
    assert SegmentSpec(SPEC, moved).apply(ctx, ctx.msg.segment("ZZZ"), {})["one"] == "moved"


def test_specs_compile_once_per_profile_and_name_known_builders():
    a = FacilityProfile(organization="A")
    assert compiled_specs(a) is compiled_specs(FacilityProfile(organization="A"))
    assert compiled_specs(a) is not compiled_specs(FacilityProfile(organization="A", fields={"PID-3": "PID-4"}))
    for spec in message_specs().values():
        assert set(spec["segments"].values()) <= set(BUILDERS), spec["name"]
    types = supported_message_types()
    for wanted in ("ADT^A01", "ADT^A13", "ADT^A28", "ADT^A31", "ADT^A40", "ADT^A47", "ORU^R01", "ORM^O01",
                   "OML^O21", "OMI^O23", "MDM^T01", "MDM^T02", "SIU^S12", "SIU^S26", "VXU^V04"):
        assert wanted in types
    assert "ADT^A29" not in types and "ACK^" not in types


def test_memos_by_raw_text_are_kept_apart_by_the_encoding_characters():
    """Codes, units and ranges are memoized by the field's raw text; the same text under another
    sender's MSH-2 reads otherwise ('#' as the component separator) and must not take the first
    reading."""
    from mappings import convert

    obx = "OBX|1|NM|718-7#Hb#LN||9.8|g/dL#gram#UCUM|13.5-17.5|L|||F\r"
    plain = parse_message("MSH|^~\\&|LIS|HOSPA|HUB|X|20240301120000||ORU^R01|1|P|2.5\rPID|1||MRN1^^^HOSPA^MR\r"
                          "OBR|1|ORD1|FIL1|58410-2^CBC^LN\r" + obx)
    hashed = parse_message("MSH|#~\\&|LIS|HOSPA|HUB|X|20240301120000||ORU#R01|2|P|2.5\rPID|1||MRN1###HOSPA#MR\r"
                           "OBR|1|ORD1|FIL1|58410-2#CBC#LN\r" + obx)

    def observation(message):
        entries = convert(message, "HOSPA").bundle["entry"]
        return next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Observation")

    first = observation(plain)
    assert first["code"]["coding"][0]["code"] == "718-7#Hb#LN"
    second = observation(hashed)
    assert second["code"]["coding"][0] == {"system": "http://loinc.org", "code": "718-7", "display": "Hb"}
    assert second["valueQuantity"] == {"value": 9.8, "unit": "g/dL", "system": "http://unitsofmeasure.org",
                                       "code": "g/dL"}


_ORU = ("MSH|^~\\&|LIS|HOSPA|HUB|X|20240301120000||ORU^R01|{n}|P|2.5\rPID|1||MRN{n}^^^HOSPA^MR\r"
        "OBR|1|ORD{n}|FIL{n}|58410-2^CBC^LN|||20240301100000\r"
        "OBX|1|NM|718-7^Hb^LN||{value}|g/dL^gram^UCUM|13.5-17.5|L~H|||{status}|||{when}||||||bodysite^arm^L\r")


def _observation(term, n: int, value: str = "9.8", status: str = "F", when: str = "20240301110000",
                 profile=None):
    from mappings import convert

    message = parse_message(_ORU.format(n=n, value=value, status=status, when=when))
    result = convert(message, "HOSPA", profile, term)
    return next(e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Observation"), \
        result.warnings


def _fresh_term():
    return Terminology.load_default()


def test_results_of_one_test_share_memoized_parts_but_never_their_objects():
    """The parts an OBX shares with the other results of its test (code, body site, range, flags,
    status) are memoized by those fields' text: a later result gets the same values in new
    objects, so changing one message's resources (a note, the store's meta) never reaches the
    next message's; what varies (value, time, ids) is its own."""
    term = _fresh_term()
    first, _ = _observation(term, 1)
    pristine = copy.deepcopy(first)
    for element in ("code", "bodySite", "referenceRange", "interpretation", "valueQuantity"):
        value = first[element]
        (value[0] if isinstance(value, list) else value).clear()
    first["code"] = None
    second, _ = _observation(term, 2, value="10.5", when="20240302110000")
    cold, _ = _observation(_fresh_term(), 2, value="10.5", when="20240302110000")
    assert second == cold                                   # memo hit == no memo
    for element in ("code", "bodySite", "referenceRange", "interpretation"):
        assert second[element] == pristine[element]
    assert second["valueQuantity"]["value"] == 10.5 and second["effectiveDateTime"].startswith("2024-03-02")
    assert second["id"] != pristine["id"]
    assert list(second) == list(cold)                       # same elements in the same order


def test_a_memoized_status_warns_for_every_result():
    term = _fresh_term()
    for n in (1, 2):
        obs, warnings = _observation(term, n, status="")
        assert obs["status"] == "unknown"
        assert "OBX-11 empty: Observation.status unknown" in warnings


def test_result_memo_follows_the_profile_field_moves():
    """A profile that moves a field the memo is keyed on (OBX-20 read from OBX-21 here) keys the
    memo on the field it moves to: two results differing only there get their own body site."""
    term = _fresh_term()
    moved = FacilityProfile(fields={"OBX-20": "OBX-21"})

    def site(n: int, text: str) -> dict:
        from mappings import convert

        raw = _ORU.format(n=n, value="9.8", status="F", when="20240301110000").rstrip("\r") + f"|{text}^site^L\r"
        result = convert(parse_message(raw), "HOSPA", moved, term)
        obs = next(e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Observation")
        return obs["bodySite"]["coding"][0]["code"]

    assert site(1, "left") == "left" and site(2, "right") == "right"
