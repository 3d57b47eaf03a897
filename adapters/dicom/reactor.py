"""Event-driven wake-ups for pynetdicom 3.0's polling loops (one version-checked adjustment).

pynetdicom runs two threads per association, and both poll:

- the DUL thread (``DULServiceProvider.run_reactor``) sleeps ``_run_loop_delay`` (1 ms) whenever
  a pass found nothing to do, so every PDU it is asked to send and every PDU the peer sends waits
  up to a millisecond, at every hop of every DIMSE exchange;
- the association thread (``Association._run_reactor``) sleeps 1 ms before each look at its
  queues, and while it sleeps it does not count as paused, so each ``send_c_store`` of a C-GET or
  C-MOVE sub-operation first spins until that sleep ends.

pynetdicom has no setting for either (``_config`` has none; ``dimse_timeout``, ``acse_timeout``
and ``network_timeout`` are deadlines, not poll intervals; the other waits, on DIMSE responses
and ACSE primitives, already block on queues). :func:`install` (an ``EVT_CONN_OPEN`` handler, so
it runs for accepted associations and for the ones the hub opens for C-MOVE) replaces the two
sleeps by waits that wake as soon as there is work:

- the DUL waits in ``select()`` on its TCP socket and on a wake-up socket pair, written whenever
  a primitive is queued for it (``to_provider_queue``, ``event_queue``) or it is told to stop;
- the association thread waits on an event set whenever a DIMSE message or an ACSE primitive is
  queued for it (``dimse.msg_queue``, ``dul.to_user_queue``) or it is killed, and counts as paused
  while it waits.

A P-DATA the association thread sends while the association is established and nothing waits
in the DUL's queue is written by that thread (under the lock every state-machine action holds),
which saves a thread hand-off per DIMSE message sent; PDUs still leave in the order they were
sent.

Both waits are bounded (:data:`IDLE_CHECK_S`), so the timers that are only checked by polling
(ARTIM, the network idle timeout) still fire, and an idle association wakes 20 times a second
instead of 1,000. The association loop is pynetdicom 3.0.4's ``_run_reactor`` with only the sleep
replaced; it also closes a race of the original, where a ``send_*`` call could pause the reactor
just after it had passed its checkpoint and lose its response to it. On another pynetdicom
version nothing is changed (a warning is logged): the loops must be re-read before this applies.
:func:`install` also gives the association the direct command-set codec of
:mod:`adapters.dicom.dimse_codec`, written against the same pynetdicom version.

The hub's accepted associations go one step further (``install(one_thread=True)``): their DUL
does not get a thread of its own; the association's thread reads and acts on the PDUs wherever it
waits for the peer (:meth:`EventDrivenDUL.pump`), which saves a thread start per association and
a hand-off between the two threads per PDU received.

Every pynetdicom association of the project gets it, through :func:`on_conn_open` or
:func:`install`: the hub's accepted associations and the ones it opens for C-MOVE
(``hub.dicom.scp``), the front-end processor's Storage SCP and its C-STORE forwarder
(``front_end_processor.dicom_scp``), and the tests' clients. It lives in ``adapters/`` because
the front-end processor may not import ``hub/``.
"""

from __future__ import annotations

import copy
import functools
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
import weakref

import pynetdicom
import pynetdicom.ae
import pynetdicom.dimse_primitives
import pynetdicom.pdu_items
import pynetdicom.pdu_primitives
import pynetdicom.presentation
import pynetdicom.utils
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import validate_value
from pynetdicom import _config, _validators
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, A_RELEASE, P_DATA
from pynetdicom.transport import AddressInformation, AssociationSocket

from adapters.dicom import acceptance
from adapters.dicom.dimse_codec import FastCommandSets, PDataBurst, file_meta_for_sending

log = logging.getLogger("yilian.dicom")

SUPPORTED_VERSIONS = ("3.0.",)
IDLE_CHECK_S = 0.05  # longest wait without news: timers (ARTIM, network timeout) are polled this often
SUPPORTED = pynetdicom.__version__.startswith(SUPPORTED_VERSIONS)
_warned = False


def install(assoc: Association, *, one_thread: bool = False) -> bool:
    """Make ``assoc``'s two loops event-driven; ``False`` (nothing changed) on another version.
    With ``one_thread``, an accepted association not started yet runs its DUL in its own thread
    (:meth:`EventDrivenDUL.pump`): no DUL thread, no hand-off between the two per PDU."""
    global _warned
    if not SUPPORTED:
        if not _warned:
            _warned = True
            log.warning("pynetdicom %s: polling loops left as they are (adjusted for %s)",
                        pynetdicom.__version__, ", ".join(v + "x" for v in SUPPORTED_VERSIONS))
        return False
    if isinstance(assoc, EventDrivenAssociation):
        return True
    _remember_clean_uids()
    dul = assoc.dul
    if type(dul.socket) is AssociationSocket:
        dul.socket.__class__ = WholeReadSocket
    # the DUL first: its wake-up must exist before anything is queued with the new hooks
    dul.__class__ = EventDrivenDUL
    dul._init_wakeup()
    assoc.__class__ = EventDrivenAssociation
    assoc._init_news()
    assoc.dimse.__class__ = FastCommandSets  # same version check (adapters.dicom.dimse_codec)
    if assoc.is_acceptor and type(assoc.acse) is ACSE:
        acceptance.install_ae7()
        assoc.acse.__class__ = acceptance.RememberingACSE  # same version check (adapters.dicom.acceptance)
    if one_thread and assoc.is_acceptor and not assoc.is_alive() and not dul.is_alive():
        dul._one_thread = True
        dul._owner = assoc
    return True


