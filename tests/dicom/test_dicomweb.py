"""DICOMweb over real HTTP with the dicomweb-client package (PS3.18 QIDO-RS, WADO-RS, STOW-RS)."""

from __future__ import annotations

import io

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from requests.exceptions import HTTPError

from tests.dicom import data
from tests.dicom.conftest import poll


def client(pacs, scopes="system/ImagingStudy.cruds") -> DICOMwebClient:
    return DICOMwebClient(f"{pacs.root}/dicom-web", headers={"Authorization": f"Bearer {pacs.token(scopes)}"})


@pytest.fixture(scope="module")
def web(pacs):
    return client(pacs)


@pytest.fixture(scope="module")
def stored(web):
    ct = data.series(3, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="W1", name="Chen^Jing",
                     study_date="20240501", accession="W-ACC-1", size=32)
    cr = data.series(1, study_uid=generate_uid(), series_uid=generate_uid(), modality="CR", patient_id="W2",
                     name="Chen^Ming", study_date="20240601", ts=RLELossless)
    result = web.store_instances(ct + cr)
    assert len(result.ReferencedSOPSequence) == 4 and "FailedSOPSequence" not in result
    return {"ct": ct, "cr": cr}


def test_qido_studies_with_keys_includefield_limit_offset(web, stored):
    ct = stored["ct"]
    found = web.search_for_studies(search_filters={"PatientID": "W1"})
    assert [f["0020000D"]["Value"][0] for f in found] == [ct[0].StudyInstanceUID]
    assert found[0]["00201208"]["Value"] == [3] and found[0]["00080061"]["Value"] == ["CT"]
    assert found[0]["00100010"]["Value"] == [{"Alphabetic": "Chen^Jing"}]
    both = web.search_for_studies(search_filters={"PatientName": "chen*"})
    assert len(both) == 2
    assert len(web.search_for_studies(search_filters={"PatientName": "chen*"}, limit=1)) == 1
    page2 = web.search_for_studies(search_filters={"PatientName": "chen*"}, limit=1, offset=1)
    assert len(page2) == 1 and page2[0]["0020000D"] != both[0]["0020000D"]
    assert len(web.search_for_studies(search_filters={"StudyDate": "20240515-20240630"})) == 1
    assert web.search_for_studies(search_filters={"PatientName": "Chen"}) == []
    fuzzy = web.search_for_studies(search_filters={"PatientName": "Chen"}, fuzzymatching=True)
    assert len(fuzzy) == 2
    inc = web.search_for_studies(search_filters={"PatientID": "W1"}, fields=["PatientSex", "00100030"])
    assert inc[0]["00100040"]["Value"] == ["M"] and inc[0]["00100030"]["Value"] == ["19700101"]


def test_qido_series_and_instances(web, stored):
    ct = stored["ct"]
    series = web.search_for_series(ct[0].StudyInstanceUID)
    assert [s["0020000E"]["Value"][0] for s in series] == [ct[0].SeriesInstanceUID]
    assert series[0]["00201209"]["Value"] == [3]
    insts = web.search_for_instances(ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID, fields=["SliceThickness"])
    assert [i["00080018"]["Value"][0] for i in insts] == [d.SOPInstanceUID for d in ct]
    assert all(i["00081190"]["Value"][0].endswith(i["00080018"]["Value"][0]) for i in insts)
    assert len(web.search_for_series(search_filters={"Modality": "CR"})) >= 1


def test_wado_study_series_instance_and_metadata(web, stored):
    ct = stored["ct"]
    study = web.retrieve_study(ct[0].StudyInstanceUID)
    assert sorted(d.SOPInstanceUID for d in study) == sorted(d.SOPInstanceUID for d in ct)
    got = web.retrieve_instance(ct[1].StudyInstanceUID, ct[1].SeriesInstanceUID, ct[1].SOPInstanceUID)
    assert got.PixelData == ct[1].PixelData and got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    series = web.retrieve_series(ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID)
    assert len(series) == 3
    meta = web.retrieve_series_metadata(ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID)
    assert len(meta) == 3 and meta[0]["00100020"]["Value"] == ["W1"]
    uri = meta[0]["7FE00010"]["BulkDataURI"]
    assert uri.endswith("/bulkdata/7FE00010")
    bulk = web.retrieve_bulkdata(uri)
    assert bulk[0] == ct[0].PixelData


def test_wado_frames_and_rendered(web, stored):
    ct, cr = stored["ct"][0], stored["cr"][0]
    (frame,) = web.retrieve_instance_frames(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, [1])
    assert frame == ct.PixelData
    jpeg = web.retrieve_instance_rendered(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID,
                                          media_types=("image/jpeg",))
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (32, 32)
    png = web.retrieve_instance_frames_rendered(cr.StudyInstanceUID, cr.SeriesInstanceUID, cr.SOPInstanceUID, [1],
                                                media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).format == "PNG"  # decoded from RLE Lossless


