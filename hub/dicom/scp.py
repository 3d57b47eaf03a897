"""DIMSE services of the hub (pynetdicom): Verification, Storage, Query/Retrieve FIND/MOVE/GET.

PS3.4 Annex A (Verification), B (Storage: every storage SOP class, every transfer syntax
pydicom knows, stored as received), C (Query/Retrieve, Patient Root and Study Root, all four
levels). Callers are checked against the known AEs (title, and host when configured); C-MOVE
destinations must be known AEs (else 0xA801, PS3.4 C.4.2.1.4.1). Every association socket,
accepted or opened for a C-MOVE, gets TCP_NODELAY: a DIMSE response is often smaller than one
segment, and with Nagle's algorithm it waits for the peer's delayed ACK (about 40 ms).
"""

from __future__ import annotations

import logging
import socket
import threading
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from adapters.dicom import dimse_codec, reactor
from hub.dicom import find_encoding, index
from hub.dicom.attributes import QueryIdentifier, find_response
from hub.dicom.audit import dicom_event
from hub.dicom.matching import KEYS
from hub.dicom.peers import Peer, PeerRegistry
from hub.dicom.store import STATUS_OUT_OF_RESOURCES, DicomStore, StoreResult
from hub.errors import HubError, Unavailable
from hub.storage.db import read_tx

log = logging.getLogger("yilian.dicom")

NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.3 "Refused: Not authorized"
PENDING = 0xFF00
CANCEL = 0xFE00
UNABLE_TO_PROCESS = 0xC000
#: a C-GET / C-MOVE reports its progress (a pending response) at most this often, not after each
#: sub-operation (adapters.dicom.dimse_codec.FastCommandSets.retrieve_progress_interval)
RETRIEVE_PROGRESS_INTERVAL_S = 0.2
_QR_ROOTS = {
    PatientRootQueryRetrieveInformationModelFind: "P", StudyRootQueryRetrieveInformationModelFind: "S",
    PatientRootQueryRetrieveInformationModelMove: "P", StudyRootQueryRetrieveInformationModelMove: "S",
    PatientRootQueryRetrieveInformationModelGet: "P", StudyRootQueryRetrieveInformationModelGet: "S",
}


#: pynetdicom accepts, of the syntaxes a context proposes, the first in *this* list. Explicit VR
#: Little Endian first: it is what senders store with (dcmtk's storescu, pynetdicom, Orthanc), so a
#: C-GET requestor proposing several uncompressed syntaxes in one context (dcmtk's getscu) gets
#: the stored files as they are instead of each one decoded and re-encoded as Implicit VR
#: (pynetdicom's own order starts with Implicit VR Little Endian).
ACCEPTED_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                     *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian))]