def requests_run_in_calling_thread(ae) -> None:
    """Every association ``ae`` requests from now on runs its DUL in the thread that requests
    it, as an accepted association of ``install(one_thread=True)`` runs its DUL in its own: no
    DUL thread, no hand-off between threads per PDU received. For an AE whose requested
    associations are each driven by the one thread that asks for them: pynetdicom's C-MOVE SCP
    requests the destination's association, sends every C-STORE sub-operation over it and
    releases it, all from the accepted association's thread, and waits for each C-STORE
    response; each response was read by the destination association's DUL thread and handed to
    the waiting one (two thread wake-ups per sub-operation). The requested association's own
    thread, which pynetdicom starts once it is established, still watches for an abort or a
    release request between the requesting thread's turns. The hook is ``ae._create_socket``,
    which ``AE.associate`` calls after building the association and before starting its DUL."""
    if not SUPPORTED:
        return
    create_socket = ae._create_socket

    def create_socket_for_this_thread(assoc, address, tls_args):
        sock = create_socket(assoc, address, tls_args)
        if type(sock) is AssociationSocket:
            sock.__class__ = WholeReadSocket
        if install(assoc) and not assoc.is_alive() and not assoc.dul.is_alive():
            assoc.dul._one_thread = True
            assoc.dul._owner = threading.current_thread()
        return sock

    ae._create_socket = create_socket_for_this_thread


_pynetdicom_set_uid = pynetdicom.utils.set_uid
_UID_SETTER_MODULES = (pynetdicom.ae, pynetdicom.dimse_primitives, pynetdicom.pdu_items, pynetdicom.pdu_primitives,
                       pynetdicom.presentation, pynetdicom.utils)
_clean_uids: dict = {}  # value as given (str or bytes) -> the UID's text, for values that passed every check
_CLEAN_UIDS_MAX = 4096


def _remember_clean_uids() -> None:
    """Give pynetdicom's modules :func:`set_uid_remembered` in place of ``utils.set_uid`` (once)."""
    for module in _UID_SETTER_MODULES:
        if getattr(module, "set_uid", None) is _pynetdicom_set_uid:
            module.set_uid = set_uid_remembered


def set_uid_remembered(value, name, allow_empty=True, allow_none=True, validate=True):
    """pynetdicom's ``utils.set_uid``, which every primitive, PDU item and presentation context
    calls for each UID it is given (about 40 UIDs for an association of one presentation context,
    each through pydicom's and pynetdicom's validation: two to three regular expressions), with
    the outcome remembered for values seen before that passed every check silently: for those it
    returns what ``set_uid`` returns (a new ``UID`` of the same text) without validating again.
    Values that warn, fail or are empty, values in a ``UID`` carrying a private transfer syntax's
    encoding, and SOP Instance UIDs (one per object: they would only churn the memory) always take
    pynetdicom's path, as does everything while ``_config.VALIDATORS["UI"]`` is not pynetdicom's."""
    kind = type(value)
    if (kind is str or kind is bytes or (kind is UID and not hasattr(value, "_PRIVATE_TS_ENCODING"))) \
            and "Instance" not in name:
        text = _clean_uids.get(value)
        if text is not None and _config.VALIDATORS["UI"] is _validators.validate_ui:
            return str.__new__(UID, text)
        result = _pynetdicom_set_uid(value, name, allow_empty, allow_none, validate)
        if result and _config.VALIDATORS["UI"] is _validators.validate_ui and _is_clean(value, result):
            if len(_clean_uids) >= _CLEAN_UIDS_MAX:
                _clean_uids.clear()
            _clean_uids[value] = str(result)
        return result
    return _pynetdicom_set_uid(value, name, allow_empty, allow_none, validate)


def _is_clean(value, result: UID) -> bool:
    """``value`` gives ``result`` through ``set_uid`` without a warning under any of pynetdicom's
    and pydicom's validation settings: conformant, at most 64 characters, accepted by pydicom's
    strictest validation as given (before ``UID`` strips it), ASCII when given as bytes."""
    if not (result.is_valid and len(result) <= 64):
        return False
    if type(value) is bytes:
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return False
    try:
        validate_value("UI", value, pydicom_config.RAISE)
    except Exception:  # pydicom would warn (or raise) for it under its other settings
        return False
    return True


def on_conn_open(event) -> None:
    """``EVT_CONN_OPEN`` handler: :func:`install` on the association being opened or accepted."""
    install(event.assoc)


def without_forced_collections(server) -> None:
    """Stop an association server's acceptor loop from running a full ``gc.collect()``.

    pynetdicom's ``AssociationServer.service_actions`` (called by ``serve_forever`` after every
    accepted connection and every 0.5 s poll) collects all generations every 60th turn, "for
    whatever reason dead Association threads aren't being garbage collected". In the hub's
    process (about 180,000 tracked objects) one such collection takes about 110 ms of CPU with the
    GIL held: about 1.8 ms per association, and every association and HTTP request of the process
    stands still meanwhile. The interpreter's own generational collector (enabled) frees ended
    associations as it frees any other cycle; nothing else of ``service_actions`` is lost
    (``socketserver``'s own hook does nothing)."""
    server.service_actions = _no_service_actions


