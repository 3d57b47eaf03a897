"""Each study as a FHIR ImagingStudy linked to its Patient and its ServiceRequest (either order)."""

from __future__ import annotations

import time

import httpx
from pydicom.uid import generate_uid

from mappings.identity import imaging_study_id, org_system, patient_id
from tests.dicom import data
from tests.dicom.conftest import poll
from tests.dicom.test_dimse import store


def service_request(accession: str, org: str, pid: str) -> dict:
    return {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "ACSN"}]},
                            "system": org_system(org, "accession"), "value": accession}],
            "code": {"text": "CT chest"}, "subject": {"reference": f"Patient/{pid}"}}


def _study(fhir, uid, want=lambda r: True):
    def get():
        r = fhir.get(f"/ImagingStudy/{imaging_study_id(uid)}")
        return r.json() if r.status_code == 200 and want(r.json()) else None
    return poll(get)


def test_study_becomes_an_imaging_study_with_patient_series_and_endpoints(pacs, fhir):
    uid, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    ds = (data.series(2, study_uid=uid, series_uid=s1, patient_id="M-77", issuer="HOSP_A", accession="A-77",
                      name="Sun^Li", sex="F", birth_date="19800202")
          + data.series(1, study_uid=uid, series_uid=s2, patient_id="M-77", issuer="HOSP_A", accession="A-77",
                        modality="MR", series_number=2))
    assert store(pacs, ds[:2]) + store(pacs, ds[2:]) == [0, 0, 0]
    study = _study(fhir, uid, lambda r: r.get("numberOfInstances") == 3)
    assert study, "ImagingStudy not written"
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"} in [
        {k: i[k] for k in ("system", "value")} for i in study["identifier"]]
    acc = [i for i in study["identifier"] if i.get("system") == org_system("hosp-a", "accession")]
    assert acc and acc[0]["value"] == "A-77"
    pid = patient_id(org_system("hosp-a", "mrn"), "M-77")
    assert study["subject"]["reference"] == f"Patient/{pid}"
    patient = fhir.get(f"/Patient/{pid}").json()
    assert patient["identifier"][0]["value"] == "M-77" and patient["gender"] == "female"
    assert [m["code"] for m in study["modality"]] == ["CT", "MR"]
    assert [(s["uid"], s["numberOfInstances"]) for s in study["series"]] == [(s1, 2), (s2, 1)]
    assert study["series"][0]["instance"][0]["uid"] == ds[0].SOPInstanceUID
    eps = [fhir.get(f"/{e['reference']}").json() for e in study["endpoint"]]
    assert {e["connectionType"]["code"] for e in eps} == {"dicom-wado-rs", "dicom-dimse"}
    assert any(e["address"].endswith("/dicom-web") for e in eps)
    # searchable through the FHIR indexes, as any resource written by the FHIR service
    found = fhir.get("/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{uid}"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [imaging_study_id(uid)]


def test_service_request_first_then_study(pacs, fhir):
    pid = patient_id(org_system("hosp-a", "mrn"), "M-88")
    sr = fhir.post("/ServiceRequest", json=service_request("A-88", "hosp-a", pid)).json()
    uid = generate_uid()
    store(pacs, data.series(1, study_uid=uid, series_uid=generate_uid(), patient_id="M-88", issuer="HOSP_A",
                            accession="A-88"))
    study = _study(fhir, uid)
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]


def test_study_first_then_service_request(pacs, fhir):
    uid = generate_uid()
    store(pacs, data.series(1, study_uid=uid, series_uid=generate_uid(), patient_id="M-99", issuer="HOSP_A",
                            accession="A-99"))
    assert _study(fhir, uid) and "basedOn" not in _study(fhir, uid)
    pid = patient_id(org_system("hosp-a", "mrn"), "M-99")
    sr = fhir.post("/ServiceRequest", json=service_request("A-99", "hosp-a", pid)).json()
    study = _study(fhir, uid, lambda r: "basedOn" in r)
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    # the same accession number in another organization is another order
    other = fhir.post("/ServiceRequest", json=service_request("A-99", "hosp-b", pid)).json()
    assert fhir.get(f"/ImagingStudy/{imaging_study_id(uid)}").json()["basedOn"] == [
        {"reference": f"ServiceRequest/{sr['id']}"}]
    assert other["id"] != sr["id"]


def test_the_imaging_study_waits_while_queries_go_on_then_is_written(pacs, fhir, monkeypatch):
    """A viewer querying right after a burst is not slowed by the ImagingStudy sync: the study is
    written once no instance, C-FIND, C-GET or C-MOVE has come for the quiet delay (here 2 s),
    not while one C-FIND follows another."""
    from tests.dicom.test_dimse import find, q

    monkeypatch.setattr(pacs.hub.dicom.imaging, "delay", 2.0)
    uid = generate_uid()
    assert store(pacs, data.series(1, study_uid=uid, series_uid=generate_uid(), patient_id="Q-1", issuer="HOSP_A")) == [0]
    written_during = []
    until = time.monotonic() + 4.0  # twice the quiet delay, with a C-FIND every few milliseconds
    while time.monotonic() < until:
        assert len(find(pacs, q("STUDY", StudyInstanceUID=uid))) == 1
        written_during.append(fhir.get(f"/ImagingStudy/{imaging_study_id(uid)}").status_code)
    assert set(written_during) == {404}, "written while the queries went on"
    assert _study(fhir, uid), "not written once the queries stopped"


def test_an_overdue_study_is_written_during_queries_and_its_headers_left_to_their_readers(pacs, fhir, monkeypatch):
    """Past ``max_delay`` the study is written even while queries go on (its ImagingStudy, not the
    headers as DICOM JSON, which WADO-RS metadata then fills in on demand)."""
    from sqlalchemy import select

    from hub.dicom.schema import dicom_instances
    from tests.dicom.test_dimse import find, q

    monkeypatch.setattr(pacs.hub.dicom.imaging, "delay", 2.0)
    monkeypatch.setattr(pacs.hub.dicom.imaging, "max_delay", 1.0)
    uid, series_uid = generate_uid(), generate_uid()
    assert store(pacs, data.series(1, study_uid=uid, series_uid=series_uid, patient_id="Q-2", issuer="HOSP_A")) == [0]
    written = None
    until = time.monotonic() + 10.0
    while time.monotonic() < until and written != 200:
        assert len(find(pacs, q("STUDY", StudyInstanceUID=uid))) == 1
        written = fhir.get(f"/ImagingStudy/{imaging_study_id(uid)}").status_code
    assert written == 200, "an overdue study was not written while the queries went on"
    with pacs.hub.engine.connect() as conn:
        assert conn.execute(select(dicom_instances.c.meta).where(dicom_instances.c.study_uid == uid)).scalar() is None
    meta = httpx.get(f"{pacs.root}/dicom-web/studies/{uid}/series/{series_uid}/metadata",
                     headers={"Authorization": f"Bearer {pacs.token('system/ImagingStudy.r')}"})
    assert meta.status_code == 200 and meta.json()[0]["0020000D"]["Value"] == [uid]
