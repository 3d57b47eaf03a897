"""A C-GET's sub-operations read the stored file into their PDU bursts whatever the platform's
reads do: a short read (a signal, NFS, FUSE, SMB return fewer bytes than asked without being at
the end of the file) is resumed, and a platform without ``os.preadv`` reads the file another way.
Real associations with an in-process hub; the instances the C-GET's C-STORE sub-operations
deliver must be the stored ones, byte for byte in their pixel data."""

from __future__ import annotations

import os

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelGet

from tests.dicom import data
from tests.dicom.conftest import CLIENT_HANDLERS, SCU, dicom_port

_real_preadv = getattr(os, "preadv", None)


@pytest.fixture(scope="module")
def stored(pacs):
    study = generate_uid()
    cts = data.series(2, study_uid=study, series_uid=generate_uid(), patient_id="P-READS", size=128)
    ae = AE(ae_title=SCU)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN", evt_handlers=CLIENT_HANDLERS)
    assert assoc.is_established
    try:
        assert [assoc.send_c_store(ds).Status for ds in cts] == [0, 0]
    finally:
        assoc.release()
    return cts


def _get(pacs, cts) -> tuple[list[int], dict[str, bytes]]:
    ae = AE(ae_title=SCU)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    got: dict[str, bytes] = {}

    def on_store(event):
        got[event.dataset.SOPInstanceUID] = event.dataset.PixelData
        return 0

    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store), *CLIENT_HANDLERS])
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientID = "P-READS"
    ident.StudyInstanceUID = cts[0].StudyInstanceUID
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(ident, PatientRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    return statuses, got


def _check(pacs, cts) -> None:
    statuses, got = _get(pacs, cts)
    assert statuses[-1] == 0, [hex(s) for s in statuses]
    assert got == {ds.SOPInstanceUID: ds.PixelData for ds in cts}


@pytest.mark.skipif(_real_preadv is None, reason="the platform has no preadv to shorten")
def test_a_short_read_is_resumed(pacs, stored, monkeypatch):
    calls = []

    def short_preadv(fd, buffers, offset):
        # at most 1,000 bytes a call, as a network file system may answer
        calls.append(offset)
        first = memoryview(buffers[0])[:1000]
        return _real_preadv(fd, [first], offset)

    monkeypatch.setattr(os, "preadv", short_preadv)
    _check(pacs, stored)
    assert len(calls) > 2 * 2  # the reads were short: several per file


def test_a_platform_without_preadv(pacs, stored, monkeypatch):
    monkeypatch.delattr(os, "preadv", raising=False)
    _check(pacs, stored)
