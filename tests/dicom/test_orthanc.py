"""Interoperability with Orthanc (a PACS the project did not write): Orthanc queries the hub and
C-MOVEs a study from it, and the hub C-MOVEs a study into Orthanc."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from hub.dicom.peers import Peer
from tests.dicom import data
from tests.dicom.conftest import CLIENT_HANDLERS, SCU, dicom_port
from tests.dicom.orthanc import Orthanc
from tests.dicom.test_dimse import store


@pytest.fixture(scope="module")
def orthanc(pacs, tmp_path_factory):
    o = Orthanc(tmp_path_factory.mktemp("orthanc"), {"yilian": ("YILIAN", "127.0.0.1", dicom_port(pacs))})
    o.start()
    pacs.hub.dicom.peers.add(Peer("ORTHANC", "127.0.0.1", o.dicom_port))  # as `yilian dicom ae add` does
    yield o
    o.stop()


def test_orthanc_finds_and_moves_a_study_from_the_hub(pacs, orthanc):
    uid = generate_uid()
    ds = data.series(3, study_uid=uid, series_uid=generate_uid(), patient_id="OR-1", name="Guo^Jun")
    assert store(pacs, ds) == [0, 0, 0]
    answers = orthanc.rest("POST", "/modalities/yilian/query",
                           json={"Level": "Study", "Query": {"PatientID": "OR-1", "StudyInstanceUID": ""}})
    content = orthanc.rest("GET", f"{answers['Path']}/answers?expand")
    assert [a["0020,000d"]["Value"] for a in content] == [uid]
    orthanc.rest("POST", "/modalities/yilian/move",
                 json={"Level": "Study", "Resources": [{"StudyInstanceUID": uid}], "TargetAet": "ORTHANC",
                       "Synchronous": True})
    found = orthanc.rest("POST", "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": uid}})
    assert len(found) == 3


def test_the_hub_moves_a_study_into_orthanc(pacs, orthanc):
    uid = generate_uid()
    ds = data.series(2, study_uid=uid, series_uid=generate_uid(), patient_id="OR-2", name="Ma^Lin", modality="CR",
                     ts=RLELossless)
    assert store(pacs, ds) == [0, 0]
    ae = AE(ae_title=SCU)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN", evt_handlers=CLIENT_HANDLERS)
    ident = Dataset()
    ident.QueryRetrieveLevel, ident.StudyInstanceUID = "STUDY", uid
    statuses = [s.Status for s, _ in assoc.send_c_move(ident, "ORTHANC", StudyRootQueryRetrieveInformationModelMove)]
    assoc.release()
    assert statuses[-1] == 0
    found = orthanc.rest("POST", "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": uid},
                                                    "Expand": True})
    assert sorted(f["MainDicomTags"]["SOPInstanceUID"] for f in found) == sorted(d.SOPInstanceUID for d in ds)
    tags = orthanc.rest("GET", f"/instances/{found[0]['ID']}/metadata/TransferSyntax")
    assert tags == RLELossless  # moved as stored, compressed
