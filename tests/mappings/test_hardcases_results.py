"""The ORU, order and document hard cases come out exactly right (every OBX value shape)."""

from __future__ import annotations

import base64

from mappings import identity

from .conftest import hardcase, needs_corpus, only, validate

pytestmark = needs_corpus
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PDF = "JVBERi0xLjQKMSAwIG9iajw8Pj5lbmRvYmoKdHJhaWxlcjw8Pj4KJSVFT0YK"


def _q(value, unit):
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _by_code(result) -> dict[str, dict]:
    return {o["code"]["coding"][0]["code"]: o for o in result.resources("Observation")}


def test_hc04_escapes_in_st_ft_tx_and_nte():
    r = hardcase("HC04")
    obs = _by_code(r)
    assert obs["2093-3"]["valueString"] == "5.2 mmol/L | fasting ~ repeat"
    assert obs["X-COMMENT"]["valueString"] == "Line one\nLine two\nIMPORTANT: hemolysed\n\n\nend"
    assert obs["X-HEX"]["valueString"] == "CRLF:\r\n Chinese(UTF-8 hex):中文 degree:°C"
    assert obs["X-HEX"]["note"] == [{"text": "Escape char itself: \\ and literal caret ^ and amp &"}]
    p = only(r, "Patient")
    assert p["name"] == [{"family": "O\\Brien", "given": ["Mary ^ Jane"]}]
    assert p["identifier"][0]["value"] == "P100&200"
    # a local code without a system name goes to the sender's local lab code system
    assert obs["X-COMMENT"]["code"]["coding"][0]["system"] == \
        "https://yilian.example.org/fhir/CodeSystem/local/HOSPA/lab"
    for res in r.resources():
        validate(res)