def accept_in_server_thread(server) -> None:
    """Set up each accepted association in the server's own thread, not in a thread started
    for it. ``socketserver.ThreadingMixIn`` starts a thread per connection, which only builds
    the ``Association``, fires ``EVT_CONN_OPEN`` and starts the association's own thread (which
    starts the DUL's): three thread starts before the A-ASSOCIATE-RQ is read, of which this
    saves the first (and the wait for it to be scheduled). Nothing in that set-up blocks; an
    exception in it is handled as the request thread handled it (``handle_error``, the socket
    closed)."""
    if not SUPPORTED:
        return
    server.process_request = server.process_request_thread


def prepare_associations_ahead(server, *, one_thread: bool = False) -> None:
    """Build each accepted association's ``Association`` before its connection arrives.

    pynetdicom builds it when the connection is accepted (``RequestHandler._create_association``:
    the association, its DUL, ACSE and DIMSE providers, timers and queues, the acceptor's
    settings, about 30 event bindings), about 0.45 ms of the 1.5 ms between a peer's connect and
    the hub's A-ASSOCIATE-AC, while the peer waits. None of it depends on the connection, so one
    association is built ahead: when the server starts and when an accepted association ends
    (its peer has its A-RELEASE-RP or A-ABORT by then), and the next connection only gets its
    socket, its peer's address and its thread's name. The spare is used only while the server
    is configured as when it was built (its event handlers, the AE's timeouts, PDU size and
    implementation identity); otherwise pynetdicom builds the association as before.

    The spare is also made event-driven ahead (:func:`install`, with ``one_thread`` as the
    server's ``EVT_CONN_OPEN`` handler asks for it; that handler's own ``install`` then finds it
    done), and the peer's address is taken as ``accept()`` gives it (numeric) instead of being
    resolved again (``getaddrinfo``). Its thread is started ahead as well, and waits: the
    connection's ``assoc.start()`` lets it go on into pynetdicom's ``run_reactor`` (a wake-up
    instead of a thread start, which also held the accepting thread until the new one ran).
    While it waits it is no association of the AE's or the server's (``active_associations``:
    its AE is withheld and its name is not an acceptor's), and it ends unused when the spare is
    discarded or the server closed."""
    if not SUPPORTED:
        return
    prepared = _PreparedAssociation(server, one_thread=one_thread)
    server._yilian_prepared = prepared
    server.RequestHandlerClass = _prepared_handler_class(server.RequestHandlerClass)
    prepared.prepare()


class _PreparedAssociation:
    def __init__(self, server, *, one_thread: bool = False):
        self.server = server
        self.one_thread = one_thread
        self._lock = threading.Lock()
        self._spare: tuple[Association, tuple] | None = None
        #: the current configuration's signature and a token standing for it: an association taken
        #: from here carries the token (``_yilian_signature``), under which its acceptance is
        #: remembered (adapters.dicom.acceptance); another configuration gets another token
        self._configuration: tuple[tuple, object] | None = None
        self._closed = False
        close = server.server_close

        def server_close() -> None:  # (AssociationServer.shutdown calls it)
            self.close()
            close()

        server.server_close = server_close

    def _signature(self) -> tuple:
        server, ae = self.server, self.server.ae
        handlers = tuple((event, tuple(h) if isinstance(h, list) else h) for event, h in server._handlers.items())
        return (handlers, ae.acse_timeout, ae.connection_timeout, ae.dimse_timeout, ae.network_timeout,
                ae.maximum_pdu_size, ae.implementation_class_uid, ae.implementation_version_name,
                server.ae_title, id(server.contexts), _config.LOG_HANDLER_LEVEL)

    def prepare(self) -> None:
        """Build the spare association unless there is one; where nobody waits for it."""
        with self._lock:
            if self._spare is not None or self._closed:
                return
        signature = self._signature()
        assoc = self._build()
        _start_waiting(assoc)
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare = (assoc, signature)
                return
        _end_unused(assoc)

    def close(self) -> None:
        """No more spares; the one waiting ends unused."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            _end_unused(spare[0])

    def take(self) -> Association | None:
        with self._lock:
            spare, self._spare = self._spare, None
        signature = self._signature()
        if spare is not None and spare[1] != signature:
            _end_unused(spare[0])
            spare = None
        if spare is None:
            return None
        if self._configuration is None or self._configuration[0] != signature:
            self._configuration = (signature, object())
        assoc = spare[0]
        assoc._yilian_signature = self._configuration[1]
        assoc._ae = assoc.__dict__.pop("_yilian_ae")  # an association of the AE's again
        return assoc

    def _build(self) -> Association:
        """pynetdicom 3.0's ``RequestHandler._create_association`` without its socket and peer."""
        server, ae = self.server, self.server.ae
        assoc = Association(ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.acceptor.maximum_length = ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = AddressInformation.from_tuple(server.server_address)
        assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = ae.implementation_version_name
        assoc.acceptor.supported_contexts = copy.deepcopy(server.contexts)
        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, pynetdicom.evt.NotificationEvent):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        install(assoc, one_thread=self.one_thread)
        return assoc


def _prepared_handler_class(base):
    class PreparedRequestHandler(base):
        """pynetdicom's request handler, which takes the association built ahead (if any)."""

        def _create_association(self) -> Association:
            assoc = self.server._yilian_prepared.take()
            if assoc is None:
                return super()._create_association()
            assoc.name = f"AcceptorThread@{time.strftime('%Y%m%d%H%M%S')}"
            assoc.set_socket(WholeReadSocket(assoc, client_socket=self.request))
            assoc.requestor.address_info = _accepted_address(self.client_address)
            return assoc

    return PreparedRequestHandler


