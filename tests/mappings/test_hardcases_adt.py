"""The ADT hard cases (shared/corpus/hl7v2/synthetic-hardcases) come out exactly right."""

from __future__ import annotations

import pytest

from mappings import FacilityProfile, identity
from mappings.context import SOURCE_EVENT_TIME

from .conftest import hardcase, needs_corpus, only, validate

pytestmark = needs_corpus
MRN_A = identity.org_system("HOSPA", "mrn")


def _ids(patient: dict) -> dict[str, str]:
    return {i["system"]: i["value"] for i in patient["identifier"]}


def test_hc01_gb18030_chinese_name_address_and_national_id():
    r = hardcase("HC01")
    p = only(r, "Patient")
    assert p["name"][0] == {"text": "张三丰", "use": "official", "family": "张", "given": ["三丰"]}
    assert p["name"][1] == {"use": "usual", "family": "Zhang", "given": ["Sanfeng"]}   # pinyin repetition
    assert _ids(p)[identity.RESIDENT_ID] == "330102198001011234"
    # the MRN's authority 市一院&1.2.156.112604.1.2.1 is the sending facility (same OID as MSH-4)
    assert _ids(p)[MRN_A] == "MRN0098765"
    assert p["id"] == identity.patient_id(MRN_A, "MRN0098765")
    assert p["gender"] == "male" and p["birthDate"] == "1980-01-01"
    assert p["address"] == [{"use": "home", "line": ["浙江省杭州市上城区解放路1号"], "city": "杭州市",
                             "state": "浙江省", "postalCode": "310002", "country": "CHN"}]
    assert p["telecom"] == [{"system": "phone", "value": "+86 13800138000", "use": "mobile"}]
    assert p["meta"]["source"] == "urn:yilian:org:HOSPA#HIS"
    # the v2 coding as sent, and the standard one from the terminology's ConceptMap beside it
    assert [(c["system"].rsplit("/", 1)[1], c["code"]) for c in p["maritalStatus"]["coding"]] == [
        ("v2-0002", "M"), ("v3-MaritalStatus", "M")]
    assert p["extension"][0] == {"url": SOURCE_EVENT_TIME, "valueInstant": "2024-03-05T08:30:00+08:00"}
    assert r.event_time == "2024-03-05T08:30:00+08:00"          # EVN-2 wins over MSH-7
    enc = only(r, "Encounter")
    assert enc["id"] == identity.resource_id("Encounter", identity.org_system("HOSPA", "visit"), "V20240305001")
    assert enc["class"]["code"] == "IMP" and enc["status"] == "in-progress"
    assert enc["period"] == {"start": "2024-03-05T08:20:00+08:00"}
    assert enc["subject"] == {"reference": f"Patient/{p['id']}"}
    doctor = only(r, "Practitioner")
    assert doctor["name"] == [{"text": "王医生", "family": "王", "given": ["医生"]}]
    assert enc["participant"][0]["individual"]["reference"] == f"Practitioner/{doctor['id']}"
    cond = only(r, "Condition")
    assert cond["code"]["coding"][0] == {"system": "urn:oid:2.16.156.10011.2.3.3.11", "code": "I21.9",
                                         "display": "急性心肌梗死"}
    assert cond["onsetDateTime"] == "2024-03-05"
    for res in r.resources():
        validate(res)
    assert r.bundle["type"] == "transaction"
    for e in r.bundle["entry"]:
        key = f"{e['resource']['resourceType']}/{e['resource']['id']}"
        # registration owns the patient; the member Organization is only a stub where the hub has none
        create_only = {"ifNoneMatch": "*"} if e["resource"]["resourceType"] == "Organization" else {}
        assert e["request"] == {"method": "PUT", "url": key, **create_only}
        assert e["fullUrl"].endswith("/" + e["request"]["url"])


def test_hc02_utf8_lf_update():
    r = hardcase("HC02")
    p = only(r, "Patient")
    assert p["name"] == [{"text": "张三丰", "family": "张", "given": ["三丰"]}]
    # the same MRN as HC01 lands on the same Patient
    assert p["id"] == identity.patient_id(MRN_A, "MRN0098765")
    assert r.message_type == "ADT^A08"


def test_hc03_misdeclared_charset_name_split_without_given():
    r = hardcase("HC03")
    p = only(r, "Patient")
    assert p["name"] == [{"text": "李四", "family": "李", "given": ["四"]}]   # UTF-8 bytes despite MSH-18 ASCII
    assert p["gender"] == "female" and p["birthDate"] == "1990-02-15"
    # MSH-7 without offset is local time of the facility (+08:00 by default)
    assert r.event_time == "2024-03-07T09:00:00+08:00"


