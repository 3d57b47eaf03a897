"""The event-driven association loops (adapters.dicom.reactor) and retrieval of stored objects as stored:
associations still end as they should (release, abort, a vanished peer, the network and ACSE
timeouts), a response is not taken from a waiting sender by its reactor, and C-GET/C-MOVE
sub-operations carry the stored bytes."""

from __future__ import annotations

import gc
import socket
import threading
import time

import pytest
import pynetdicom
from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from adapters.dicom import reactor
from tests.dicom import data
from tests.dicom.conftest import CLIENT_HANDLERS, SCU, dicom_port, poll
from tests.dicom.test_dimse import _Receiver, _assoc, q, store


def _accepted(pacs, assoc):
    """The hub's side of the client association ``assoc``."""
    local_port = assoc.dul.socket.socket.getsockname()[1]
    server = pacs.hub.dicom.server.server
    found = [a for a in server.active_associations
             if a.dul.socket is not None and a.dul.socket.socket is not None
             and a.dul.socket.socket.getpeername()[1] == local_port]
    assert len(found) == 1
    return found[0]


def _ended(assoc) -> bool:
    return not assoc.is_alive() and not assoc.dul.is_alive()


def test_the_installed_pynetdicom_is_the_one_adjusted():
    # the loops in adapters.dicom.reactor are pynetdicom 3.0's: a new version must be re-read first
    assert pynetdicom.__version__.startswith(reactor.SUPPORTED_VERSIONS)
    assert reactor.SUPPORTED


def test_accepted_associations_are_event_driven_and_answer_many_requests(pacs):
    _, assoc = _assoc(pacs, [Verification])
    assert assoc.is_established
    server_side = _accepted(pacs, assoc)
    assert isinstance(server_side, reactor.EventDrivenAssociation)
    assert isinstance(server_side.dul, reactor.EventDrivenDUL)
    assert [assoc.send_c_echo().Status for _ in range(300)] == [0] * 300
    assoc.release()
    assert assoc.is_released


def test_a_repeated_association_request_is_decoded_once_and_negotiated_afresh(pacs):
    reactor._associate_rq.cache_clear()
    find = (StudyRootQueryRetrieveInformationModelFind, [ImplicitVRLittleEndian])
    accepted = []
    for contexts in ([Verification], [Verification], [find], [Verification], [find]):
        _, assoc = _assoc(pacs, contexts)
        assert assoc.is_established
        accepted.append([cx.abstract_syntax for cx in assoc.accepted_contexts])
        if contexts == [Verification]:
            assert assoc.send_c_echo().Status == 0
        else:
            assert [status.Status for status, _ in assoc.send_c_find(q("STUDY", PatientID="NOBODY"), find[0])] == [0]
        assoc.release()
    assert accepted == [[Verification], [Verification], [find[0]], [Verification], [find[0]]]
    info = reactor._associate_rq.cache_info()
    assert (info.misses, info.hits) == (2, 3)  # two distinct requests, each decoded once


def test_the_next_association_is_built_ahead_and_not_used_once_a_setting_changed(pacs):
    server = pacs.hub.dicom.server.server
    prepared = server._yilian_prepared
    _, first = _assoc(pacs, [Verification])
    first.release()
    assert poll(lambda: prepared._spare is not None)  # built as that association ended
    spare = prepared._spare[0]
    _, second = _assoc(pacs, [Verification])
    assert _accepted(pacs, second) is spare
    assert [second.send_c_echo().Status for _ in range(3)] == [0, 0, 0]
    second.release()
    assert poll(lambda: prepared._spare is not None)
    stale = prepared._spare[0]
    ae = pacs.hub.dicom.server.ae
    saved = ae.network_timeout
    ae.network_timeout = 42.0
    try:
        _, third = _assoc(pacs, [Verification])
        server_side = _accepted(pacs, third)
        assert server_side is not stale and server_side.network_timeout == 42.0
        assert third.send_c_echo().Status == 0
        third.release()
    finally:
        ae.network_timeout = saved