def test_hc07_every_obx_value_type():
    r = hardcase("HC07")
    obs = _by_code(r)
    hb = obs["718-7"]
    assert hb["valueQuantity"] == _q(9.8, "g/dL")
    assert hb["referenceRange"] == [{"low": _q(13.5, "g/dL"), "high": _q(17.5, "g/dL"), "text": "13.5-17.5"}]
    assert [i["coding"][0]["code"] for i in hb["interpretation"]] == ["L", "A"]      # OBX-8 repeats
    assert all(i["coding"][0]["system"] == V3 for i in hb["interpretation"])
    assert hb["effectiveDateTime"] == "2024-03-11T11:00:00+08:00"                   # OBX-14 wins
    assert hb["status"] == "final"
    assert obs["6690-2"]["status"] == "corrected"
    assert obs["6690-2"]["effectiveDateTime"] == "2024-03-11T10:00:00+08:00"        # OBR-7
    assert obs["777-3"]["valueQuantity"] == {"value": 20, "comparator": "<", "unit": "10*9/L", "system": UCUM,
                                             "code": "10*9/L"}
    assert obs["777-3"]["interpretation"][0]["coding"][0]["code"] == "LL"
    assert obs["5778-6"]["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 128}}
    assert obs["5778-6"]["referenceRange"] == [{"text": "<1:32"}]
    assert obs["X-RANGE"]["valueRange"] == {"low": _q(10, "mg/L"), "high": _q(20, "mg/L")}
    assert obs["X-RANGE"]["referenceRange"] == [{"low": _q(5, "mg/L"), "text": ">5"}]
    culture = obs["600-7"]
    assert culture["valueCodeableConcept"]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "3092008", "display": "Staphylococcus aureus"},
        {"system": "https://yilian.example.org/fhir/CodeSystem/local/HOSPA/result", "code": "SA",
         "display": "S. aureus"}]
    assert culture["status"] == "preliminary"
    assert obs["882-1"]["valueCodeableConcept"]["coding"][0]["code"] == "A+"
    assert obs["X-TXT"]["valueString"] == "see comment"
    assert obs["X-MULTI"]["valueString"] == "line a\nline b\nline c"
    assert obs["X-DATE"]["valueDateTime"] == "2024-03-01"
    assert obs["X-TS"]["valueDateTime"] == "2024-03-01T12:30:00+08:00"
    glucose = obs["2345-7"]
    assert glucose["status"] == "cancelled" and "valueQuantity" not in glucose
    assert glucose["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    assert obs["2160-0"]["status"] == "entered-in-error"
    assert obs["2160-0"]["note"] == [{"text": "Specimen slightly hemolysed"}]
    # ED: R4 Observation has no valueAttachment -> the report's presentedForm; no Observation
    assert "11502-2" not in obs
    report = only(r, "DiagnosticReport")
    assert report["presentedForm"] == [{"contentType": "application/pdf", "data": PDF, "title": "Laboratory report"}]
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in r.resources("Observation")]
    assert len(report["result"]) == 13
    assert report["status"] == "final" and report["issued"] == "2024-03-11T13:59:00+08:00"
    filler = identity.org_system("HOSPA", "filler")
    assert report["identifier"][0]["system"] == filler and report["identifier"][0]["value"] == "FIL77"
    assert hb["id"] == identity.resource_id("Observation", filler, f"FIL77|{LOINC}|718-7|")
    sr = only(r, "ServiceRequest")
    assert {(i["system"], i["value"]) for i in sr["identifier"]} == {
        (identity.org_system("HOSPA", "placer"), "ORD77"), (filler, "FIL77")}
    assert sr["id"] == identity.resource_id("ServiceRequest", identity.org_system("HOSPA", "placer"), "ORD77")
    assert sr["status"] == "completed"                                                # ORC-5 CM
    assert hb["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    for res in r.resources():
        validate(res)


def _identifiers(sr):
    return {(i.get("type", {}).get("coding", [{}])[0].get("code"), i["system"], i["value"]) for i in sr["identifier"]}


UID = "urn:oid:1.2.840.113619.2.55.3.604688119.969.1268071029.320"


def test_hc08_imaging_order_accession_and_study_uid_from_zds():
    r = hardcase("HC08")
    sr = only(r, "ServiceRequest")
    assert _identifiers(sr) >= {("ACSN", identity.org_system("HOSPA", "accession"), "ACC88"),
                                (None, identity.DICOM_UID, UID)}
    assert sr["occurrenceDateTime"] == "2024-03-12T09:00:00+08:00"                    # ORC-7 TQ start
    assert sr["code"]["coding"][0] == {"system": "http://www.ama-assn.org/go/cpt", "code": "71020",
                                       "display": "XR CHEST 2 VIEWS"}
    assert sr["requester"]["reference"].startswith("Practitioner/")
    assert sr["status"] == "active"                                                   # ORC-5 IP
    for res in r.resources():
        validate(res)


def test_hc09_omi_with_ipc():
    r = hardcase("HC09")
    sr = only(r, "ServiceRequest")
    assert _identifiers(sr) >= {("ACSN", identity.org_system("HOSPA", "accession"), "ACC88"),
                                (None, identity.DICOM_UID, UID)}
    assert sr["occurrenceDateTime"] == "2024-03-12T09:00:00+08:00"                    # TQ1-7
    # the same order from ORM (HC08) and OMI (HC09) is one ServiceRequest
    assert sr["id"] == only(hardcase("HC08"), "ServiceRequest")["id"]
    for res in r.resources():
        validate(res)


def test_hc10_mdm_two_ed_repetitions_one_attachment():
    r = hardcase("HC10")
    doc = only(r, "DocumentReference")
    assert doc["content"] == [{"attachment": {"contentType": "application/pdf", "data": PDF,
                                              "title": "Discharge summary"}}]
    assert base64.b64decode(doc["content"][0]["attachment"]["data"]).startswith(b"%PDF-1.4")
    assert doc["type"]["coding"][0]["code"] == "DS" and doc["status"] == "current"
    assert doc["date"] == "2024-03-13T15:00:00+08:00"
    # HC10 writes the document number one field late (TXA-13, the parent document): TXA-12 is
    # empty, so the id falls back to the message and a warning says so
    assert "TXA-12 (unique document number) empty: document id derived from MSH-10" in r.warnings
    for res in r.resources():
        validate(res)
