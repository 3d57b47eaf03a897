"""Mutual recognition end to end over real HTTP, on SQLite and PostgreSQL: reference data through
the API, results written by one hospital, $recognizable asked by another, the HR mark on stored
results, the physician's decision as a Task, statistics."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest

from hub.recognition.results import EXPIRY_EXTENSION, MARK_SYSTEM
from mappings.identity import organization_id
from tests.conftest import unique
from tests.recognition.conftest import sample_bytes

TODAY = date.today()
ADMIN = "yilian/recognition-admin"
DOCTOR = "user/Patient.rs user/Observation.rs user/DiagnosticReport.rs user/ImagingStudy.rs user/ServiceRequest.cruds user/Task.cruds"


def qualifications(**overrides: tuple[str, str, str]) -> bytes:
    """The sample qualifications with validity around today; overrides: "H001/CAT-GLU" → (passed, from, to)."""
    lines = sample_bytes("qualifications").decode().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        cols = line.split(",")
        key = f"{cols[0]}/{cols[1]}"
        passed, start, end = cols[5], (TODAY - timedelta(days=365)).isoformat(), (TODAY + timedelta(days=365)).isoformat()
        if key in overrides:
            passed, start, end = overrides[key]
        out.append(",".join(cols[:5] + [passed, start, end]))
    return ("\n".join(out) + "\n").encode()


def at(days_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days_ago)).isoformat(timespec="seconds")


def org_ref(code: str) -> dict:
    return {"reference": f"Organization/{organization_id(code)}"}


@pytest.fixture(scope="module")
def admin(hub):
    with httpx.Client(base_url=hub.root, timeout=60, headers={"Authorization": f"Bearer {hub.token(ADMIN)}"}) as c:
        yield c


@pytest.fixture(scope="module")
def published(admin):
    since = (TODAY - timedelta(days=400)).isoformat()
    for kind in ("scopes", "catalogue", "codemaps"):
        r = admin.post(f"/recognition/reference/{kind}", params={"effective_from": since, "retag": "wait"},
                       content=sample_bytes(kind), headers={"Content-Type": "text/csv"})
        assert r.status_code == 201, r.text
    r = admin.post("/recognition/reference/qualifications", params={"effective_from": since, "retag": "wait"},
                   content=qualifications(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def doctor_b(hub, published):
    """A physician at hospital H002."""
    with hub.client(DOCTOR, subject="dr-li", organization="H002", name="李医生") as c:
        yield c


@pytest.fixture(scope="module")
def lab_a(hub, published):
    """Hospital H001's feed (FHIR writes)."""
    with hub.client("system/*.cruds", subject="h001-feed", organization="H001") as c:
        for code in ("H001", "H002", "H003", "H004"):
            assert c.put(f"/Organization/{organization_id(code)}", json={
                "resourceType": "Organization", "id": organization_id(code), "name": code}).status_code in (200, 201)
        yield c


def new_patient(c) -> str:
    r = c.post("/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": "https://yilian.example.org/fhir/sid/H001/mrn", "value": unique()}], "gender": "female"})
    assert r.status_code == 201
    return r.json()["id"]


def observation(pid: str, system: str, code: str, value: float, unit: str, days_ago: float, performer="H001",
                status="final") -> dict:
    return {"resourceType": "Observation", "status": status, "category": [{"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": system, "code": code}]}, "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": at(days_ago), "performer": [org_ref(performer)],
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def ask(c, pid: str, system: str, code: str, **params) -> dict:
    order = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order",
             "code": {"coding": [{"system": system, "code": code}]}, "subject": {"reference": f"Patient/{pid}"}}
    r = c.post("/ServiceRequest/$recognizable", params=params, json=order)
    assert r.status_code == 200, r.text
    return r.json()


def parts(p: dict) -> dict[str, list]:
    out: dict[str, list] = {}
    for x in p.get("part", []):
        out.setdefault(x["name"], []).append(x)
    return out


def candidates(answer: dict) -> list[dict]:
    return [parts(p) for p in answer["parameter"] if p["name"] == "candidate"]


