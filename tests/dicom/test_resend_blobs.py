"""An instance re-sent by another sender (the same data set under another File Meta, so another
blob name) is recognized as stored, and its copy is not kept: every blob is referenced."""

from __future__ import annotations

from collections.abc import Callable

from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from hub.dicom import index
from tests.dicom import data
from tests.dicom.test_dimse import store


def resend_by_other_senders_keeps_one_blob(pacs, blob_count: Callable[[], int]) -> None:
    """STOW-RS first (the client's File Meta, pydicom's implementation UID), then C-STORE over a
    pynetdicom association (the hub's receiver writes its own File Meta), then STOW-RS from a
    sender naming another implementation: one blob throughout, the first copy still served."""
    ds = data.instance(study_uid=generate_uid(), series_uid=generate_uid(), patient_id="RESEND-1")
    web = DICOMwebClient(f"{pacs.root}/dicom-web", headers={"Authorization": f"Bearer {pacs.token()}"})
    before = blob_count()
    web.store_instances([ds])
    assert blob_count() == before + 1
    assert store(pacs, [ds]) == [0]
    assert blob_count() == before + 1
    ds.file_meta.ImplementationClassUID = generate_uid()
    web.store_instances([ds])
    assert blob_count() == before + 1
    with pacs.hub.engine.connect() as conn:
        kept = index.find_instance(conn, ds.SOPInstanceUID).blob_key
    assert pacs.hub.dicom.blobs.exists(kept)  # the one blob left is the one the index serves
    served = web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert served.PixelData == ds.PixelData
    web.delete_study(ds.StudyInstanceUID)
    assert blob_count() == before


def test_resend_by_other_senders_keeps_one_blob_in_the_local_folder(pacs):
    root = pacs.hub.dicom.blobs.root
    resend_by_other_senders_keeps_one_blob(pacs, lambda: sum(1 for p in root.glob("??/??/*") if p.is_file()))


def test_a_resent_copy_that_cannot_be_deleted_is_still_stored(pacs, monkeypatch):
    """The object store failing to delete the stray copy does not turn the Success into a failure."""
    ds = data.instance(study_uid=generate_uid(), series_uid=generate_uid(), patient_id="RESEND-2")
    web = DICOMwebClient(f"{pacs.root}/dicom-web", headers={"Authorization": f"Bearer {pacs.token()}"})
    web.store_instances([ds])

    def unreachable(key: str) -> None:
        raise ConnectionError("object store unreachable")

    monkeypatch.setattr(pacs.hub.dicom.store.blobs, "delete", unreachable)
    assert store(pacs, [ds]) == [0]
    monkeypatch.undo()
    web.delete_study(ds.StudyInstanceUID)