def test_the_association_built_ahead_waits_in_its_own_thread_uncounted_and_ends_unused_when_discarded():
    ae = AE(ae_title="AHEAD")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_CONN_OPEN, reactor.on_conn_open)])
    prepared = None
    try:
        reactor.prepare_associations_ahead(server)
        prepared = server._yilian_prepared
        spare = prepared._spare[0]
        assert spare.is_alive() and spare.name == "PreparedAssociation"  # started, waiting
        assert spare not in ae.active_associations and spare not in server.active_associations
        client = AE(ae_title=SCU)
        client.add_requested_context(Verification)
        assoc = client.associate("127.0.0.1", server.server_address[1], ae_title="AHEAD", evt_handlers=CLIENT_HANDLERS)
        assert assoc.is_established
        assert server.active_associations == [spare] and ae.active_associations == [spare] and spare.ae is ae
        assert [assoc.send_c_echo().Status for _ in range(3)] == [0, 0, 0]
        assoc.release()
        assert poll(lambda: not spare.is_alive() and prepared._spare is not None)
        stale = prepared._spare[0]
        ae.dimse_timeout = 7  # a changed setting: the next connection does not take it, and it ends
        assoc = client.associate("127.0.0.1", server.server_address[1], ae_title="AHEAD", evt_handlers=CLIENT_HANDLERS)
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assert poll(lambda: not stale.is_alive())
        assert [a.dimse_timeout for a in server.active_associations] == [7]
        assoc.release()
        assert poll(lambda: prepared._spare is not None)
    finally:
        server.shutdown()
    last = prepared._spare  # none left after the server closed: the last one waiting ended unused
    assert last is None
    assert poll(lambda: not [t for t in threading.enumerate() if t.name == "PreparedAssociation"
                             and getattr(t, "_server", None) is server])


def test_the_acceptor_runs_no_full_collection_between_associations(pacs, monkeypatch):
    # pynetdicom's acceptor ran gc.collect() every 60th turn of its loop (about 110 ms of CPU with
    # the GIL held in the hub's process); 61 associations make at least 61 turns
    collected_by = []
    collect = gc.collect

    def recording_collect(*args):
        collected_by.append(threading.current_thread().name)
        return collect(*args)

    monkeypatch.setattr(gc, "collect", recording_collect)
    for _ in range(61):
        _, assoc = _assoc(pacs, [Verification])
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert assoc.is_released
    server = pacs.hub.dicom.server.server
    assert poll(lambda: not server.active_associations, timeout=10)  # ended associations still leave
    assert [name for name in collected_by if name.startswith("AcceptorServer")] == []


def test_release_ends_both_threads_and_closes_the_wakeup(pacs):
    _, assoc = _assoc(pacs, [Verification])
    server_side = _accepted(pacs, assoc)
    released = []
    server_side.bind(evt.EVT_RELEASED, lambda event: released.append(True))
    assoc.release()
    assert assoc.is_released
    assert poll(lambda: _ended(server_side), timeout=10)
    assert released == [True] and server_side.is_released
    assert server_side.dul._wake_r.fileno() == -1  # closed by the stopping DUL thread, not left to GC


def test_abort_by_the_peer_ends_the_association(pacs):
    _, assoc = _assoc(pacs, [Verification])
    server_side = _accepted(pacs, assoc)
    assert assoc.send_c_echo().Status == 0
    assoc.abort()
    assert poll(lambda: _ended(server_side), timeout=10)
    assert server_side.is_aborted and not server_side.is_established


def test_a_peer_that_vanishes_ends_the_association(pacs):
    _, assoc = _assoc(pacs, [Verification])
    server_side = _accepted(pacs, assoc)
    assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)  # no A-RELEASE, no A-ABORT: the connection drops
    assert poll(lambda: _ended(server_side), timeout=10)
    assert not server_side.is_established
    assoc.abort()


@pytest.fixture
def short_timeouts(pacs):
    ae = pacs.hub.dicom.server.ae
    saved = ae.network_timeout, ae.acse_timeout
    ae.network_timeout, ae.acse_timeout = 0.5, 0.5
    yield
    ae.network_timeout, ae.acse_timeout = saved


