"""DIMSE services over real associations: pynetdicom clients and dcmtk's tools (PS3.4 A, B, C)."""

from __future__ import annotations

import socket

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.dicom import data
from tests.dicom.conftest import CLIENT_HANDLERS, SCU, dicom_port, need, run


def _assoc(pacs, contexts, *, title=SCU, called="YILIAN", roles=None):
    ae = AE(ae_title=title)
    for cx in contexts:
        if isinstance(cx, tuple):
            ae.add_requested_context(*cx)
        else:
            ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title=called, ext_neg=roles or [],
                         evt_handlers=CLIENT_HANDLERS)
    return ae, assoc


def store(pacs, datasets, title=SCU) -> list[int]:
    tss = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
    classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    _, assoc = _assoc(pacs, [(c, tss) for c in classes], title=title)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()


def find(pacs, ident: Dataset, model=StudyRootQueryRetrieveInformationModelFind) -> list[Dataset]:
    _, assoc = _assoc(pacs, [model])
    assert assoc.is_established
    try:
        out = []
        for status, rsp in assoc.send_c_find(ident, model):
            assert status.Status in (0xFF00, 0xFF01, 0x0000), hex(status.Status)
            if status.Status in (0xFF00, 0xFF01):
                out.append(rsp)
        return out
    finally:
        assoc.release()


