"""The association a C-MOVE opens to its destination runs its DUL in the C-MOVE's own thread
(adapters.dicom.reactor.requests_run_in_calling_thread): no DUL thread; it is requested,
carries every sub-operation and is released from that thread, and a destination that aborts
midway ends the C-MOVE with the counts so far instead of a hang."""

from __future__ import annotations

import threading

import pytest
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

from tests.dicom import data
from tests.dicom.conftest import SCU, poll
from tests.dicom.test_dimse import _Receiver, _assoc, q, store

COUNT = 12


@pytest.fixture(scope="module")
def study_uid(pacs):
    uid = generate_uid()
    assert store(pacs, data.series(COUNT, study_uid=uid, series_uid=generate_uid(), patient_id="P960")) == [0] * COUNT
    return uid


def _hubs_requested_associations() -> list[Association]:
    return [t for t in threading.enumerate()
            if isinstance(t, Association) and t.is_requestor and t.requestor.ae_title == "YILIAN"]


def _move(pacs, study_uid):
    _, assoc = _assoc(pacs, [Move])
    try:
        return [s for s, _ in assoc.send_c_move(q("STUDY", StudyInstanceUID=study_uid), SCU, Move)]
    finally:
        assoc.release()


def _move_into_receiver(pacs, study_uid, move_port, on_store):
    """C-MOVE the study to a destination whose C-STORE handler is ``on_store(rx, event)``."""
    rx = _Receiver(move_port)
    rx.server.unbind(evt.EVT_C_STORE, rx._store)
    rx.server.bind(evt.EVT_C_STORE, lambda event: on_store(rx, event))
    try:
        return _move(pacs, study_uid), rx
    finally:
        rx.close()


def test_the_destination_association_runs_in_the_c_move_thread(pacs, study_uid, move_port):
    seen = []

    def on_store(rx, event):
        rx.received.append(event.dataset)
        seen.extend((a, a.dul._one_thread, a.dul.ident, a.dul._owner) for a in _hubs_requested_associations())
        return 0

    responses, rx = _move_into_receiver(pacs, study_uid, move_port, on_store)
    assert responses[-1].Status == 0 and responses[-1].NumberOfCompletedSuboperations == COUNT
    assert len(rx.received) == COUNT
    assert seen and len({id(a) for a, *_ in seen}) == 1  # one association for the C-MOVE
    destination, one_thread, dul_thread, owner = seen[0]
    assert one_thread and dul_thread is None  # no DUL thread was started for it
    assert owner is not threading.current_thread() and isinstance(owner, Association)  # the accepted one's
    assert destination.is_released
    assert poll(lambda: not destination.is_alive(), timeout=10)


def test_a_destination_that_aborts_midway_ends_the_c_move(pacs, study_uid, move_port):
    def abort_at_the_fifth(rx, event):
        rx.received.append(event.dataset)
        if len(rx.received) == 5:
            event.assoc.abort()
        return 0

    responses, _ = _move_into_receiver(pacs, study_uid, move_port, abort_at_the_fifth)
    final = responses[-1]
    assert final.Status in (0xA702, 0xB000)  # all or some sub-operations failed
    assert final.NumberOfCompletedSuboperations < COUNT
    assert final.NumberOfCompletedSuboperations + final.NumberOfFailedSuboperations == COUNT
    assert poll(lambda: not [a for a in _hubs_requested_associations() if a.is_alive()], timeout=10)
    # the hub serves the next C-MOVE as before
    rx = _Receiver(move_port)
    try:
        assert _move(pacs, study_uid)[-1].Status == 0
    finally:
        rx.close()
    assert len(rx.received) == COUNT


@pytest.mark.parametrize("destination", ["refuses the connection", "rejects the association"])
def test_a_destination_that_cannot_be_reached_fails_the_c_move_at_once(pacs, study_uid, move_port, destination):
    if destination == "refuses the connection":
        rx = None
        title = "FINDSCU"  # a known peer at 127.0.0.1:1, where nothing listens
    else:
        rx = _Receiver(move_port, title="ELSEWHERE")
        rx.ae.require_called_aet = True  # the hub calls it TESTSCU: rejected
        title = SCU
    try:
        _, assoc = _assoc(pacs, [Move])
        try:
            responses = [s for s, _ in assoc.send_c_move(q("STUDY", StudyInstanceUID=study_uid), title, Move)]
        finally:
            assoc.release()
    finally:
        if rx is not None:
            rx.close()
    assert [s.Status for s in responses] == [0xA801]  # Move destination unknown (PS3.4 C.4.2.1.4.1)
    assert poll(lambda: not [a for a in _hubs_requested_associations() if a.is_alive()], timeout=10)