def test_authorization(pacs, stored):
    url = f"{pacs.root}/dicom-web/studies"
    assert httpx.get(url).status_code == 401
    r = httpx.get(url, headers={"Authorization": f"Bearer {pacs.token('system/Patient.r')}"})
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    reader = client(pacs, "system/ImagingStudy.rs")
    with pytest.raises(HTTPError) as e:
        reader.store_instances([data.instance(study_uid=generate_uid(), series_uid=generate_uid())])
    assert e.value.response.status_code == 403
    with pytest.raises(HTTPError) as e:
        reader.delete_study(stored["ct"][0].StudyInstanceUID)
    assert e.value.response.status_code == 403


def test_stow_to_a_study_url_refuses_another_study(pacs, web):
    uid = generate_uid()
    ds = data.instance(study_uid=generate_uid(), series_uid=generate_uid())
    with pytest.raises(HTTPError) as e:
        web.store_instances([ds], study_instance_uid=uid)
    assert e.value.response.status_code == 409
    failed = e.value.response.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xA900]


def test_delete_series_then_study_with_audit(pacs, web):
    study = generate_uid()
    a = data.series(2, study_uid=study, series_uid=generate_uid(), patient_id="D1")
    b = data.series(1, study_uid=study, series_uid=generate_uid(), patient_id="D1", series_number=2)
    web.store_instances(a + b)
    web.delete_series(study, a[0].SeriesInstanceUID)
    left = web.search_for_instances(study)
    assert [i["00080018"]["Value"][0] for i in left] == [b[0].SOPInstanceUID]
    web.delete_study(study)
    assert web.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
    with pytest.raises(HTTPError) as e:
        web.retrieve_study(study)
    assert e.value.response.status_code == 404
    fhir = pacs.client()
    from tests.dicom.conftest import poll
    def deletions():
        entries = fhir.get("/AuditEvent", params={"_count": 500}).json().get("entry", [])
        found = [e["resource"] for e in entries if e["resource"].get("type", {}).get("code") == "110105"]
        return found if len(found) >= 2 else None

    deleted = poll(deletions)  # the audit trail is written in the background
    assert deleted and len(deleted) == 2 and all(ev["action"] == "D" for ev in deleted)
    assert {ev["entity"][0]["what"]["identifier"]["value"] for ev in deleted} == {f"urn:oid:{study}"}


def test_bad_multipart_is_a_clear_error(pacs):
    r = httpx.post(f"{pacs.root}/dicom-web/studies", content=b"not multipart",
                   headers={"Authorization": f"Bearer {pacs.token()}", "Content-Type": "application/dicom"})
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom at all\r\n--b--\r\n"
    r = httpx.post(f"{pacs.root}/dicom-web/studies", content=body,
                   headers={"Authorization": f"Bearer {pacs.token()}",
                            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]


def test_deidentified_export(pacs, web, stored):
    ct = stored["ct"]
    r = httpx.post(f"{pacs.root}/dicom-web/studies/{ct[0].StudyInstanceUID}/deidentify",
                   headers={"Authorization": f"Bearer {pacs.token()}",
                            "Accept": 'multipart/related; type="application/dicom"'}, timeout=60)
    assert r.status_code == 200
    # an independent reader of the multipart/related body: the standard library's MIME parser
    import email
    msg = email.message_from_bytes(b"Content-Type: " + r.headers["content-type"].encode() + b"\r\n\r\n" + r.content)
    parts = [p.get_payload(decode=True) for p in msg.get_payload()]
    from pydicom import dcmread
    out = [dcmread(io.BytesIO(p)) for p in parts]
    assert len(out) == 3
    originals = {d.SOPInstanceUID for d in ct}
    study_uids = {o.StudyInstanceUID for o in out}
    assert len(study_uids) == 1 and ct[0].StudyInstanceUID not in study_uids  # remapped, consistently
    assert study_uids == {r.headers["x-deidentified-study"]}
    assert not originals & {o.SOPInstanceUID for o in out}
    assert {o.SeriesInstanceUID for o in out} != {ct[0].SeriesInstanceUID} and len({o.SeriesInstanceUID for o in out}) == 1
    assert {str(o.PatientID) for o in out} == {"ANON0001"} and {str(o.PatientName) for o in out} == {"ANON0001"}
    assert all(o.PatientIdentityRemoved == "YES" for o in out)
    assert all(o.get("AccessionNumber", "") == "" and o.get("PatientBirthDate", "") in ("", "00010101") for o in out)
    assert out[0].DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out[0].PixelData == next(d for d in ct if d.InstanceNumber == out[0].InstanceNumber).PixelData
    assert out[0].SOPClassUID == ct[0].SOPClassUID  # well-known UIDs are kept
    fhir = pacs.client()

    def exports():
        entries = fhir.get("/AuditEvent", params={"_count": 500}).json().get("entry", [])
        return [e["resource"] for e in entries if e["resource"].get("type", {}).get("code") == "110106"]

    ev = poll(exports)
    assert ev and ev[0]["entity"][0]["what"]["identifier"]["value"] == f"urn:oid:{ct[0].StudyInstanceUID}"
