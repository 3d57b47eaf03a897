"""The spec engine: rule paths, repeats, required fields, field moves, compile cache; the data
files load and name only mappers and builders that exist."""

from __future__ import annotations

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