def summary(c: dict) -> tuple:
    reasons = [parts(r)["code"][0]["valueCode"] for r in c.get("reason", [])]
    return c["decision"][0]["valueCode"], reasons


def by_result(answer: dict) -> dict[str, dict]:
    return {c["result"][0]["valueReference"]["reference"]: c for c in candidates(answer)}


# ------------------------------------------------------------------------------------ tests

def test_lab_result_from_a_is_recognizable_at_b_with_its_mark(lab_a, doctor_b):
    pid = new_patient(lab_a)
    r = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "GLU", 5.6, "mmol/L", 3))
    assert r.status_code == 201
    obs = r.json()
    # the stored result carries the HR marks of its scopes with the expiry
    tags = {t["code"]: t for t in obs["meta"]["tag"] if t["system"] == MARK_SYSTEM}
    assert set(tags) == {"WH", "HB"} and tags["WH"]["display"] == "武汉HR" and tags["HB"]["display"] == "鄂HR"
    expiry = datetime.fromisoformat(tags["WH"]["extension"][0]["valueDateTime"])
    assert tags["WH"]["extension"][0]["url"] == EXPIRY_EXTENSION
    assert expiry - datetime.fromisoformat(obs["effectiveDateTime"]) == timedelta(days=30)
    # the mark is searchable like any tag
    found = lab_a.get("/Observation", params={"_tag": f"{MARK_SYSTEM}|WH", "subject": f"Patient/{pid}"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [obs["id"]]

    # hospital B orders with its own local code for glucose
    answer = ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01")
    item = parts(answer["parameter"][0])
    assert item["code"][0]["valueCoding"]["code"] == "CAT-GLU"
    [c] = candidates(answer)
    assert summary(c) == ("RECOGNIZABLE", [])
    assert c["scope"][0]["valueCoding"]["display"] == "武汉HR"
    assert c["result"][0]["valueReference"]["reference"] == f"Observation/{obs['id']}"
    assert c["resource"][0]["resource"]["valueQuantity"]["value"] == 5.6
    assert c["performer"][0]["valueReference"]["identifier"]["value"] == "H001"
    assert datetime.fromisoformat(c["expires"][0]["valueDateTime"]) == expiry
    evidence = parts(c["evidence"][0])
    assert "H001 CAT-GLU HB" in evidence["qualification"][0]["valueString"]
    assert {"catalogueVersion", "qualificationsVersion", "scopesVersion", "codemapsVersion"} <= set(evidence)


def test_after_the_time_limit_the_answer_changes(lab_a, doctor_b, hub):
    pid = new_patient(lab_a)
    fresh = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "GLU", 6.1, "mmol/L", 20)).json()
    old = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "GLU", 5.2, "mmol/L", 31)).json()
    answer = by_result(ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01"))
    assert summary(answer[f"Observation/{fresh['id']}"]) == ("RECOGNIZABLE", [])
    assert summary(answer[f"Observation/{old['id']}"]) == ("NOT_RECOGNIZABLE", ["TIME_EXPIRED"])
    # the best candidate comes first
    assert candidates(ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01"))[0]["result"][0]["valueReference"][
        "reference"] == f"Observation/{fresh['id']}"
    # beyond the time limit only the most recent _count results are reported; total counts all
    for days in (100, 200, 300):
        lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "GLU", 5.0, "mmol/L", days))
    few = ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01", _count=1)
    assert parts(few["parameter"][0])["total"][0]["valueInteger"] == 5
    assert set(by_result(few)) == {f"Observation/{fresh['id']}"}
    two = ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01", _count=2)
    assert set(by_result(two)) == {f"Observation/{fresh['id']}", f"Observation/{old['id']}"}
    assert len(candidates(ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01"))) == 5
    # a doctor in Yichang shares only the province with H001: its 14-day limit applies
    with hub.client(DOCTOR, subject="dr-yc", organization="H004") as yc:
        answer = by_result(ask(yc, pid, "urn:yilian:h004:lis", "GLU"))
    assert summary(answer[f"Observation/{fresh['id']}"]) == ("NOT_RECOGNIZABLE", ["TIME_EXPIRED"])
    assert answer[f"Observation/{fresh['id']}"]["scope"][0]["valueCoding"]["display"] == "鄂HR"


def test_lapsed_eqa_changes_answer_and_mark_then_restores(lab_a, doctor_b, admin):
    pid = new_patient(lab_a)
    obs = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "GLU", 7.0, "mmol/L", 3)).json()
    lapsed = (TODAY - timedelta(days=30)).isoformat()
    r = admin.post("/recognition/reference/qualifications", params={"retag": "wait"}, content=qualifications(**{
        "H001/CAT-GLU": ("yes", (TODAY - timedelta(days=400)).isoformat(), lapsed)}),
        headers={"Content-Type": "text/csv"})
    assert r.status_code == 201 and r.json()["retagged"] >= 1
    try:
        [c] = candidates(ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01"))
        assert summary(c) == ("NOT_RECOGNIZABLE", ["QC_EXPIRED"])
        stored = lab_a.get(f"/Observation/{obs['id']}").json()
        assert not [t for t in stored["meta"].get("tag", []) if t["system"] == MARK_SYSTEM]
        assert stored["meta"]["versionId"] == "2"  # re-tagged as a new version
    finally:
        r = admin.post("/recognition/reference/qualifications", params={"retag": "wait"}, content=qualifications(),
                       headers={"Content-Type": "text/csv"})
        assert r.status_code == 201
    [c] = candidates(ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01"))
    assert summary(c) == ("RECOGNIZABLE", [])
    stored = lab_a.get(f"/Observation/{obs['id']}").json()
    assert {t["code"] for t in stored["meta"]["tag"] if t["system"] == MARK_SYSTEM} == {"WH", "HB"}


def test_reference_change_retags_in_the_background(lab_a, admin):
    import time

    pid = new_patient(lab_a)
    obs = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "K", 4.0, "mmol/L", 1)).json()
    assert {t["code"] for t in obs["meta"]["tag"] if t["system"] == MARK_SYSTEM} == {"HB"}

    def marks_after(body: bytes) -> set[str]:
        before = lab_a.get(f"/Observation/{obs['id']}").json()["meta"]["versionId"]
        r = admin.post("/recognition/reference/qualifications", content=body, headers={"Content-Type": "text/csv"})
        assert r.status_code == 201 and r.json()["retagged"] == "started"
        deadline = time.monotonic() + 60  # a wait for the background thread, not a timing assertion
        while time.monotonic() < deadline:
            cur = lab_a.get(f"/Observation/{obs['id']}").json()
            if cur["meta"]["versionId"] != before:
                return {t["code"] for t in cur["meta"].get("tag", []) if t["system"] == MARK_SYSTEM}
            time.sleep(0.05)
        raise AssertionError("the marks were not refreshed")

    assert marks_after(qualifications(**{"H001/CAT-K": ("no", "2000-01-01", "2999-12-31")})) == set()
    assert marks_after(qualifications()) == {"HB"}