def set_nodelay(event) -> None:
    """EVT_CONN_OPEN handler for every association, accepted or opened for C-MOVE: TCP_NODELAY on
    its socket, pynetdicom's polling loops made event-driven (:mod:`adapters.dicom.reactor`), and
    stored instances sent as stored (:class:`StoredInstance`)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not reactor.install(event.assoc, one_thread=True) and event.assoc.is_requestor:
        _leave_responses_to_sender(event.assoc)  # the event-driven reactor has no such race
    _send_stored_as_stored(event.assoc)


def _leave_responses_to_sender(assoc) -> None:
    """Work around a race in pynetdicom 3.0's requestor (only where :mod:`adapters.dicom.reactor` does
    not apply): ``send_c_store`` pauses the association's
    reactor thread by clearing an event and waiting for an ``_is_paused`` flag, but the flag is
    set *before* the reactor's wait, so the reactor can pass its checkpoint and take the C-STORE
    response off the queue (logged as "Received unexpected C-STORE service message"); the sender
    then waits for the DIMSE timeout and every further sub-operation fails. Once responses come
    back quickly (TCP_NODELAY) this happens within a few hundred instances. The reactor's
    non-blocking read is made to leave responses on the queue for the waiting sender."""
    dimse = assoc.dimse
    original = dimse.get_msg

    def get_msg(block: bool = False):
        if not block:
            _, msg = dimse.peek_msg()
            if msg is not None and not msg.is_valid_request:
                return None, None
        return original(block)

    dimse.get_msg = get_msg


class StoredInstance(Dataset):
    """A C-STORE sub-operation of a C-GET or C-MOVE: the stored object, by its blob. pynetdicom's
    retrieve services accept only datasets (and read SOP Class/Instance UID from them for their
    failure lists); :func:`_send_stored_as_stored` turns it back into the stored file, which
    pynetdicom streams from disk as it is (``STORE_SEND_CHUNKED_DATASET``): nothing is decoded
    or re-encoded."""

    def __init__(self, row: index.InstanceRow, store: DicomStore):
        super().__init__()
        # the index's own UIDs need no validation (pydicom's checks were a tenth of a sub-operation)
        self[0x00080016] = DataElement(0x00080016, "UI", row.sop_class, validation_mode=config.IGNORE)
        self[0x00080018] = DataElement(0x00080018, "UI", row.sop_uid, validation_mode=config.IGNORE)
        object.__setattr__(self, "_yilian_row", row)
        object.__setattr__(self, "_yilian_store", store)

    def for_sending(self, assoc) -> Dataset | Path:
        """The stored file's path when ``assoc`` has a context for the stored transfer syntax;
        otherwise (another syntax accepted: pynetdicom converts between the uncompressed ones, or
        the blob is not a local file) the object decoded lazily, as before."""
        row, store = self._yilian_row, self._yilian_store
        path = store.blobs.local_path(row.blob_key)
        if path is not None:
            try:
                assoc._get_valid_context(row.sop_class, row.transfer_syntax, "scu", allow_conversion=False)
                return Path(path)
            except ValueError:
                return dcmread(path)
        return dcmread(BytesIO(store.blobs.read(row.blob_key)))


def _send_stored_as_stored(assoc) -> None:
    original = assoc.send_c_store

    send_file = getattr(assoc, "send_c_store_file", None)  # adapters.dicom.reactor's, when installed

    def send_c_store(dataset, *args, **kwargs):
        if isinstance(dataset, StoredInstance):
            dataset = dataset.for_sending(assoc)
            if send_file is not None and isinstance(dataset, Path):
                return send_file(dataset, *args, **kwargs)
        return original(dataset, *args, **kwargs)

    assoc.send_c_store = send_c_store


@lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    try:
        return frozenset(ai[4][0] for ai in socket.getaddrinfo(host, None))
    except OSError:
        return frozenset({host})


#: pynetdicom keeps these as module settings, for every AE in the process: receive C-STORE data
#: sets straight into a file and send stored files without decoding them (store as received,
#: bounded memory); identifiers hold patient data: never logged; no per-PDU / per-DIMSE-message
#: log handlers (their records are below the level logged), which also lets
#: adapters.dicom.dimse_codec take every DIMSE-C message.
_HUB_PYNETDICOM_SETTINGS = {"STORE_RECV_CHUNKED_DATASET": True, "STORE_SEND_CHUNKED_DATASET": True,
                            "LOG_REQUEST_IDENTIFIERS": False, "LOG_RESPONSE_IDENTIFIERS": False,
                            "LOG_HANDLER_LEVEL": "none"}
_settings_lock = threading.Lock()
_servers_running = 0
_settings_before: tuple[dict, int] | None = None


def _take_pynetdicom_settings() -> None:
    """Switch pynetdicom to the hub's settings while any hub SCP runs; the process's own values
    come back when the last one stops (another pynetdicom SCP in the process, such as the
    front-end processor's, expects pynetdicom's defaults: data sets in memory, not files)."""
    global _servers_running, _settings_before
    with _settings_lock:
        if _servers_running == 0:
            _settings_before = ({name: getattr(_config, name) for name in _HUB_PYNETDICOM_SETTINGS},
                                logging.getLogger("pynetdicom").level)
        _servers_running += 1
        for name, value in _HUB_PYNETDICOM_SETTINGS.items():
            setattr(_config, name, value)
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _give_back_pynetdicom_settings() -> None:
    global _servers_running, _settings_before
    with _settings_lock:
        _servers_running -= 1
        if _servers_running == 0 and _settings_before is not None:
            values, level = _settings_before
            for name, value in values.items():
                setattr(_config, name, value)
            logging.getLogger("pynetdicom").setLevel(level)
            _settings_before = None


class DicomServer:
    def __init__(self, settings, engine, store: DicomStore, peers: PeerRegistry, *, audit=None,
                 on_activity=None):
        self.settings = settings
        #: called at each DIMSE request served (C-ECHO aside) and at each association's end: the
        #: hub's background work after a burst (ImagingStudy sync) waits while associations work
        self.on_activity = on_activity or (lambda: None)
        self.engine = engine
        self.store = store
        self.peers = peers
        self.audit = audit
        self.server = None
        self.ae: AE | None = None
        self._direct_find = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        _take_pynetdicom_settings()
        self._direct_find = find_encoding.install()
        ae = AE(ae_title=self.settings.dicom_ae_title)
        ae.maximum_pdu_size = self.settings.dicom_max_pdu
        ae.require_called_aet = True
        ae.maximum_associations = 32
        for cx in AllStoragePresentationContexts:
            # scp_role: a C-GET requestor may take the storage SCP role (PS3.7 D.3.3.4)
            ae.add_supported_context(cx.abstract_syntax, ACCEPTED_SYNTAXES, scp_role=True, scu_role=False)
        ae.add_supported_context(Verification, ACCEPTED_SYNTAXES)
        for sop in _QR_ROOTS:
            ae.add_supported_context(sop, ACCEPTED_SYNTAXES)
        # C-ECHO: Success for any caller (PS3.4 A.4), answered by the command-set codec as it is read
        handlers = [(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_C_ECHO, dimse_codec.verification_success),
                    (evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find), (evt.EVT_C_MOVE, self._move),
                    (evt.EVT_C_GET, self._get),
                    (evt.EVT_RELEASED, self._association_end), (evt.EVT_ABORTED, self._association_end)]
        self.ae = ae
        reactor.requests_run_in_calling_thread(ae)  # a C-MOVE's association to its destination
        try:
            self.server = ae.start_server((self.settings.dicom_host, self.settings.dicom_port), block=False,
                                          evt_handlers=handlers)
        except BaseException:  # no server, so no stop() to give the process's settings back
            _give_back_pynetdicom_settings()
            raise
        self.server.contexts = _SharedContexts(self.server.contexts)
        reactor.without_forced_collections(self.server)
        reactor.accept_in_server_thread(self.server)
        reactor.prepare_associations_ahead(self.server, one_thread=True)  # as set_nodelay installs
        log.info("DICOM SCP %s listening on %s:%d", self.settings.dicom_ae_title, *self.address)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
            _give_back_pynetdicom_settings()

    # ------------------------------------------------------------------ checks
    def _caller(self, event) -> tuple[bool, Peer | None]:
        self.on_activity()
        title = event.assoc.requestor.ae_title.strip()
        address = event.assoc.requestor.address
        peer = self.peers.get(title)
        if peer is None:
            if self.settings.dicom_require_known_caller:
                log.warning("refused an unknown calling AE %r from %s", title, address)
                return False, None
            return True, None
        if self.settings.dicom_check_caller_host and address not in _addresses(peer.host):
            log.warning("refused calling AE %r: connects from %s, configured for %s", title, address, peer.host)
            return False, peer
        return True, peer

    def _audit(self, kind: str, event, studies: list[str], status: int = 200, **kw) -> None:
        if self.audit is None:
            return
        self.audit.record(dicom_event(kind, who=f"ae:{event.assoc.requestor.ae_title.strip()}",
                                      address=event.assoc.requestor.address, studies=studies, status=status,
                                      observer=f"dicom:{self.settings.dicom_ae_title}", **kw))

    # ------------------------------------------------------------------ services
    def _store(self, event):
        ok, peer = self._caller(event)
        if not ok:
            return NOT_AUTHORIZED
        try:
            result = self.store.ingest_path(Path(event.dataset_path), source_ae=event.assoc.requestor.ae_title.strip())
        except Unavailable as e:  # e.g. the database's write lock not free in time: the sender is to retry
            log.warning("C-STORE refused for now: %s", e.diagnostics)
            result = StoreResult(STATUS_OUT_OF_RESOURCES, "", "", "", comment="the archive is busy; retry later")
        if result.study_uid:
            # one Import AuditEvent per association and status, at its end (not one per instance)
            received = event.assoc.__dict__.setdefault("_yilian_received", {})
            received.setdefault(200 if result.status == 0 else 400, set()).add(result.study_uid)
        if result.status == 0 or not result.comment:
            return result.status
        rsp = Dataset()
        rsp.Status = result.status
        rsp.ErrorComment = result.comment[:64]
        return rsp

    def _association_end(self, event) -> None:
        self.on_activity()
        for status, studies in event.assoc.__dict__.pop("_yilian_received", {}).items():
            self._audit("import", event, sorted(studies), status=status)

    def _root(self, event) -> str:
        return _QR_ROOTS.get(event.request.AffectedSOPClassUID, "S")

    def _find(self, event):
        ok, _ = self._caller(event)
        if not ok:
            yield NOT_AUTHORIZED, None
            return
        ident = QueryIdentifier.from_request(event)
        level, keys = ident.level, ident.keys
        if level == "PATIENT" and self._root(event) == "S":
            yield 0xA900, None  # the Study Root model has no PATIENT level (PS3.4 C.6.2.1)
            return
        try:
            with read_tx(self.engine) as conn:
                rows = index.query(conn, level, keys, pn_case_insensitive=self.settings.dicom_pn_case_insensitive)
        except HubError as e:
            log.info("C-FIND refused: %s", e.diagnostics)
            yield 0xA900, None  # Identifier does not match SOP class (PS3.4 C.4.1.1.4)
            return
        if level == "IMAGE" and any(k not in KEYS for k in keys) and any(not r.get("_meta") for r in rows):
            for study in {r["StudyInstanceUID"] for r in rows if not r.get("_meta")}:
                self.store.fill_metadata(study)  # return keys from headers not filled in yet
            with read_tx(self.engine) as conn:
                rows = index.query(conn, level, keys, pn_case_insensitive=self.settings.dicom_pn_case_insensitive)
        # the first 100 studies named; the count says how many matched
        self._audit("query", event, [r["StudyInstanceUID"] for r in rows if r.get("StudyInstanceUID")][:100],
                    detail=f"C-FIND {level}: {len(rows)} match(es)")
        ae_title = self.settings.dicom_ae_title
        plan = find_encoding.ResponsePlan(ident, level, ae_title) if self._direct_find else None
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, plan.response(row) if plan else find_response(ident.dataset, row, level, ae_title)

    def _matches(self, event) -> list[index.InstanceRow]:
        ident = QueryIdentifier.from_request(event)
        with read_tx(self.engine) as conn:
            return index.instances(conn, level=ident.level, keys=ident.keys,
                                   pn_case_insensitive=self.settings.dicom_pn_case_insensitive)

    def _move(self, event):
        ok, _ = self._caller(event)
        dest = self.peers.get(event.move_destination.decode() if isinstance(event.move_destination, bytes)
                              else str(event.move_destination))
        if not ok or dest is None:
            if not ok:
                log.warning("C-MOVE refused for an unauthorized caller")
            else:
                log.warning("C-MOVE to an unknown destination AE %r", event.move_destination)
            yield None, None  # 0xA801 Move Destination unknown
            return
        try:
            rows = self._matches(event)
        except HubError as e:
            log.info("C-MOVE refused: %s", e.diagnostics)
            yield dest.host, dest.port
            yield 0
            return
        contexts = _contexts_for(rows)
        _report_progress_now_and_then(event.assoc)
        yield dest.host, dest.port, {"contexts": contexts, "evt_handlers": [(evt.EVT_CONN_OPEN, set_nodelay)],
                                     "max_pdu": self.settings.dicom_max_pdu}
        yield len(rows)
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, StoredInstance(row, self.store)
        self._audit("transferred", event, [r.study_uid for r in rows], destination=dest.ae_title)

    def _get(self, event):
        ok, _ = self._caller(event)
        if not ok:
            yield 0
            return
        try:
            rows = self._matches(event)
        except HubError as e:
            log.info("C-GET refused: %s", e.diagnostics)
            yield 0
            return
        _report_progress_now_and_then(event.assoc)
        yield len(rows)
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, StoredInstance(row, self.store)
        self._audit("transferred", event, [r.study_uid for r in rows],
                    destination=event.assoc.requestor.ae_title.strip())


def _report_progress_now_and_then(assoc) -> None:
    """Pending C-GET / C-MOVE responses every :data:`RETRIEVE_PROGRESS_INTERVAL_S` instead of one
    per sub-operation (PS3.4 C.4.2.3.1, C.4.3.3.1: they are optional): each was a message for
    the requestor to read between two sub-operations (a C-GET's share its association with the
    C-STOREs). The final response's counts are unchanged. Without :mod:`adapters.dicom.reactor`'s
    codec (another pynetdicom version) pynetdicom sends them all."""
    if isinstance(assoc.dimse, dimse_codec.FastCommandSets):
        assoc.dimse.retrieve_progress_interval = RETRIEVE_PROGRESS_INTERVAL_S


class _SharedContexts(list):
    """The server's supported presentation contexts, shared by all associations. pynetdicom
    deep-copies them for every association it accepts (transport.RequestHandler), which for
    every storage SOP class times every transfer syntax costs about 100 ms per association;
    negotiation only reads them (presentation.negotiate_as_acceptor), so one list serves all."""

    def __deepcopy__(self, memo):
        return list(self)


def _contexts_for(rows: list[index.InstanceRow]) -> list:
    """One presentation context per (SOP class, stored transfer syntax): the files go out as
    stored, so the destination must accept that transfer syntax."""
    pairs = sorted({(r.sop_class, r.transfer_syntax) for r in rows})
    by_class: dict[str, list[str]] = {}
    for sop, ts in pairs:
        by_class.setdefault(sop, []).append(ts)
    contexts = []
    for sop, tss in by_class.items():
        for ts in tss:
            contexts.append(build_context(sop, [ts]))
    return contexts[:128]