def q(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.fixture(scope="module")
def studies(pacs, tmp_path_factory):
    """Three studies of two patients: a CT (explicit VR), an MR (implicit VR) and a CR in RLE."""
    ct = data.series(3, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="P100",
                     name="Wang^Fang", study_date="20240110", study_time="083000", accession="ACC-1", issuer="HOSP_A")
    mr = data.series(2, study_uid=generate_uid(), series_uid=generate_uid(), modality="MR", patient_id="P100",
                     name="Wang^Fang", study_date="20240220", study_time="140000", ts=ImplicitVRLittleEndian,
                     issuer="HOSP_A")
    cr = data.series(1, study_uid=generate_uid(), series_uid=generate_uid(), modality="CR", patient_id="P200",
                     name="Li^Lei", study_date="20231231", study_time="235959", ts=RLELossless, sex="F")
    statuses = store(pacs, ct) + store(pacs, mr) + store(pacs, cr)
    assert statuses == [0] * 6
    return {"ct": ct, "mr": mr, "cr": cr}


def test_echo_with_pynetdicom_and_echoscu(pacs):
    _, assoc = _assoc(pacs, [Verification])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    r = run(need("echoscu"), "-aet", SCU, "-aec", "YILIAN", "127.0.0.1", dicom_port(pacs))
    assert r.returncode == 0, r.stderr


def test_wrong_called_ae_title_is_rejected(pacs):
    # dcmtk's echoscu: pynetdicom 3.0's requestor sometimes reports a rejection that arrives within
    # microseconds as an abort (its DUL thread closes the socket on the A-ASSOCIATE-RJ before the
    # requesting thread checks that the socket is connected), and the reason is then lost
    r = run(need("echoscu"), "-aet", SCU, "-aec", "NOTYILIAN", "127.0.0.1", dicom_port(pacs))
    assert r.returncode != 0
    assert "Association Rejected" in r.stderr and "Called AE Title Not Recognized" in r.stderr, r.stderr


def test_unknown_calling_ae_cannot_store_or_find(pacs):
    ds = data.instance(study_uid=generate_uid(), series_uid=generate_uid())
    assert store(pacs, [ds], title="STRANGER") == [0x0124]
    _, assoc = _assoc(pacs, [StudyRootQueryRetrieveInformationModelFind], title="STRANGER")
    statuses = [s.Status for s, _ in assoc.send_c_find(q("STUDY", StudyInstanceUID=""),
                                                       StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert statuses == [0x0124]


def test_stored_as_received_in_every_transfer_syntax(pacs, studies):
    hub = pacs.hub
    for key, ts in (("ct", ExplicitVRLittleEndian), ("mr", ImplicitVRLittleEndian), ("cr", RLELossless)):
        ds = studies[key][0]
        with hub.engine.connect() as conn:
            from hub.dicom import index
            (row,) = index.instances(conn, level="IMAGE", keys={"SOPInstanceUID": ds.SOPInstanceUID})
        assert row.transfer_syntax == ts
        stored = dcmread(hub.dicom.blobs.local_path(row.blob_key))
        assert stored.file_meta.TransferSyntaxUID == ts
        assert stored.PixelData == ds.PixelData  # the pixel data as sent, never re-encoded


def test_resending_is_idempotent_and_a_different_object_is_refused(pacs, studies):
    ds = studies["ct"][0]
    assert store(pacs, [ds]) == [0]
    hub = pacs.hub
    from sqlalchemy import func, select
    from hub.dicom.schema import dicom_conflicts, dicom_instances
    with hub.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(dicom_instances)
                         .where(dicom_instances.c.sop_uid == ds.SOPInstanceUID)).scalar_one()
    assert n == 1
    other = data.instance(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID,
                          patient_id="P100", name="Wang^Fang", number=99, issuer="HOSP_A")
    assert store(pacs, [other]) == [0xC0F1]
    with hub.engine.connect() as conn:
        kept = conn.execute(select(dicom_conflicts.c.reason, dicom_conflicts.c.blob_key)
                            .where(dicom_conflicts.c.sop_uid == ds.SOPInstanceUID)).all()
        number = conn.execute(select(dicom_instances.c.instance_number)
                              .where(dicom_instances.c.sop_uid == ds.SOPInstanceUID)).scalar_one()
    assert [k.reason for k in kept] == ["conflict"] and hub.dicom.blobs.exists(kept[0].blob_key)
    assert number == 1  # the first object stays the one served


def test_an_object_without_its_uids_fails_and_the_service_stays_up(pacs):
    ds = data.instance(study_uid=generate_uid(), series_uid=generate_uid())
    del ds.StudyInstanceUID
    assert store(pacs, [ds]) == [0xC000]
    _, assoc = _assoc(pacs, [Verification])
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_find_study_level_matching(pacs, studies):
    ct_uid, mr_uid, cr_uid = (studies[k][0].StudyInstanceUID for k in ("ct", "mr", "cr"))
    keys = dict(StudyInstanceUID="", PatientName="", StudyDate="", ModalitiesInStudy="",
                NumberOfStudyRelatedInstances="", AccessionNumber="")

    def uids(**match):
        return {r.StudyInstanceUID for r in find(pacs, q("STUDY", **{**keys, **match}))}

    assert uids(PatientID="P100") == {ct_uid, mr_uid}  # single value
    assert uids(PatientName="wang*") == {ct_uid, mr_uid}  # wildcard, case-insensitive PN
    assert uids(PatientName="L?^LEI") == {cr_uid}
    assert uids(StudyDate="20240101-20240131") == {ct_uid}  # date range
    assert uids(StudyDate="-20231231") == {cr_uid}
    assert uids(StudyDate="20240201-") == {mr_uid}
    assert uids(StudyInstanceUID=f"{ct_uid}\\{cr_uid}") == {ct_uid, cr_uid}  # list of UIDs
    assert uids(ModalitiesInStudy="MR") == {mr_uid}
    assert uids(AccessionNumber="ACC-1", StudyTime="0800-0900") == {ct_uid}
    assert {ct_uid, mr_uid, cr_uid} <= uids()  # universal matching
    (ct,) = find(pacs, q("STUDY", **{**keys, "StudyInstanceUID": ct_uid}))
    assert ct.PatientName == "Wang^Fang" and ct.ModalitiesInStudy == "CT"
    assert ct.NumberOfStudyRelatedInstances == 3 and ct.AccessionNumber == "ACC-1"
    assert ct.QueryRetrieveLevel == "STUDY"


def test_study_aggregates_over_several_series_and_modalities(pacs):
    uid = generate_uid()
    common = dict(study_uid=uid, patient_id="P150", name="Qian^Yu")
    ds = (data.series(2, series_uid=generate_uid(), modality="CT", **common)
          + data.series(1, series_uid=generate_uid(), modality="MR", series_number=2, **common)
          + data.series(1, series_uid=generate_uid(), modality="CT", series_number=3, **common))
    assert store(pacs, ds) == [0] * 4
    (found,) = find(pacs, q("STUDY", StudyInstanceUID=uid, ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
                            NumberOfStudyRelatedInstances=""))
    assert list(found.ModalitiesInStudy) == ["CT", "MR"]
    assert found.NumberOfStudyRelatedSeries == 3 and found.NumberOfStudyRelatedInstances == 4
    assert [s.NumberOfSeriesRelatedInstances for s in find(pacs, q(
        "SERIES", StudyInstanceUID=uid, SeriesInstanceUID="", NumberOfSeriesRelatedInstances=""))] == [2, 1, 1]


def test_find_patient_series_and_image_levels(pacs, studies):
    pats = find(pacs, q("PATIENT", PatientID="P100", PatientName="", NumberOfPatientRelatedStudies="",
                        NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances=""),
                PatientRootQueryRetrieveInformationModelFind)
    assert len(pats) == 1 and pats[0].NumberOfPatientRelatedStudies == 2
    assert pats[0].NumberOfPatientRelatedSeries == 2 and pats[0].NumberOfPatientRelatedInstances == 5
    ct = studies["ct"]
    series = find(pacs, q("SERIES", StudyInstanceUID=ct[0].StudyInstanceUID, SeriesInstanceUID="", Modality="",
                          NumberOfSeriesRelatedInstances=""))
    assert [(s.SeriesInstanceUID, s.Modality, s.NumberOfSeriesRelatedInstances) for s in series] == [
        (ct[0].SeriesInstanceUID, "CT", 3)]
    images = find(pacs, q("IMAGE", StudyInstanceUID=ct[0].StudyInstanceUID, SeriesInstanceUID=ct[0].SeriesInstanceUID,
                          SOPInstanceUID="", InstanceNumber=None, Rows=None, SliceThickness=None),
                  PatientRootQueryRetrieveInformationModelFind)
    assert [i.SOPInstanceUID for i in images] == [d.SOPInstanceUID for d in ct]
    assert [i.InstanceNumber for i in images] == [1, 2, 3] and images[0].Rows == 16
    assert "SliceThickness" in images[0]  # an unknown return key comes back, empty


def test_study_root_has_no_patient_level(pacs):
    _, assoc = _assoc(pacs, [StudyRootQueryRetrieveInformationModelFind])
    statuses = [s.Status for s, _ in assoc.send_c_find(q("PATIENT", PatientID=""), StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert statuses == [0xA900]


def test_findscu_counts(pacs, studies):
    r = run(need("findscu"), "-aet", SCU, "-aec", "YILIAN", "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID", "-k", "PatientName=WANG*", "127.0.0.1", dicom_port(pacs))
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).count("(Pending)") == 2  # dcmtk logs one line per pending response


class _Receiver:
    """A storage SCP of the test (the C-MOVE destination) on the move port."""

    def __init__(self, port: int, title: str = SCU):
        self.received: list[Dataset] = []
        self.sockets_nodelay: list[int] = []
        ae = AE(ae_title=title)
        ae.supported_contexts = StoragePresentationContexts
        for cx in ae.supported_contexts:
            cx.transfer_syntax = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless]
        self.ae = ae
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        self.received.append(event.dataset)
        return 0

    def close(self):
        self.server.shutdown()


def test_move_to_a_known_destination_and_unknown_ones(pacs, studies, move_port):
    rx = _Receiver(move_port)
    try:
        ct = studies["ct"]
        _, assoc = _assoc(pacs, [StudyRootQueryRetrieveInformationModelMove])
        ident = q("STUDY", StudyInstanceUID=ct[0].StudyInstanceUID)
        results = [s.Status for s, _ in assoc.send_c_move(ident, SCU, StudyRootQueryRetrieveInformationModelMove)]
        assert results[-1] == 0
        assert sorted(d.SOPInstanceUID for d in rx.received) == sorted(d.SOPInstanceUID for d in ct)
        results = [s.Status for s, _ in assoc.send_c_move(ident, "NOWHERE", StudyRootQueryRetrieveInformationModelMove)]
        assert results == [0xA801]
        assoc.release()
        rx.received.clear()
        r = run(need("movescu"), "-aet", SCU, "-aec", "YILIAN", "-aem", SCU, "-S", "-k", "QueryRetrieveLevel=SERIES",
                "-k", f"StudyInstanceUID={studies['cr'][0].StudyInstanceUID}",
                "-k", f"SeriesInstanceUID={studies['cr'][0].SeriesInstanceUID}", "127.0.0.1", dicom_port(pacs))
        assert r.returncode == 0, r.stderr
        assert [d.SOPInstanceUID for d in rx.received] == [studies["cr"][0].SOPInstanceUID]
        assert rx.received[0].file_meta.TransferSyntaxUID == RLELossless  # sent as stored
    finally:
        rx.close()


def test_get_with_pynetdicom_and_getscu(pacs, studies, tmp_path):
    mr = studies["mr"]
    ae = AE(ae_title=SCU)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(MRImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    got: list[Dataset] = []

    def on_store(event):
        got.append(event.dataset)
        return 0

    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN", ext_neg=[build_role(MRImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store), *CLIENT_HANDLERS])
    assert assoc.is_established
    ident = q("STUDY", PatientID="P100", StudyInstanceUID=mr[0].StudyInstanceUID)
    statuses = [s.Status for s, _ in assoc.send_c_get(ident, PatientRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert statuses[-1] == 0
    assert sorted(d.SOPInstanceUID for d in got) == sorted(d.SOPInstanceUID for d in mr)
    ct = studies["ct"]
    r = run(need("getscu"), "-aet", SCU, "-aec", "YILIAN", "-S", "-k", "QueryRetrieveLevel=SERIES",
            "-k", f"StudyInstanceUID={ct[0].StudyInstanceUID}", "-k", f"SeriesInstanceUID={ct[0].SeriesInstanceUID}",
            "-od", tmp_path, "127.0.0.1", dicom_port(pacs))
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3


def test_storescu_sends_a_folder(pacs, tmp_path):
    ds = data.series(4, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="P300", name="Zhao^Wu")
    data.write(ds, tmp_path / "in")
    r = run(need("storescu"), "-aet", SCU, "-aec", "YILIAN", "+sd", "+r", "127.0.0.1", dicom_port(pacs), tmp_path / "in")
    assert r.returncode == 0, r.stderr
    found = find(pacs, q("IMAGE", StudyInstanceUID=ds[0].StudyInstanceUID, SOPInstanceUID=""))
    assert len(found) == 4


def test_association_sockets_have_tcp_nodelay(pacs):
    _, assoc = _assoc(pacs, [Verification])
    try:
        server = pacs.hub.dicom.server.server
        # the acceptor side of this association (earlier ones may still be closing)
        local_port = assoc.dul.socket.socket.getsockname()[1]

        def accepted():  # the acceptor marks itself established just after it sent the A-ASSOCIATE-AC
            return [a for a in server.active_associations
                    if a.is_established and a.dul.socket.socket is not None
                    and a.dul.socket.socket.getpeername()[1] == local_port]

        from tests.dicom.conftest import poll

        accepted = poll(accepted, timeout=5, interval=0.01)
        assert len(accepted) == 1
        sock = accepted[0].dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


def test_store_and_find_are_audited(pacs, fhir):
    from tests.dicom.conftest import poll

    uid = generate_uid()
    assert store(pacs, data.series(2, study_uid=uid, series_uid=generate_uid(), patient_id="AU-1")) == [0, 0]
    find(pacs, q("STUDY", StudyInstanceUID=uid, PatientID=""))

    def events(code):
        entries = fhir.get("/AuditEvent", params={"_count": 1000}).json().get("entry", [])
        return [e["resource"] for e in entries if e["resource"].get("type", {}).get("code") == code
                and any(en.get("what", {}).get("identifier", {}).get("value") == f"urn:oid:{uid}"
                        for en in e["resource"].get("entity", []))]

    imports = poll(lambda: events("110107"))
    assert imports and imports[0]["agent"][0]["who"]["identifier"]["value"] == f"ae:{SCU}"
    assert poll(lambda: events("110112"))
