"""Imaging through the DICOM path: a CT study stored by STOW-RS (DICOMweb) becomes an ImagingStudy
linked to its order; the radiology report of H001 on that order is recognizable at H002 with the
study and its retrieval endpoints (real HTTP, both engines)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from mappings.identity import imaging_study_id, org_system, organization_id, patient_id
from tests.conftest import RunningHub, make_settings, unique
from tests.dicom import data
from tests.dicom.conftest import poll
from tests.recognition.conftest import sample_bytes
from tests.recognition.test_recognition_http import ADMIN, DOCTOR, ask, candidates, qualifications, summary


@pytest.fixture(scope="module")
def hub(db_url, tmp_path_factory):
    settings = make_settings(db_url, tmp_path_factory.mktemp("data"), dicom_issuer_orgs={"H001": "H001"},
                             dicom_default_org="H001")
    with RunningHub(settings) as h:
        with httpx.Client(base_url=h.root, timeout=60, headers={"Authorization": f"Bearer {h.token(ADMIN)}"}) as c:
            for kind, body in (("scopes", sample_bytes("scopes")), ("catalogue", sample_bytes("catalogue")),
                               ("codemaps", sample_bytes("codemaps")), ("qualifications", qualifications())):
                assert c.post(f"/recognition/reference/{kind}", params={"effective_from": "2000-01-01", "retag": "wait"},
                              content=body, headers={"Content-Type": "text/csv"}).status_code == 201
        yield h


def test_ct_by_stow_with_its_report_is_recognizable_with_the_images(hub):
    mrn, accession = unique("M"), unique("A")
    pid = patient_id(org_system("H001", "mrn"), mrn)
    with hub.client("system/*.cruds", organization="H001") as ris:
        assert ris.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "identifier": [
            {"system": org_system("H001", "mrn"), "value": mrn}], "gender": "male"}).status_code in (200, 201)
        order = ris.post("/ServiceRequest", json={
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "ACSN"}]},
                            "system": org_system("H001", "accession"), "value": accession}],
            "code": {"coding": [{"system": "urn:yilian:h001:pacs", "code": "CT-CHEST"}]},
            "subject": {"reference": f"Patient/{pid}"}}).json()
        report = ris.post("/DiagnosticReport", json={
            "resourceType": "DiagnosticReport", "status": "final",
            "code": {"coding": [{"system": "urn:yilian:h001:pacs", "code": "CT-CHEST"}]},
            "subject": {"reference": f"Patient/{pid}"}, "basedOn": [{"reference": f"ServiceRequest/{order['id']}"}],
            "effectiveDateTime": (datetime.now(timezone.utc) - timedelta(days=5)).isoformat(timespec="seconds"),
            "performer": [{"reference": f"Organization/{organization_id('H001')}"}], "conclusion": "未见明显异常"}).json()
    with hub.client(DOCTOR + " user/Endpoint.rs", subject="dr-li", organization="H002") as doctor:
        # the report is there, the images not yet
        [c] = candidates(ask(doctor, pid, "urn:yilian:h002:pacs", "CT0101"))
        assert summary(c) == ("NEEDS_JUDGEMENT", ["IMAGES_UNAVAILABLE"])
        uid = generate_uid()
        web = DICOMwebClient(f"{hub.root}/dicom-web",
                             headers={"Authorization": f"Bearer {hub.token('system/ImagingStudy.cruds')}"})
        result = web.store_instances(data.series(2, study_uid=uid, series_uid=generate_uid(), patient_id=mrn,
                                                 issuer="H001", accession=accession, name="Zhao^Lei"))
        assert "FailedSOPSequence" not in result

        def recognizable():
            [c] = candidates(ask(doctor, pid, "urn:yilian:h002:pacs", "CT0101"))
            return c if summary(c) == ("RECOGNIZABLE", []) else None

        c = poll(recognizable)
        assert c, "the stored study did not make the report recognizable"
        assert c["report"][0]["valueReference"]["reference"] == f"DiagnosticReport/{report['id']}"
        assert [p["valueReference"]["reference"] for p in c["imagingStudy"]] == [f"ImagingStudy/{imaging_study_id(uid)}"]
        endpoints = [doctor.get(f"/{p['valueReference']['reference']}") for p in c["endpoint"]]
        assert all(r.status_code == 200 for r in endpoints)
        assert "dicom-wado-rs" in {r.json()["connectionType"]["code"] for r in endpoints}