def _start_waiting(assoc: Association) -> None:
    """Start the thread of the association built ahead ``assoc``; it waits until
    ``assoc.start()`` (the connection's, from ``RequestHandler.handle``) or :func:`_end_unused`.
    Meanwhile its AE is withheld (``AE.active_associations`` counts associations by their AE,
    ``AssociationServer.active_associations`` by their name)."""
    go = threading.Event()
    run = assoc._target  # pynetdicom's run_reactor (Association.__init__ made it the target)

    def wait_then_run() -> None:
        go.wait()
        if not assoc.__dict__.get("_yilian_unused", False):
            run()

    def start() -> None:
        del assoc.start  # Thread.start again, for whoever might call it (and raise)
        go.set()

    assoc._target = wait_then_run
    assoc._yilian_go = go
    assoc._yilian_ae, assoc._ae = assoc._ae, None
    assoc.name = "PreparedAssociation"
    threading.Thread.start(assoc)
    assoc.start = start


def _end_unused(assoc: Association) -> None:
    """End the waiting thread of an association built ahead that no connection will use."""
    assoc._yilian_unused = True
    assoc._yilian_go.set()


def _accepted_address(address: tuple) -> AddressInformation:
    """pynetdicom's ``AddressInformation`` of an address ``accept()`` returned, which is numeric
    already: its setter would resolve it with ``getaddrinfo`` (a fifth of the set-up before the
    association's thread starts) to get the same text back."""
    info = AddressInformation.__new__(AddressInformation)
    info._addr = address[0]
    info.port = address[1]
    info.flowinfo, info.scope_id = (address[2], address[3]) if len(address) == 4 else (0, 0)
    return info


def _no_service_actions() -> None:
    """``serve_forever``'s per-turn hook, left empty as in ``socketserver.BaseServer``."""


class WholeReadSocket(AssociationSocket):
    """pynetdicom's ``AssociationSocket``, whose ``recv(n)`` reads straight into one buffer of
    ``n`` bytes instead of 4 kB ``recv`` calls appended to a growing ``bytearray``: a 0.5 MB
    image arrives in a few PDUs of up to 128 kB (dcmtk's), so that loop made about 130 calls per
    instance. Same result: the bytes read, fewer when the peer closed before ``n``, exceptions
    as ``socket.recv`` raises them.

    A short read (a PDU's 6-byte header) takes up to :data:`READ_AHEAD` bytes of what is there,
    and the next reads are served from them first: a small PDU (a C-ECHO, C-FIND or release
    request, a C-STORE response) is then read with one ``recv`` instead of two, and ``ready`` is
    true while read-ahead bytes wait (``select()`` cannot see them)."""

    READ_AHEAD = 4096
    _ahead: bytes = b""

    @property
    def ready(self) -> bool:
        return bool(self._ahead) or AssociationSocket.ready.fget(self)

    def recv(self, nr_bytes: int) -> bytearray:
        ahead = self._ahead
        if ahead:
            if len(ahead) >= nr_bytes:
                self._ahead = ahead[nr_bytes:]
                return bytearray(ahead[:nr_bytes])
            self._ahead = b""
        sock = self.socket
        if nr_bytes - len(ahead) < self.READ_AHEAD:
            buffer = bytearray(ahead)
            while len(buffer) < nr_bytes:
                got = sock.recv(self.READ_AHEAD)
                if not got:
                    return buffer
                buffer += got
            if len(buffer) > nr_bytes:
                self._ahead = buffer[nr_bytes:]
                del buffer[nr_bytes:]
            return buffer
        buffer = bytearray(nr_bytes)
        buffer[:len(ahead)] = ahead
        view = memoryview(buffer)
        done = len(ahead)
        while done < nr_bytes:
            got = sock.recv_into(view[done:], nr_bytes - done)
            if not got:
                break
            done += got
        del view  # a bytearray with a view on it cannot be resized
        if done < nr_bytes:
            del buffer[done:]
        return buffer


def _notify_on_put(q: queue.Queue, notify) -> None:
    """Call ``notify()`` after every put on ``q`` (``put_nowait`` goes through ``put`` too)."""
    put = q.put

    def put_and_notify(item, block=True, timeout=None):
        put(item, block, timeout)
        notify()

    q.put = put_and_notify