def test_failed_eqa_and_preliminary_results(lab_a, doctor_b):
    pid = new_patient(lab_a)
    failed = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h003:lis", "0101", 5.0, "mmol/L", 2,
                                                         performer="H003")).json()
    prelim = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "GLU", 5.0, "mmol/L", 1,
                                                         status="preliminary")).json()
    assert not [t for t in failed["meta"].get("tag", []) if t["system"] == MARK_SYSTEM]
    answer = by_result(ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01"))
    assert summary(answer[f"Observation/{failed['id']}"]) == ("NOT_RECOGNIZABLE", ["QC_NOT_PASSED"])
    assert summary(answer[f"Observation/{prelim['id']}"]) == ("NOT_RECOGNIZABLE", ["NOT_FINAL"])


def test_different_local_codes_and_units_for_the_same_item(lab_a, doctor_b):
    pid = new_patient(lab_a)
    obs = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "HGB", 135, "g/L", 5)).json()
    # H002 orders haemoglobin as XHB and reports it in g/dL
    [c] = candidates(ask(doctor_b, pid, "urn:yilian:h002:lis", "XHB"))
    assert summary(c) == ("RECOGNIZABLE", [])
    assert c["result"][0]["valueReference"]["reference"] == f"Observation/{obs['id']}"
    assert c["value"][0]["valueQuantity"]["value"] == 135
    assert c["valueInRequesterUnit"][0]["valueQuantity"] == {
        "value": 13.5, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}
    # the same by LOINC, and by catalogue code on Patient/$recognizable
    [c] = candidates(ask(doctor_b, pid, "http://loinc.org", "718-7"))
    assert summary(c) == ("RECOGNIZABLE", [])
    r = doctor_b.get(f"/Patient/{pid}/$recognizable", params={"item": "CAT-HGB"})
    assert r.status_code == 200 and len(candidates(r.json())) == 1
    # glucose is not haemoglobin: nothing offered
    assert candidates(ask(doctor_b, pid, "urn:yilian:h002:lis", "B-GLU-01")) == []


