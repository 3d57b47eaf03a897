"""C-GET / C-MOVE progress: pending responses now and then, not one per sub-operation (PS3.4
C.4.2.3.1, C.4.3.3.1 make them optional), with the final response's counts (completed, failed,
warning, remaining on a cancel) those of every sub-operation; through pynetdicom clients and
dcmtk's getscu / movescu."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet as Get,
    StudyRootQueryRetrieveInformationModelMove as Move,
)

from hub.dicom import scp
from tests.dicom import data
from tests.dicom.conftest import CLIENT_HANDLERS, SCU, dicom_port, need, run
from tests.dicom.test_dimse import _Receiver, _assoc, q, store

COUNT = 40


@pytest.fixture(scope="module")
def series(pacs):
    study_uid, series_uid = generate_uid(), generate_uid()
    ct = data.series(COUNT, study_uid=study_uid, series_uid=series_uid, patient_id="P950", name="Hu^Jun", size=64)
    assert store(pacs, ct) == [0] * COUNT
    return study_uid, series_uid


@pytest.fixture
def one_progress_report(monkeypatch):
    """A progress interval longer than any test: exactly one pending response, the first."""
    monkeypatch.setattr(scp, "RETRIEVE_PROGRESS_INTERVAL_S", 3600.0)


def _get(pacs, study_uid, store_status=lambda n: 0, msg_id=1):
    """(responses, SOP Instance UIDs received) of a C-GET of the study; ``store_status(n)`` is the
    client's answer to its ``n``-th C-STORE (0-based), or an action taking the association."""
    received = []

    def on_store(event):
        n = len(received)
        received.append(event.request.AffectedSOPInstanceUID)
        status = store_status(n)
        return status(event) if callable(status) else status

    ae = AE(ae_title=SCU)
    ae.add_requested_context(Get)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store), *CLIENT_HANDLERS])
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(q("STUDY", StudyInstanceUID=study_uid), Get, msg_id=msg_id))
    finally:
        assoc.release()
    return responses, received


def test_a_c_get_reports_progress_once_and_counts_every_sub_operation(pacs, series, one_progress_report):
    responses, received = _get(pacs, series[0])
    statuses = [s.Status for s, _ in responses]
    assert statuses == [0xFF00, 0x0000]  # pynetdicom sent 40 pending responses
    assert responses[0][0].NumberOfRemainingSuboperations == COUNT - 1  # the first sub-operation's
    final = responses[-1][0]
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
            final.NumberOfWarningSuboperations) == (COUNT, 0, 0)
    assert len(set(received)) == COUNT


def test_failed_sub_operations_are_counted_and_listed_in_the_final_response(pacs, series, one_progress_report):
    failing = {3, 17, 29}
    responses, received = _get(pacs, series[0], lambda n: 0xA700 if n in failing else (0xB000 if n == 5 else 0))
    assert [s.Status for s, _ in responses] == [0xFF00, 0xB000]
    final, identifier = responses[-1]
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
            final.NumberOfWarningSuboperations) == (COUNT - 4, 3, 1)
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(received[n] for n in failing)


def test_a_c_cancel_of_a_c_get_is_honoured_between_progress_reports(pacs, series, one_progress_report):
    def cancel_at_the_tenth(event):
        event.assoc.send_c_cancel(7, event.assoc.accepted_contexts[0].context_id)
        return 0

    responses, received = _get(pacs, series[0], lambda n: cancel_at_the_tenth if n == 9 else 0, msg_id=7)
    statuses = [s.Status for s, _ in responses]
    assert statuses[0] == 0xFF00 and statuses[-1] == 0xFE00 and len(statuses) == 2
    final = responses[-1][0]
    assert final.NumberOfCompletedSuboperations == len(received) < COUNT
    assert final.NumberOfRemainingSuboperations == COUNT - len(received)


def test_progress_is_reported_again_once_the_interval_has_passed(pacs, series, monkeypatch):
    monkeypatch.setattr(scp, "RETRIEVE_PROGRESS_INTERVAL_S", 0.0)  # every sub-operation, as pynetdicom
    responses, _ = _get(pacs, series[0])
    assert [s.Status for s, _ in responses] == [0xFF00] * COUNT + [0x0000]
    assert [s.NumberOfRemainingSuboperations for s, _ in responses[:-1]] == list(range(COUNT - 1, -1, -1))


def test_a_c_move_reports_progress_once_and_counts_every_sub_operation(pacs, series, move_port,
                                                                       one_progress_report):
    rx = _Receiver(move_port)
    try:
        _, assoc = _assoc(pacs, [Move])
        responses = [s for s, _ in assoc.send_c_move(q("STUDY", StudyInstanceUID=series[0]), SCU, Move)]
        assoc.release()
    finally:
        rx.close()
    assert [s.Status for s in responses] == [0xFF00, 0x0000]
    assert (responses[-1].NumberOfCompletedSuboperations, responses[-1].NumberOfFailedSuboperations,
            responses[-1].NumberOfWarningSuboperations) == (COUNT, 0, 0)
    assert len({d.SOPInstanceUID for d in rx.received}) == COUNT


def _dcmtk_keys(series):
    return ["-S", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={series[0]}",
            "-k", f"SeriesInstanceUID={series[1]}"]


def test_getscu_and_movescu_get_one_progress_report_and_the_final_counts(pacs, series, move_port, tmp_path,
                                                                         one_progress_report):
    r = run(need("getscu"), "-v", "-aet", SCU, "-aec", "YILIAN", *_dcmtk_keys(series), "-od", tmp_path,
            "127.0.0.1", dicom_port(pacs))
    assert r.returncode == 0, r.stderr
    log = r.stdout + r.stderr
    assert len(list(tmp_path.iterdir())) == COUNT
    assert log.count("(Pending)") == 1, log
    assert re.search(rf"Completed Suboperations\s*:\s*{COUNT}\b", log), log
    rx = _Receiver(move_port)
    try:
        r = run(need("movescu"), "-d", "-aet", SCU, "-aec", "YILIAN", "-aem", SCU, *_dcmtk_keys(series),
                "127.0.0.1", dicom_port(pacs))
    finally:
        rx.close()
    assert r.returncode == 0, r.stderr
    log = r.stdout + r.stderr  # (-d: each response dumped)
    assert len(re.findall(r"DIMSE Status\s*:\s*0xff00", log)) == 1, log
    assert re.search(rf"Completed Suboperations\s*:\s*{COUNT}\b", log), log
    assert len({d.SOPInstanceUID for d in rx.received}) == COUNT
