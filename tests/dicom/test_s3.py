"""The S3-compatible blob store (boto3) against moto's S3 server on a loopback port: C-STORE,
C-GET and WADO-RS read and write objects there, not on the local disk."""

from __future__ import annotations

import boto3
import pytest
from dicomweb_client.api import DICOMwebClient
from moto.server import ThreadedMotoServer
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from tests.conftest import RunningHub, free_port, make_settings
from tests.dicom import data
from tests.dicom.conftest import CLIENT_HANDLERS, SCU, dicom_port
from tests.dicom.test_dimse import store

BUCKET = "yilian-dicom-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def pacs(db_url, tmp_path_factory, s3_endpoint):
    mp = pytest.MonkeyPatch()
    # moto accepts any credentials; these exist only for this test process
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        mp.setenv(k, v)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    settings = make_settings(db_url, tmp_path_factory.mktemp("data"), dicom_enabled=True, dicom_port=free_port(),
                             dicom_aes={SCU: "127.0.0.1:1"}, dicom_blob_backend="s3", dicom_s3_bucket=BUCKET,
                             dicom_s3_endpoint=s3_endpoint, dicom_s3_prefix="pacs")
    with RunningHub(settings) as h:
        yield h
    mp.undo()


def test_objects_live_in_the_bucket(pacs, s3_endpoint):
    uid = generate_uid()
    ds = data.series(2, study_uid=uid, series_uid=generate_uid(), patient_id="S3-1")
    assert store(pacs, ds) == [0, 0]
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint)
            .list_objects_v2(Bucket=BUCKET, Prefix="pacs/").get("Contents", [])]
    assert len(keys) == 2
    assert not list((pacs.settings.data_dir / "dicom").rglob("*.dcm"))  # nothing left on the local disk
    web = DICOMwebClient(f"{pacs.root}/dicom-web", headers={"Authorization": f"Bearer {pacs.token()}"})
    got = web.retrieve_study(uid)
    assert sorted(d.SOPInstanceUID for d in got) == sorted(d.SOPInstanceUID for d in ds)
    received = []
    ae = AE(ae_title=SCU)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN", ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, lambda e: received.append(e.dataset) or 0), *CLIENT_HANDLERS])
    ident = Dataset()
    ident.QueryRetrieveLevel, ident.StudyInstanceUID = "STUDY", uid
    statuses = [s.Status for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert statuses[-1] == 0 and len(received) == 2
    web.delete_study(uid)
    left = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix="pacs/")
    assert left.get("KeyCount", 0) == 0


def test_resend_by_other_senders_keeps_one_blob_in_the_bucket(pacs, s3_endpoint):
    from tests.dicom.test_resend_blobs import resend_by_other_senders_keeps_one_blob

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    resend_by_other_senders_keeps_one_blob(
        pacs, lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix="pacs/").get("KeyCount", 0))