def test_the_network_timeout_still_aborts_an_idle_association(pacs, short_timeouts):
    aborted = []
    ae = AE(ae_title=SCU)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN",
                         evt_handlers=[(evt.EVT_ABORTED, lambda event: aborted.append(True)), *CLIENT_HANDLERS])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    # nothing more is sent: the hub's network timeout (0.5 s) aborts the association
    assert poll(lambda: assoc.is_aborted, timeout=10)
    assert aborted


def test_the_acse_timeout_closes_a_connection_that_never_asks(pacs, short_timeouts):
    with socket.create_connection(("127.0.0.1", dicom_port(pacs)), timeout=10) as s:
        assert s.recv(1) == b""  # no A-ASSOCIATE-RQ within the ACSE timeout: the hub hangs up


class _HeldUpCheckpoint(threading.Event):
    """A requestor's reactor checkpoint that holds the reactor thread up for a moment each time it
    passes it, as when the OS or the GIL gives its core to another thread."""

    def __init__(self, owner: threading.Thread):
        super().__init__()
        self.set()
        self._owner = owner

    def wait(self, timeout=None) -> bool:
        passed = super().wait(timeout)
        if threading.current_thread() is self._owner:
            time.sleep(REACTOR_HOLD_S)
        return passed


REACTOR_HOLD_S = 0.1  # longer than the hub takes to answer a C-STORE
SENDER_HOLD_S = 0.2   # longer than the reactor's hold


def hold_up_requestors(monkeypatch) -> None:
    """Widen pynetdicom 3.0's race for every requestor association created from now on in this
    process (the hub's accepted ones are left alone). Its reactor counts as paused until just
    after its checkpoint, so a ``send_c_store`` right after the previous one sends its request
    while the reactor is on its way to the message queue. The reactor is held up there
    (:class:`_HeldUpCheckpoint`) and the sender between sending and waiting for the response: the
    hub's response comes first, then the reactor's look at the queue, then the sender's."""
    init = Association.__init__
    send_msg = DIMSEServiceProvider.send_msg

    def held_up_init(self, ae, mode):
        init(self, ae, mode)
        if self.is_requestor:
            self._reactor_checkpoint = _HeldUpCheckpoint(self)

    def held_up_send_msg(self, primitive, context_id):
        send_msg(self, primitive, context_id)
        if self.assoc.is_requestor:
            time.sleep(SENDER_HOLD_S)

    monkeypatch.setattr(Association, "__init__", held_up_init)
    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", held_up_send_msg)


def _store_each(pacs, datasets, handlers) -> list[int | None]:
    """C-STORE each instance with a 1 s DIMSE timeout; None for a response that never came."""
    ae = AE(ae_title=SCU)
    ae.dimse_timeout = 1
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN", evt_handlers=handlers)
    assert assoc.is_established
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else None)
            if not assoc.is_established:
                break                             # pynetdicom aborts after a DIMSE timeout
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def _ct_series(n: int):
    return data.series(n, study_uid=generate_uid(), series_uid=generate_uid())  # CT, Explicit VR LE


def test_pynetdicoms_own_loop_loses_a_response_when_its_reactor_is_held_up(pacs, monkeypatch):
    # the control for the test below: the held-up reactor does reproduce pynetdicom's race
    hold_up_requestors(monkeypatch)
    assert None in _store_each(pacs, _ct_series(5), handlers=[])


def test_a_held_up_event_driven_reactor_leaves_every_response_to_the_sender(pacs, monkeypatch):
    hold_up_requestors(monkeypatch)
    assert _store_each(pacs, _ct_series(10), handlers=CLIENT_HANDLERS) == [0] * 10