def test_imaging_without_images_needs_judgement_with_images_recognizable(lab_a, doctor_b):
    pid = new_patient(lab_a)
    study = lab_a.post("/ImagingStudy", json={
        "resourceType": "ImagingStudy", "status": "available", "subject": {"reference": f"Patient/{pid}"},
        "started": at(10)}).json()
    report = {"resourceType": "DiagnosticReport", "status": "final",
              "code": {"coding": [{"system": "urn:yilian:h001:pacs", "code": "CT-CHEST"}]},
              "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": at(10),
              "performer": [org_ref("H001")], "imagingStudy": [{"reference": f"ImagingStudy/{study['id']}"}],
              "conclusion": "未见异常"}
    rep = lab_a.post("/DiagnosticReport", json=report).json()
    assert {t["code"] for t in rep["meta"]["tag"] if t["system"] == MARK_SYSTEM} == {"HB"}
    [c] = candidates(ask(doctor_b, pid, "urn:yilian:h002:pacs", "CT0101"))
    assert summary(c) == ("NEEDS_JUDGEMENT", ["IMAGES_UNAVAILABLE"])
    assert c["imagingStudy"][0]["valueReference"]["reference"] == f"ImagingStudy/{study['id']}"
    # the instances arrive (as the DICOM service records them), with a WADO-RS endpoint
    ep = lab_a.post("/Endpoint", json={
        "resourceType": "Endpoint", "status": "active",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}], "address": "https://hub.example.org/dicomweb"}).json()
    study.update(numberOfInstances=2, endpoint=[{"reference": f"Endpoint/{ep['id']}"}], series=[{
        "uid": "1.2.3.4.1", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
        "instance": [{"uid": "1.2.3.4.1.1", "sopClass": {"system": "urn:ietf:rfc:3986",
                                                          "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}}]}])
    assert lab_a.put(f"/ImagingStudy/{study['id']}", json=study).status_code == 200
    [c] = candidates(ask(doctor_b, pid, "urn:yilian:h002:pacs", "CT0101"))
    assert summary(c) == ("RECOGNIZABLE", [])
    assert c["endpoint"][0]["valueReference"]["reference"] == f"Endpoint/{ep['id']}"
    assert c["report"][0]["valueReference"]["reference"] == f"DiagnosticReport/{rep['id']}"


def test_images_found_through_the_order_and_the_accession_number(lab_a, doctor_b):
    """The DICOM service links a study to the ServiceRequest of its accession number (basedOn) and
    keeps the accession as an identifier; a RIS report linked the same ways finds the images."""
    pid = new_patient(lab_a)
    accession = {"system": "https://yilian.example.org/fhir/sid/H001/accession", "value": unique("ACC")}
    order = lab_a.post("/ServiceRequest", json={
        "resourceType": "ServiceRequest", "status": "completed", "intent": "order", "identifier": [accession],
        "code": {"coding": [{"system": "urn:yilian:h001:pacs", "code": "CT-CHEST"}]},
        "subject": {"reference": f"Patient/{pid}"}}).json()
    series = [{"uid": "1.2.3.9.1", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
               "numberOfInstances": 40}]
    by_order = lab_a.post("/ImagingStudy", json={
        "resourceType": "ImagingStudy", "status": "available", "subject": {"reference": f"Patient/{pid}"},
        "basedOn": [{"reference": f"ServiceRequest/{order['id']}"}], "numberOfInstances": 40, "series": series}).json()
    report = {"resourceType": "DiagnosticReport", "status": "final",
              "code": {"coding": [{"system": "urn:yilian:h001:pacs", "code": "CT-CHEST"}]},
              "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": at(5), "performer": [org_ref("H001")]}
    rep = lab_a.post("/DiagnosticReport", json={**report, "basedOn": [{"reference": f"ServiceRequest/{order['id']}"}]}).json()
    [c] = candidates(ask(doctor_b, pid, "urn:yilian:h002:pacs", "CT0101"))
    assert summary(c) == ("RECOGNIZABLE", [])
    assert c["imagingStudy"][0]["valueReference"]["reference"] == f"ImagingStudy/{by_order['id']}"
    # by accession number only
    lab_a.delete(f"/DiagnosticReport/{rep['id']}")
    acc2 = {**accession, "value": unique("ACC")}
    by_acc = lab_a.post("/ImagingStudy", json={
        "resourceType": "ImagingStudy", "status": "available", "subject": {"reference": f"Patient/{pid}"},
        "identifier": [acc2], "numberOfInstances": 12, "series": series}).json()
    lab_a.post("/DiagnosticReport", json={**report, "identifier": [acc2]})
    [c] = candidates(ask(doctor_b, pid, "urn:yilian:h002:pacs", "CT0101"))
    assert summary(c) == ("RECOGNIZABLE", [])
    assert [p["valueReference"]["reference"] for p in c["imagingStudy"]] == [f"ImagingStudy/{by_acc['id']}"]


def test_clinical_context_and_source_mark(lab_a, doctor_b, caplog):
    pid = new_patient(lab_a)
    o = observation(pid, "urn:yilian:h001:lis", "HGB", 120, "g/L", 2)
    o["meta"] = {"tag": [{"system": MARK_SYSTEM, "code": "鄂HR"}]}  # HGB is a Wuhan item: a wrong mark
    obs = lab_a.post("/Observation", json=o).json()
    claimed = [t for t in obs["meta"]["tag"] if t["system"].endswith("recognition-mark-claimed")]
    assert [t["code"] for t in claimed] == ["鄂HR"]
    alerts = [r.getMessage() for r in caplog.records if r.name == "yilian.recognition" and "data quality" in r.getMessage()]
    assert alerts == [f"data quality: Observation/{obs['id']} from H001 carries HR mark(s) 鄂HR that the reference "
                      "data does not support"]
    [c] = candidates(ask(doctor_b, pid, "urn:yilian:h002:lis", "XHB", context="pre-surgery"))
    assert summary(c) == ("NEEDS_JUDGEMENT", ["HR_MARK_MISMATCH", "CLINICAL_EXCEPTION:pre-surgery"])
    r = doctor_b.post("/ServiceRequest/$recognizable", params={"context": "whim"}, json={
        "resourceType": "ServiceRequest", "status": "draft", "intent": "order", "priority": "stat",
        "code": {"coding": [{"system": "urn:yilian:h002:lis", "code": "XHB"}]}, "subject": {"reference": f"Patient/{pid}"}})
    assert r.status_code == 400 and "whim" in r.json()["issue"][0]["diagnostics"]
    # priority stat = emergency
    order = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order", "priority": "stat",
             "code": {"coding": [{"system": "urn:yilian:h002:lis", "code": "XHB"}]}, "subject": {"reference": f"Patient/{pid}"}}
    [c] = candidates(doctor_b.post("/ServiceRequest/$recognizable", json=order).json())
    assert "CLINICAL_EXCEPTION:emergency" in summary(c)[1]


def test_not_in_catalogue_item(lab_a, doctor_b):
    pid = new_patient(lab_a)
    lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "ALT", 30, "U/L", 2))
    answer = ask(doctor_b, pid, "urn:yilian:h001:lis", "ALT")
    item = parts(answer["parameter"][0])
    assert item["reason"][0]["valueCode"] == "NOT_IN_CATALOGUE"
    [c] = candidates(answer)
    assert summary(c) == ("NOT_RECOGNIZABLE", ["NOT_IN_CATALOGUE"])


def test_results_across_linked_records_of_the_person(lab_a, doctor_b, hub):
    at_a, at_b = new_patient(lab_a), new_patient(lab_a)
    obs = lab_a.post("/Observation", json=observation(at_a, "urn:yilian:h001:lis", "K", 4.1, "mmol/L", 2)).json()
    assert candidates(ask(doctor_b, at_b, "http://loinc.org", "2823-3")) == []
    svc = hub.hub.fhir
    default = svc.linked_patients
    svc.linked_patients = lambda conn, pid: [at_a, at_b] if pid in (at_a, at_b) else default(conn, pid)
    try:
        [c] = candidates(ask(doctor_b, at_b, "http://loinc.org", "2823-3"))
    finally:
        svc.linked_patients = default
    assert summary(c) == ("RECOGNIZABLE", [])
    assert c["result"][0]["valueReference"]["reference"] == f"Observation/{obs['id']}"


def test_decision_written_back_as_task_audited_and_counted(lab_a, doctor_b, hub, admin):
    pid = new_patient(lab_a)
    obs = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "HBA1C", 6.2, "%", 10)).json()
    order = doctor_b.post("/ServiceRequest", json={
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": f"Patient/{pid}"}, "requester": org_ref("H002")}).json()
    r = doctor_b.get(f"/ServiceRequest/{order['id']}/$recognizable")
    assert r.status_code == 200
    [c] = candidates(r.json())
    assert summary(c) == ("RECOGNIZABLE", [])

    def decide(decision: str, reason: str | None = None) -> httpx.Response:
        params = [{"name": "result", "valueReference": {"reference": f"Observation/{obs['id']}"}},
                  {"name": "decision", "valueCode": decision}]
        if reason:
            params.append({"name": "reason", "valueCode": reason})
        return doctor_b.post(f"/ServiceRequest/{order['id']}/$recognition-decision",
                             json={"resourceType": "Parameters", "parameter": params})

    bad = decide("reject")
    assert bad.status_code == 400 and "reason" in bad.json()["issue"][0]["diagnostics"]
    other = lab_a.post("/Observation", json=observation(new_patient(lab_a), "urn:yilian:h001:lis", "HBA1C", 6.0, "%",
                                                        3)).json()
    wrong = doctor_b.post(f"/ServiceRequest/{order['id']}/$recognition-decision", json={
        "resourceType": "Parameters", "parameter": [
            {"name": "result", "valueReference": {"reference": f"Observation/{other['id']}"}},
            {"name": "decision", "valueCode": "accept"}]})
    assert wrong.status_code == 400 and "not a result of the patient" in wrong.json()["issue"][0]["diagnostics"]
    accepted = decide("accept")
    assert accepted.status_code == 201, accepted.text
    task = doctor_b.get(f"/Task/{accepted.json()['id']}").json()
    assert task["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert task["focus"] == {"reference": f"Observation/{obs['id']}"}
    assert task["for"] == {"reference": f"Patient/{pid}"}
    assert task["businessStatus"]["coding"][0]["code"] == "accepted"
    assert task["requester"]["identifier"]["value"] == "dr-li" and task["authoredOn"]
    rejected = decide("reject", "condition-changed")
    assert rejected.status_code == 201
    assert rejected.json()["statusReason"]["coding"][0]["code"] == "condition-changed"
    # the tasks are found from the order
    found = doctor_b.get("/Task", params={"based-on": f"ServiceRequest/{order['id']}"}).json()
    assert len(found["entry"]) == 2
    # audited: the operation's AuditEvent names the Task and the order
    import time

    deadline = time.monotonic() + 30  # the audit journal is written in batches, up to a flush interval late
    with hub.client("system/AuditEvent.rs") as auditor:
        while True:
            events = auditor.get("/AuditEvent", params={"entity": f"Task/{accepted.json()['id']}"}).json()
            ops = [e["resource"] for e in events.get("entry", []) if e["resource"]["subtype"][0]["code"] == "operation"]
            if ops or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    [ev] = ops
    whats = {e["what"]["reference"] for e in ev["entity"] if "what" in e}
    assert {f"ServiceRequest/{order['id']}", f"Patient/{pid}"} <= whats
    assert ev["agent"][0]["who"]["identifier"]["value"] == "dr-li"

    stats = admin.get("/recognition/statistics", params={"group_by": "requester,item", "period": "day"}).json()
    row = next(r for r in stats["rows"] if r["requester"] == "H002" and r["item"] == "CAT-HBA1C")
    assert row["offered"] == 1 and row["accepted"] == 1 and row["rejected"] == 1
    assert row["rejected_reasons"] == {"condition-changed": 1}
    by_performer = admin.get("/recognition/statistics", params={"group_by": "performer"}).json()
    assert next(r for r in by_performer["rows"] if r["performer"] == "H001")["accepted"] >= 1


def test_reference_data_api_versions_errors_and_authorization(hub, admin, published):
    r = admin.get("/recognition/reference/catalogue")
    assert r.status_code == 200 and {row["item_std_code"] for row in r.json()["rows"]} >= {"CAT-GLU", "CAT-CT-CHEST"}
    versions = admin.get("/recognition/reference/qualifications/versions").json()["versions"]
    assert len(versions) >= 1 and versions[0]["loaded_by"] == "tester"
    # a future version is stored but not in force until its date
    future = (TODAY + timedelta(days=30)).isoformat()
    r = admin.post("/recognition/reference/catalogue", params={"effective_from": future},
                   content=b"item_std_code,category,scope,time_limit_days,requires_images\nCAT-GLU,LAB,WH,1,no\n",
                   headers={"Content-Type": "text/csv"})
    assert r.status_code == 201
    current = admin.get("/recognition/reference/catalogue").json()
    assert current["version"] == r.json()["versions"]["catalogue"] - 1
    later = admin.get("/recognition/reference/catalogue", params={"at": (TODAY + timedelta(days=31)).isoformat()}).json()
    assert later["version"] == r.json()["versions"]["catalogue"] and len(later["rows"]) == 1
    # a JSON release of several kinds
    r = admin.post("/recognition/reference", params={"effective_from": future}, json={
        "scopes": [{"scope_code": "HB", "level": "province", "label": "鄂HR", "members": ["H001"]}]})
    assert r.status_code == 201 and set(r.json()["versions"]) == {"scopes"}
    # bad files: a clear error naming the line
    bad = admin.post("/recognition/reference/qualifications", headers={"Content-Type": "text/csv"},
                     content=b"organization,item_std_code,scope,qc_body,eqa_round,passed,valid_from,valid_to\n"
                             b"H001,CAT-GLU,HB,x,1,yes,2026-13-01,2026-12-31\n")
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["diagnostics"] == "qualifications file line 2: '2026-13-01' is not a date (YYYY-MM-DD)"
    bad = admin.post("/recognition/reference/scopes", headers={"Content-Type": "text/csv"},
                     content=b"scope_code,level,parent,label,members\nWH,city,XX,W,H1\n")
    assert bad.status_code == 400 and "parent 'XX'" in bad.json()["issue"][0]["diagnostics"]
    bad = admin.post("/recognition/reference/codemaps", headers={"Content-Type": "text/csv"},
                     content=b"org_code,local_system,local_code,local_display,loinc,catalogue_code,unit_ucum\n"
                             b"H9,,X,x,,CAT-GLU,furlongs\n")
    assert bad.status_code == 400 and "furlongs" in bad.json()["issue"][0]["diagnostics"]
    assert admin.post("/recognition/reference/nonsense", content=b"").status_code == 404
    # authorization
    assert httpx.get(f"{hub.root}/recognition/reference/catalogue").status_code == 401
    with httpx.Client(base_url=hub.root, headers={"Authorization": f"Bearer {hub.token('system/*.cruds')}"}) as c:
        assert c.get("/recognition/reference/catalogue").status_code == 403
        assert c.post("/recognition/reference/catalogue", content=b"x").status_code == 403
        assert c.get("/recognition/statistics").status_code == 403
    with httpx.Client(base_url=hub.root, headers={"Authorization": f"Bearer {hub.token('yilian/recognition-stats')}"}) as c:
        assert c.get("/recognition/statistics").status_code == 200


def test_operation_errors_and_scopes(hub, lab_a, doctor_b):
    pid = new_patient(lab_a)
    r = doctor_b.get(f"/Patient/{pid}/$recognizable")
    assert r.status_code == 400 and "item" in r.json()["issue"][0]["diagnostics"]
    assert doctor_b.get("/Patient/nobody/$recognizable", params={"item": "CAT-GLU"}).status_code == 404
    with hub.client("user/Patient.rs", organization="H002") as c:
        assert c.get(f"/Patient/{pid}/$recognizable", params={"item": "CAT-GLU"}).status_code == 403
    with hub.client(DOCTOR) as no_org:
        r = no_org.get(f"/Patient/{pid}/$recognizable", params={"item": "CAT-GLU"})
        assert r.status_code == 400 and "organization" in r.json()["issue"][0]["diagnostics"]
        assert no_org.get(f"/Patient/{pid}/$recognizable", params={"item": "CAT-GLU", "organization": "H002"}
                          ).status_code == 200
        r = no_org.get(f"/Patient/{pid}/$recognizable", params={"item": "CAT-GLU", "organization": "Organization/x"})
        assert r.status_code == 400 and "not a member" in r.json()["issue"][0]["diagnostics"]
    with hub.client("patient/Observation.rs patient/DiagnosticReport.rs patient/Patient.rs", organization="H002",
                    patient="someone-else") as app:
        assert app.get(f"/Patient/{pid}/$recognizable", params={"item": "CAT-GLU"}).status_code == 403
    r = doctor_b.post("/ServiceRequest/$recognizable", json={"resourceType": "ServiceRequest", "status": "draft",
                                                             "intent": "order", "subject": {"reference": f"Patient/{pid}"}})
    assert r.status_code == 400


def resident_id(seq: int) -> str:
    """A GB 11643 citizen identity number with a valid check digit (Wuhan, born 1970-03-15)."""
    body = f"42010219700315{seq % 1000:03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights)) % 11]


def test_records_the_mpi_links_are_one_person(lab_a, doctor_b):
    """The same person registered at H001 and at H002 (same resident id): the H002 doctor asking
    about H002's own record sees the H001 result, through the MPI's golden-record links."""
    rid = resident_id(int(uuid.uuid4().hex[:6], 16))
    person = {"resourceType": "Patient", "name": [{"family": "欧阳", "given": ["建国"], "text": "欧阳建国"}],
              "gender": "male", "birthDate": "1970-03-15"}
    at_a = lab_a.post("/Patient", json={**person, "identifier": [
        {"system": "urn:oid:2.16.156.10011.1.3", "value": rid},
        {"system": "https://yilian.example.org/fhir/sid/H001/mrn", "value": unique()}]}).json()["id"]
    at_b = lab_a.post("/Patient", json={**person, "identifier": [
        {"system": "urn:oid:2.16.156.10011.1.3", "value": rid},
        {"system": "https://yilian.example.org/fhir/sid/H002/mrn", "value": unique()}]}).json()["id"]
    obs = lab_a.post("/Observation", json=observation(at_a, "urn:yilian:h001:lis", "HBA1C", 6.6, "%", 20)).json()
    [c] = candidates(ask(doctor_b, at_b, "http://loinc.org", "4548-4"))
    assert summary(c) == ("RECOGNIZABLE", [])
    assert c["result"][0]["valueReference"]["reference"] == f"Observation/{obs['id']}"