@functools.lru_cache(maxsize=64)
def _associate_rq(data: bytes) -> A_ASSOCIATE_RQ:
    """The decoded A-ASSOCIATE-RQ PDU of these bytes, shared by the associations that received
    them: pynetdicom only reads it (``AE_6`` checks its protocol version and makes the
    A-ASSOCIATE indication primitive from it with ``to_primitive``, which builds new objects
    every time), so one decoded object serves every association. A request that does not
    decode raises every time (nothing is cached). Its primitive is made once too, and the
    acceptance of each configuration remembered with it (:mod:`adapters.dicom.acceptance`)."""
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(data)
    acceptance.share_primitive(pdu)
    return pdu


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL; its idle sleep waits for the socket or a wake-up instead (see module).
    It also writes a :class:`~adapters.dicom.dimse_codec.PDataBurst` (PDUs encoded by the DIMSE
    codec) as it is."""

    sends_bursts = True
    #: the DUL runs in the association's thread (see :meth:`pump`), not in a thread of its own
    _one_thread = False
    #: the thread that runs it then: the accepted association's, or the one that requested the
    #: association (:func:`requests_run_in_calling_thread`)
    _owner: threading.Thread | None = None
    _pumping = False

    # ---------------------------------------------------------------- one thread
    # pynetdicom starts the DUL thread from the association's, waits for it to set
    # ``_dul_ready``, then waits on queues the DUL thread fills: for each PDU received a wake-up of
    # the other thread (0.05 to 1 ms, more on a loaded machine), three for an association's
    # set-up. An accepted association's thread can as well read and act on the PDUs itself: it
    # only waits for the peer (the A-ASSOCIATE-RQ, a DIMSE request, a C-STORE-RSP of a C-GET
    # sub-operation, the release), and every such wait below reads the socket (``pump``) until
    # what it waits for has arrived, the DUL has stopped, or its timeout has passed.

    def start(self) -> None:
        if not self._one_thread:
            return super().start()
        # what run_reactor does before its loop
        self._idle_timer.start()
        self._pumping = True
        self.assoc._dul_ready.set()

    def is_alive(self) -> bool:
        if self._one_thread:
            return self._pumping and not self._kill_thread
        return super().is_alive()

    def join(self, timeout=None) -> None:
        if not self._one_thread:
            super().join(timeout)

    def pump(self, timeout: float) -> None:
        """One turn of pynetdicom's ``run_reactor`` loop, in the calling thread (the association's):
        the ARTIM check, then a primitive queued for the peer or else a PDU from the peer (waiting
        up to ``timeout`` for one when nothing else is queued), then one state-machine event. A
        failure aborts as ``run_reactor`` does."""
        if self._kill_thread or not self._pumping:
            return
        if self.artim_timer.expired:
            self.event_queue.put("Evt18")
        try:
            if self._process_recv_primitive():
                pass
            else:
                readable = False
                if timeout > 0 and not self.event_queue.qsize() and self.state_machine.current_state != "Sta13":
                    self._waiting = True
                    try:
                        readable = self._select(timeout)
                    finally:
                        self._waiting = False
                if readable:  # what _is_transport_event does, without asking select() again
                    self._read_pdu_data()
                    self._idle_timer.restart()
                elif self._is_transport_event():
                    self._idle_timer.restart()
        except Exception as exc:
            self._abort_after(exc, "Exception in DUL.run(), aborting association")
            return
        try:
            event = self.event_queue.get(block=False)
        except queue.Empty:
            return
        # an action that raises aborts the association (in pynetdicom's DUL thread it ended the
        # thread and left the association to its timeouts; here it would end the association's)
        self._do_action_here(event)

    def pump_until(self, arrived, timeout: float | None) -> None:
        """:meth:`pump` until ``arrived()``, the DUL stops, or ``timeout`` seconds (``None``: no
        limit, as pynetdicom's blocking queue reads)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not arrived() and self.is_alive():
            wait = IDLE_CHECK_S
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return
            self.pump(wait)

    def runs_here(self) -> bool:
        """True when the calling thread is the one that runs this DUL (one-thread mode)."""
        return self._one_thread and threading.current_thread() is self._owner

    def receive_pdu(self, wait: bool = False, timeout: float | None = None):
        if wait and self.runs_here():
            self.pump_until(self.to_user_queue.qsize, timeout)
            wait = False
        return super().receive_pdu(wait, timeout)

    def _read_pdu_data(self) -> None:
        """pynetdicom's read of one PDU (its failures as there: Evt17 for a connection closed
        before the PDU ended, Evt19 for an unknown type or one that does not decode). In
        one-thread mode, a C-ECHO-RQ that the DIMSE codec answers by itself
        (``FastCommandSets.echo_reply_pdu``) is answered here, as it is read, when nothing is
        queued before it: neither the request nor the reply goes through the PDU classes, the
        state machine or the DIMSE queue (Sta6 stays Sta6 either way). While the peer sends
        nothing but such requests (a C-ECHO ping loop), the next ones are read and answered here
        too, for as long as they follow within :data:`IDLE_CHECK_S` and nothing else is queued;
        anything else goes on to the state machine as pynetdicom's read would send it."""
        reply = getattr(self.assoc.dimse, "echo_reply_pdu", None) if self._one_thread else None
        if reply is None or self.state_machine.current_state != "Sta6" \
                or self.assoc.get_handlers(pynetdicom.evt.EVT_FSM_TRANSITION):
            return super()._read_pdu_data()
        while True:
            data = self._read_whole_pdu()
            if data is None:
                return
            if data[0] != 0x04 or (answer := reply(data)) is None:
                break
            with self._fsm_lock:
                if self.state_machine.current_state != "Sta6" or self.to_provider_queue.qsize() \
                        or self.event_queue.qsize():
                    break
                self._send_burst(answer)
            self._idle_timer.restart()
            if self._kill_thread or self.assoc._kill or not self._select(IDLE_CHECK_S):
                return  # the reactor's turn: its checks, timers and queues
        try:
            pdu, event = self._decode_pdu(data)
        except Exception:
            log.exception("Unable to decode the received PDU data")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _decode_pdu(self, bytestream: bytearray):
        """pynetdicom's decoding of a received PDU, except that an A-ASSOCIATE-RQ is decoded once
        per distinct request (:func:`_associate_rq`): a client sends the same request every
        time it connects (its AE titles, presentation contexts and user information), and
        decoding it was a sixth of the CPU of a short association (a C-ECHO or C-FIND process)."""
        if bytestream[:1] != b"\x01":
            return super()._decode_pdu(bytestream)
        data = bytes(bytestream)
        pynetdicom.evt.trigger(self.assoc, pynetdicom.evt.EVT_DATA_RECV, {"data": data})
        pdu = _associate_rq(data)
        pynetdicom.evt.trigger(self.assoc, pynetdicom.evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt6"

    def _read_whole_pdu(self) -> bytearray | None:
        """One PDU's bytes from the socket, or ``None`` with pynetdicom's event for what failed
        queued (Evt17: closed before the PDU ended; Evt19: an unknown PDU type)."""
        transport = self.socket
        try:
            data = transport.recv(6)
            if len(data) < 6:
                self.event_queue.put("Evt17")  # closed before a whole PDU header
                return None
            pdu_type, _, length = struct.unpack(">BBL", data)
            if not 0x01 <= pdu_type <= 0x07:
                log.error("Unknown PDU type received '0x%02X'", pdu_type)
                self.event_queue.put("Evt19")
                return None
            data += transport.recv(length)
        except (OSError, TimeoutError):
            log.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return None
        if len(data) != 6 + length:
            log.error("The received PDU is shorter than expected (%d of %d bytes)", len(data), 6 + length)
            self.event_queue.put("Evt17")
            return None
        return data

    def _send(self, pdu) -> None:
        items = getattr(pdu, "presentation_data_value_items", None)
        if items and len(items) == 1 and isinstance(items[0].presentation_data_value, PDataBurst):
            if self.socket is not None:
                self._send_burst(items[0].presentation_data_value)
            else:
                log.warning("Attempted to send data over closed connection")
            return
        super()._send(pdu)

    def _send_burst(self, burst) -> None:
        """``AssociationSocket.send`` of a burst, its partial writes resumed from a view (that
        loop re-sliced, and so copied, the rest of a 1 MiB burst after each partial write of a
        socket with a timeout); ``EVT_DATA_SENT`` and a failure (Evt17) as there."""
        transport = self.socket
        sock = transport.socket
        view = memoryview(burst)
        try:
            while view:
                view = view[sock.send(view):]
            if self.assoc.get_handlers(pynetdicom.evt.EVT_DATA_SENT):
                pynetdicom.evt.trigger(self.assoc, pynetdicom.evt.EVT_DATA_SENT, {"data": bytes(burst)})
        except Exception:
            transport.event_queue.put("Evt17")  # transport connection closed

    def _init_wakeup(self) -> None:
        self._waiting = False  # True while the thread is (about to be) in select()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # closed once the association is killed (which waits for this thread to end); the
        # finalizer is the backstop for the paths that never kill it (a rejected association)
        weakref.finalize(self, _close, self._wake_r, self._wake_w)
        _notify_on_put(self.to_provider_queue, self._wake)
        _notify_on_put(self.event_queue, self._wake)
        # held by every state-machine action, and by a P-DATA sent from another thread (send_pdu)
        self._fsm_lock = threading.RLock()
        self._in_sta1 = threading.Event()  # set while an action has left the state machine in Sta1
        do_action = self.state_machine.do_action
        machine = self.state_machine

        def do_action_locked(event: str) -> None:
            with self._fsm_lock:
                try:
                    do_action(event)
                finally:
                    if machine.current_state == "Sta1":
                        self._in_sta1.set()
                    else:
                        self._in_sta1.clear()

        self.state_machine.do_action = do_action_locked

    def send_pdu(self, primitive) -> None:
        """A primitive from the association's thread whose state-machine action only writes a
        PDU is carried out by that thread, under the lock every action holds, when nothing is
        queued before it (the DUL thread would do the same a hand-off later: a wake-up of a thread
        waiting in ``select()``, 0.1 to 1 ms): a P-DATA while the association is established
        (DT-1, the only action of Sta6 + Evt9), the A-ASSOCIATE response to a request (AE-7 or
        AE-8 in Sta3) and the A-RELEASE response to a release request (AR-4 in Sta8). Anything
        else is queued for the DUL thread as before."""
        kind = type(primitive)
        if kind is A_ASSOCIATE and primitive.result is None and self.runs_here():
            # a requested association run in the requesting thread: pynetdicom waits for the
            # transport connection (socket._ready) before it waits for the answer, so the
            # connection (AE-1) and the A-ASSOCIATE-RQ (AE-2) are made here, now
            super().send_pdu(primitive)
            while (self.to_provider_queue.qsize() or self.event_queue.qsize()) and self.is_alive():
                self.pump(0.0)
            return
        if (kind is P_DATA or kind is A_ASSOCIATE or kind is A_RELEASE) \
                and threading.current_thread() is not self \
                and not self.assoc.get_handlers(pynetdicom.evt.EVT_FSM_TRANSITION):
            with self._fsm_lock:
                state = self.state_machine.current_state
                if not self.to_provider_queue.qsize():
                    if kind is P_DATA:
                        if state == "Sta6":
                            self._send(P_DATA_TF(primitive))
                            return
                    elif primitive.result is not None and not self.event_queue.qsize():
                        if kind is A_ASSOCIATE and state == "Sta3":
                            event = "Evt7" if primitive.result == 0x00 else "Evt8"
                        elif kind is A_RELEASE and state == "Sta8":
                            event = "Evt14"
                        else:
                            event = None
                        if event is not None:
                            pynetdicom.evt.trigger(self.assoc, pynetdicom.evt.EVT_ACSE_SENT, {"primitive": primitive})
                            queue.Queue.put(self.to_provider_queue, primitive)  # the action takes it (no wake-up)
                            self._do_action_here(event)
                            return
        super().send_pdu(primitive)

    def _do_action_here(self, event: str) -> None:
        """``state_machine.do_action(event)`` in the calling thread, failing as ``run_reactor``
        fails when an action raises: an A-ABORT written past the state machine, both loops ended."""
        try:
            self.state_machine.do_action(event)
        except Exception as exc:
            self._abort_after(exc, f"Exception in DUL action {event}, aborting association")

    def _abort_after(self, exc: Exception, message: str) -> None:
        """``run_reactor``'s handling of an exception: an A-ABORT written past the state machine
        (which the failure may have left in any state), both loops ended."""
        log.error(message)
        log.exception(exc)
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        if self.socket is not None:
            self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def stop_dul(self) -> bool:
        """pynetdicom's ``stop_dul`` (in Sta1: stop the thread and wait for it, ``True``; else
        ``False``), waiting with ``join`` instead of 1 ms sleeps (setting the flag wakes it)."""
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            if threading.current_thread() is not self and self.is_alive():
                self.join()
            return True
        return False

    def _wake(self) -> None:
        # Only a thread in select() needs the byte; a busy one sees the queues on its next pass.
        # (_wait_for_work sets _waiting before it looks at the queues, so a put that finds it
        # False is seen by that look.)
        if not self._waiting:
            return
        try:
            self._wake_w.send(b"\0")
        except OSError:  # closed (the thread has stopped), or the pair is full: it is awake anyway
            pass

    # pynetdicom sets and reads this flag directly; setting it must wake the thread
    @property
    def _kill_thread(self) -> bool:
        return self.__dict__.get("_kill_thread", False)

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_kill_thread"] = value
        if value and "_waiting" in self.__dict__:
            self._wake()

    # ``run_reactor`` does ``time.sleep(self._run_loop_delay)`` when a pass found nothing to do:
    # in the DUL thread, reading it is where the thread waits for work (the sleep is then 0).
    # ``stop_dul`` reads it from other threads as its polling interval while the thread ends.
    @property
    def _run_loop_delay(self) -> float:
        if threading.current_thread() is not self:
            return 0.001
        self._wait_for_work()
        return 0.0

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # pynetdicom's constructor sets its fixed delay; the property above replaces it

    def _wait_for_work(self) -> None:
        self._waiting = True
        try:
            self._select()
        finally:
            self._waiting = False

    def _select(self, timeout: float = IDLE_CHECK_S) -> bool:
        """Wait up to ``timeout`` for the peer's bytes or a wake-up; ``True`` when the socket has
        bytes to read (read ahead, or seen by ``select()``)."""
        if self._kill_thread or self.to_provider_queue.qsize() or self.event_queue.qsize():
            return False
        transport = self.socket
        if transport is not None and getattr(transport, "_ahead", b""):
            return True
        if self.artim_timer._start_time is not None and self.artim_timer.timeout is not None:
            timeout = max(0.0, min(timeout, self.artim_timer.remaining))
        waiting = [self._wake_r]
        sock = transport.socket if transport is not None and transport._is_connected else None
        if sock is not None:
            waiting.append(sock)
        try:
            readable, _, _ = select.select(waiting, [], [], timeout)
        except (OSError, ValueError):  # a socket closed meanwhile: the next pass notices
            return False
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:  # nothing more to read (or closed)
                pass
        # (an SSL socket's buffered bytes are not seen by select(): pynetdicom's ready sees them)
        return sock is not None and sock in readable and not isinstance(sock, ssl.SSLSocket)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        s.close()


class EventDrivenAssociation(Association):
    """pynetdicom's Association; its reactor waits for news instead of sleeping (see module)."""

    def _init_news(self) -> None:
        self._news = threading.Event()
        self._valid_contexts: dict[tuple, object] = {}
        _notify_on_put(self.dimse.msg_queue, self._message_news)
        _notify_on_put(self.dul.to_user_queue, self._news.set)

    def _message_news(self) -> None:
        """A DIMSE message queued: wake the reactor, unless the thread running the DUL of a
        requested association (:func:`requests_run_in_calling_thread`) queued it while it holds
        the reactor paused, waiting for that message itself (a C-STORE response): the reactor
        would only wake to find the checkpoint closed (one thread switch per sub-operation)."""
        if self._reactor_checkpoint.is_set() or self.is_acceptor or not self.dul.runs_here():
            self._news.set()

    # pynetdicom sets this flag directly (from the DUL thread too); setting it must wake the reactor
    @property
    def _kill(self) -> bool:
        return self.__dict__.get("_kill", False)

    @_kill.setter
    def _kill(self, value: bool) -> None:
        self.__dict__["_kill"] = value
        news = self.__dict__.get("_news")
        if value and news is not None:
            news.set()

    def _get_valid_context(self, ab_syntax, tr_syntax, role=None, context_id=None, allow_conversion=True):
        """pynetdicom's context lookup (which sorts every accepted context on each call: twice
        per C-GET / C-MOVE sub-operation), remembered once the association is established, when
        the accepted contexts no longer change; a lookup that fails is not remembered."""
        if not self.is_established:
            return super()._get_valid_context(ab_syntax, tr_syntax, role, context_id, allow_conversion)
        key = (str(ab_syntax), str(tr_syntax), role, context_id, allow_conversion)
        found = self._valid_contexts.get(key)
        if found is None:
            found = self._valid_contexts[key] = super()._get_valid_context(
                ab_syntax, tr_syntax, role, context_id, allow_conversion)
        return found

    def send_c_store_file(self, path, msg_id: int = 1, priority: int = 2, originator_aet=None,
                          originator_id=None) -> Dataset:
        """pynetdicom 3.0.4's ``send_c_store`` of a stored file (``STORE_SEND_CHUNKED_DATASET``),
        with the file meta read by :func:`~adapters.dicom.dimse_codec.file_meta_for_sending`
        instead of pydicom's ``split_dataset`` (which built a ``Dataset`` of the file meta for
        every C-GET / C-MOVE sub-operation, a tenth of its CPU). The same request goes out, with
        the same context; a file that walk cannot read, or pynetdicom reading files as data sets,
        takes pynetdicom's ``send_c_store``."""
        meta = file_meta_for_sending(path) if _config.STORE_SEND_CHUNKED_DATASET else None
        if meta is None or not self.is_established:
            return Association.send_c_store(self, path, msg_id, priority, originator_aet, originator_id)
        offset, sop_class, sop_instance, tsyntax = meta
        req = C_STORE()
        req.MessageID = msg_id
        req.Priority = priority
        req.MoveOriginatorApplicationEntityTitle = originator_aet
        req.MoveOriginatorMessageID = originator_id
        req._dataset_path = (path, offset)
        context = self._get_valid_context(sop_class, tsyntax, "scu", allow_conversion=False)
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance
        # Pause the reactor to prevent a race condition (as pynetdicom)
        self._reactor_checkpoint.clear()
        while not self._is_paused:
            time.sleep(0.0001)
        self.dimse.send_msg(req, context.context_id)
        _, rsp = self.dimse.get_msg(block=True)
        self._reactor_checkpoint.set()
        if rsp is None:
            self._handle_no_response()
            return Dataset()
        return self._check_received_status(rsp)

    def kill(self) -> None:
        """pynetdicom 3.0.4's ``kill``, whose wait for the DUL to reach Sta1 (transport closed)
        polled every 10 ms, woken when the state machine gets there instead: a released C-MOVE
        destination association (whose release the final C-MOVE response waits for) ends
        without waiting out the rest of a poll. Returns once the DUL thread has ended."""
        self._reactor_checkpoint.set()  # ensure the reactor is running so it can be exited
        self._kill = True
        self.is_established = False
        self._is_paused = True
        dul = self.dul
        if dul.runs_here():
            while dul.is_alive() and not dul.stop_dul():
                dul.pump(0.01)
        else:
            # (in one-thread mode another thread waits for the association's thread to get there)
            while dul.is_alive() and not dul.stop_dul() and (not dul._one_thread or self.is_alive()):
                dul._in_sta1.wait(0.01)
        if not dul.is_alive():
            _close(dul._wake_r, dul._wake_w)
        self._prepare_next()

    _next_prepared = False

    def _prepare_next(self) -> None:
        """Build the server's next association ahead (:func:`prepare_associations_ahead`) once
        this accepted association ends, however it ends (released, aborted, rejected, timed out):
        its peer has its answer by then."""
        prepared = getattr(self._server, "_yilian_prepared", None) if self.is_acceptor else None
        if prepared is None or self._next_prepared:
            return
        self._next_prepared = True
        try:
            prepared.prepare()
        except Exception:
            log.exception("could not build an association ahead (the next one is built when it connects)")

    #: True while a request is being served (a service class runs): read by the DIMSE codec,
    #: which answers a C-ECHO itself only when pynetdicom would serve it next
    _serving = False

    def _serve_request(self, msg, context_id: int) -> None:
        self._serving = True
        try:
            super()._serve_request(msg, context_id)
        finally:
            self._serving = False

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``Association._run_reactor`` with its ``time.sleep(0.001)`` replaced
        by a wait for news, during which the reactor counts as paused (in one-thread mode: by a
        turn of the DUL, which waits for the peer when nothing is queued)."""
        one_thread = self.dul.runs_here()
        try:
            self._serve_until_killed(one_thread)
        finally:
            if one_thread:
                self.kill()  # whatever ended the loop, the DUL runs to Sta1 (or stops) here

    def _serve_until_killed(self, one_thread: bool) -> None:
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            idle = not (self.dimse.msg_queue.qsize() or self.dul.to_user_queue.qsize())
            if one_thread:
                self.dul.pump(IDLE_CHECK_S if idle else 0.0)
            elif idle:
                self._news.wait(IDLE_CHECK_S)
            self._news.clear()  # anything queued from here on sets it again

            # A send_*() call pauses the reactor (clears the checkpoint, then waits for
            # _is_paused); wait until it is done. Checking the checkpoint again after leaving the
            # paused state closes the window where both would take the same response.
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                self._news.set()  # look at the queues again once the sender is done
                continue

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)

            # Check for release request from the peer
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("Association Released")
                self.is_released = True
                self.is_established = False
                pynetdicom.evt.trigger(self, pynetdicom.evt.EVT_RELEASED, {})
                self.kill()
                return

            # Check for abort from either locally or the peer
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                pynetdicom.evt.trigger(self, pynetdicom.evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.error("DICOM network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return