def _file_dataset_bytes(path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information."""
    with open(path, "rb") as f:
        read_preamble(f, False)
        _read_file_meta_info(f)
        return f.read()


@pytest.fixture(scope="module")
def ct40(pacs):
    ct = data.series(40, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="P900", name="Sun^Li",
                     size=64)
    assert store(pacs, ct) == [0] * 40
    blobs = pacs.hub.dicom.store.blobs
    from hub.dicom import index
    from hub.storage.db import read_tx
    with read_tx(pacs.hub.dicom.store.engine) as conn:
        rows = index.instances(conn, level="STUDY", keys={"StudyInstanceUID": ct[0].StudyInstanceUID})
    stored = {r.sop_uid: _file_dataset_bytes(blobs.local_path(r.blob_key)) for r in rows}
    assert len(stored) == 40
    return ct, stored


def _received_bytes(event) -> bytes:
    """The data set bytes a C-STORE request carried (the hub, in this process, has pynetdicom
    write received data sets to a file)."""
    if _config.STORE_RECV_CHUNKED_DATASET:
        return _file_dataset_bytes(event.dataset_path)
    return event.request.DataSet.getvalue()


def _get(pacs, ident, transfer_syntaxes):
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event):
        received[event.request.AffectedSOPInstanceUID] = (event.context.transfer_syntax, _received_bytes(event))
        return 0

    ae = AE(ae_title=SCU)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, transfer_syntaxes)
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store), *CLIENT_HANDLERS])
    assert assoc.is_established
    statuses = [s.Status for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    return statuses, received


@pytest.fixture
def decodes(monkeypatch):
    """How often the hub decodes a stored object for sending (its SCP runs in this process)."""
    from hub.dicom import scp
    calls = []

    def counting_dcmread(*args, **kwargs):
        calls.append(args[0])
        return dcmread(*args, **kwargs)

    monkeypatch.setattr(scp, "dcmread", counting_dcmread)
    return calls


def test_c_get_sends_the_stored_bytes(pacs, ct40, decodes):
    ct, stored = ct40
    statuses, received = _get(pacs, q("STUDY", StudyInstanceUID=ct[0].StudyInstanceUID), [ExplicitVRLittleEndian])
    assert statuses[-1] == 0
    assert {uid: b for uid, (_, b) in received.items()} == stored  # every sub-operation, byte for byte
    assert decodes == []  # streamed from the blob store, not decoded and re-encoded


def test_c_get_prefers_the_stored_syntax_among_the_uncompressed_ones_proposed(pacs, ct40, decodes):
    # one context proposing both (as dcmtk's getscu does): Explicit VR, as stored, is accepted
    ct, stored = ct40
    statuses, received = _get(pacs, q("STUDY", StudyInstanceUID=ct[0].StudyInstanceUID),
                              [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    assert statuses[-1] == 0
    assert {ts for ts, _ in received.values()} == {ExplicitVRLittleEndian}
    assert {uid: b for uid, (_, b) in received.items()} == stored
    assert decodes == []


def test_c_get_converts_when_only_another_uncompressed_syntax_is_accepted(pacs, ct40, decodes):
    ct, stored = ct40
    statuses, received = _get(pacs, q("STUDY", StudyInstanceUID=ct[0].StudyInstanceUID), [ImplicitVRLittleEndian])
    assert statuses[-1] == 0
    assert sorted(received) == sorted(stored)
    assert {ts for ts, _ in received.values()} == {ImplicitVRLittleEndian}
    assert len(decodes) == 40  # these had to be decoded for pynetdicom to re-encode them


def test_c_move_of_many_instances_delivers_every_one(pacs, ct40, move_port, decodes):
    ct, stored = ct40
    rx = _Receiver(move_port)
    raw: dict[str, bytes] = {}
    rx.server.bind(evt.EVT_C_STORE, lambda event: raw.__setitem__(event.request.AffectedSOPInstanceUID,
                                                                  _received_bytes(event)) or 0)
    try:
        _, assoc = _assoc(pacs, [StudyRootQueryRetrieveInformationModelMove])
        ident = q("STUDY", StudyInstanceUID=ct[0].StudyInstanceUID)
        results = [s for s, _ in assoc.send_c_move(ident, SCU, StudyRootQueryRetrieveInformationModelMove)]
        assoc.release()
        assert results[-1].Status == 0
        assert results[-1].NumberOfCompletedSuboperations == 40
        assert raw == stored
        assert decodes == []
    finally:
        rx.close()


def test_p_data_of_an_established_association_is_written_without_the_dul_queue(pacs):
    _, assoc = _assoc(pacs, [Verification])
    server_side = _accepted(pacs, assoc)
    queued = []
    for dul in (assoc.dul, server_side.dul):
        put = dul.to_provider_queue.put

        def recording_put(item, block=True, timeout=None, put=put):
            queued.append(type(item).__name__)
            put(item, block, timeout)

        dul.to_provider_queue.put = recording_put
    try:
        assert [assoc.send_c_echo().Status for _ in range(50)] == [0] * 50
        assert "P_DATA" not in queued  # requests and responses both went straight to the socket
    finally:
        assoc.release()
    assert "A_RELEASE" in queued  # the release still goes through the DUL's state machine
    assert poll(lambda: _ended(assoc))


def test_context_lookups_are_remembered_once_established_and_failures_still_raise(pacs):
    _, assoc = _assoc(pacs, [Verification])
    try:
        stock = Association._get_valid_context(assoc, Verification, "", "scu")
        first = assoc._get_valid_context(Verification, "", "scu")
        assert first is stock and assoc._get_valid_context(Verification, "", "scu") is first
        assert len(assoc._valid_contexts) == 1
        for _ in range(2):
            with pytest.raises(ValueError):
                assoc._get_valid_context(CTImageStorage, "", "scu")
        assert len(assoc._valid_contexts) == 1
    finally:
        assoc.release()


def test_an_accepted_association_runs_its_dul_in_its_own_thread(pacs):
    # no DUL thread: the association's thread reads and acts on the PDUs itself
    _, assoc = _assoc(pacs, [Verification])
    server_side = _accepted(pacs, assoc)
    assert server_side.dul._one_thread and server_side.dul.ident is None
    assert not [t for t in threading.enumerate() if t is server_side.dul]
    assert [assoc.send_c_echo().Status for _ in range(20)] == [0] * 20
    assoc.release()
    assert assoc.is_released
    assert poll(lambda: _ended(server_side), timeout=10)


def test_a_c_cancel_stops_a_c_find_of_an_association_run_in_one_thread(pacs, monkeypatch):
    from hub.dicom import find_encoding
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

    series_uid = generate_uid()
    assert store(pacs, data.series(30, study_uid=generate_uid(), series_uid=series_uid, patient_id="P901")) == [0] * 30
    response = find_encoding.ResponsePlan.response

    def slow_response(self, row):
        time.sleep(0.02)  # a slow answer: the C-CANCEL arrives while the hub still has rows to send
        return response(self, row)

    monkeypatch.setattr(find_encoding.ResponsePlan, "response", slow_response)
    _, assoc = _assoc(pacs, [Find])
    assert _accepted(pacs, assoc).dul._one_thread
    statuses = []
    try:
        for status, _ in assoc.send_c_find(q("IMAGE", SeriesInstanceUID=series_uid, SOPInstanceUID=""), Find,
                                           msg_id=9):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(9, assoc.accepted_contexts[0].context_id)
    finally:
        assoc.release()
    assert statuses[0] == 0xFF00 and statuses[-1] == 0xFE00
    assert 1 < len(statuses) < 31  # stopped before the 30 matches were sent


def test_a_failing_action_aborts_an_association_run_in_one_thread(pacs, monkeypatch):
    _, assoc = _assoc(pacs, [Verification])
    server_side = _accepted(pacs, assoc)

    def fail(primitive):
        raise RuntimeError("a P-DATA that cannot be taken")

    monkeypatch.setattr(server_side.dimse, "receive_primitive", fail)
    # (a C-ECHO the codec answers as it is read never reaches receive_primitive)
    monkeypatch.setattr(server_side.dimse, "echo_reply_pdu", lambda pdu: None)
    started = time.monotonic()
    assoc.send_c_echo()  # the hub answers with an A-ABORT, not silence until a timeout
    assert poll(lambda: assoc.is_aborted and _ended(server_side), timeout=10)
    assert server_side.is_aborted and time.monotonic() - started < 10