def test_hc03_timezone_from_profile():
    r = hardcase("HC03", profile=FacilityProfile(organization="HOSPA", timezone="+09:00"))
    assert r.event_time == "2024-03-07T09:00:00+09:00"


def test_hc05_custom_delimiters_and_escape_character():
    r = hardcase("HC05")
    p = only(r, "Patient")
    assert p["name"] == [{"family": "DOE", "given": ["JOHN ^ JR"]}]    # #S# is the escaped "^"
    assert _ids(p) == {MRN_A: "A1001", "http://hl7.org/fhir/sid/us-ssn": "99-88-77"}
    assert p["birthDate"] == "1950-12-12"
    assert only(r, "Encounter")["location"] == [{"location": {"display": "W1 101 A"}, "status": "active"}]


def test_hc06_a40_two_pairs_three_merged_ids():
    r = hardcase("HC06")
    pid = {v: k for k, v in ((p["id"], _ids(p).get(MRN_A)) for p in r.resources("Patient"))}
    assert set(pid) == {"SURV001", "DUP009", "SURV002", "DUP010", "DUP011"}
    assert r.merges == [(pid["SURV001"], pid["DUP009"]), (pid["SURV002"], pid["DUP010"]),
                        (pid["SURV002"], pid["DUP011"])]
    by_id = {p["id"]: p for p in r.resources("Patient")}
    assert by_id[pid["SURV002"]]["link"] == [
        {"other": {"reference": f"Patient/{pid['DUP010']}"}, "type": "replaces"},
        {"other": {"reference": f"Patient/{pid['DUP011']}"}, "type": "replaces"}]
    for merged, survivor in (("DUP009", "SURV001"), ("DUP010", "SURV002"), ("DUP011", "SURV002")):
        m = by_id[pid[merged]]
        assert m["active"] is False
        assert m["link"] == [{"other": {"reference": f"Patient/{pid[survivor]}"}, "type": "replaced-by"}]
    # REGION's PI is another authority (its OID is not the sender's): kept under its OID
    assert _ids(by_id[pid["SURV001"]])["urn:oid:2.16.840.1.113883.19.99"] == "4321"
    for res in r.resources():
        validate(res)


def test_hc11_whitespace_missing_fields_and_two_patients():
    r = hardcase("HC11")
    patients = r.resources("Patient")
    assert [_ids(p)[MRN_A] for p in patients] == ["MRN11", "EXTRA"]     # "  MRN11  " trimmed
    assert patients[0]["name"] == [{"family": "DOE", "given": ["JANE"]}]
    enc = only(r, "Encounter")
    assert enc["status"] == "finished" and enc["period"] == {"end": "2024-03-14"}
    assert r.event_time == "2024-03-14T00:00:00+08:00"                  # MSH-7 date only
    for res in r.resources():
        validate(res)


HOSPB = FacilityProfile(organization="HOSPB", assigning_authorities={"HOSPA": "HOSPA", "HOSPB": "HOSPB"})


def test_hc12_authorities_and_nulls():
    r = hardcase("HC12", "HOSPB", HOSPB)
    p = only(r, "Patient")
    assert _ids(p) == {identity.org_system("HOSPB", "mrn"): "12345", MRN_A: "12345",
                       "http://hl7.org/fhir/sid/us-ssn": "G1234567"}
    assert p["id"] == identity.patient_id(identity.org_system("HOSPB", "mrn"), "12345")   # the sender's own MRN
    # "" means "delete the value": a full-resource PUT without the element deletes it
    assert p["name"] == [{"family": "WANG", "given": ["FANG"]}]
    assert "address" not in p and "telecom" not in p
    assert "participant" not in only(r, "Encounter")
    assert r.warnings == ["PV1-19 (visit number) empty: encounter id derived from the patient and PV1-44"]


def test_hc12_without_profile_authorities_fall_back_to_the_sender_with_a_warning():
    r = hardcase("HC12", "HOSPB")
    p = only(r, "Patient")
    assert _ids(p)[identity.org_system("HOSPB", "mrn")] == "12345"
    assert any("assigning authorities" in w for w in r.warnings)


@pytest.mark.parametrize("name", ["HC01", "HC06", "HC12"])
def test_same_message_twice_same_bundle(name):
    assert hardcase(name, "HOSPB").bundle == hardcase(name, "HOSPB").bundle
