"""Audit trail: one AuditEvent per FHIR interaction, in the IHE BALP pattern.

Recording an access must cost far less than the access itself, so the hot path writes one
narrow row per access to ``audit_journal`` (who, which client and organization, from where,
what interaction, outcome, which patients and resources, the query: the BALP fields) and the
full ``AuditEvent`` resources are made from those rows later, by :func:`materialize`:

- before any interaction that can see AuditEvents (``FhirService`` calls it: reads, searches,
  includes, history, ``$everything``), so a client always finds every recorded access;
- in idle time, by the writer thread of each process, a bounded chunk at a time.

The journal is in the same database as the resources, so an access is recorded durably once
its row is committed; nothing is dropped. Rows are queued by the request and written in batches
by a background thread (one transaction per batch, at most ``flush_interval`` seconds late). The
queue is bounded: when the writer falls behind, requests wait for room (back-pressure) rather
than the backlog growing without limit or events being dropped. ``close()`` flushes what is
queued into the journal; a record arriving after that is written by its caller. A request that holds the database's write lock never waits for room
(the writer needs that lock to make room): its record is queued past the bound instead. A batch
the database refuses (busy, restarting) is kept and written again next round, never dropped.
"""

from __future__ import annotations

import base64
import collections
import logging
import threading
import time
from functools import lru_cache

import orjson
from sqlalchemy import BigInteger, Column, Engine, Integer, String, Table, Text, delete, func, select, text

from hub.fhir.model import instant, now_us
from hub.fhir.search.extract import IndexRows, normalize_string, parse_date_range, reference_rows
from hub.fhir.search.registry import get_registry
from hub.fhir.store import FhirStore, Version, new_id, stamp
from hub.storage.db import in_write_tx, write_tx
from hub.storage.schema import INDEX_STR_MAX, metadata

log = logging.getLogger("yilian.audit")

#: one narrow row per recorded access, waiting to become an AuditEvent resource (migration
#: 0002_fhir_perf); ``patients`` and ``resources`` are JSON arrays of ids and references
audit_journal = Table(
    "audit_journal",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("recorded", BigInteger, nullable=False),
    Column("interaction", String(32), nullable=False),
    Column("status", Integer, nullable=False),
    Column("who", Text, nullable=False),
    Column("client_id", Text),
    Column("organization", Text),
    Column("address", Text),
    Column("patients", Text, nullable=False),
    Column("resources", Text, nullable=False),
    Column("query", Text),
    Column("observer", Text, nullable=False),
)
_J = audit_journal.c
_JOURNAL_COLS = ("recorded", "interaction", "status", "who", "client_id", "organization", "address",
                 "patients", "resources", "query", "observer")

_ACTIONS = {"create": "C", "read": "R", "vread": "R", "update": "U", "patch": "U", "delete": "D",
            "search-type": "E", "search-system": "E", "history-instance": "R", "history-type": "R",
            "history-system": "R", "operation": "E", "batch": "E", "transaction": "E", "capabilities": "R"}
_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "Restful Operation"}


def outcome_code(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (client error), 8 serious failure (server)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def build_event(*, interaction: str, status: int, who: str, client_id: str, organization: str | None,
                address: str | None, resources: list[str], patients: list[str], query: str | None,
                observer: str, recorded: int | None = None) -> dict:
    """The AuditEvent of one access (IHE BALP "Basic Audit Log Patterns", RESTful activity)."""
    ev: dict = {
        "resourceType": "AuditEvent",
        "type": _REST,
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": _ACTIONS.get(interaction, "E"),
        "recorded": instant(recorded or now_us()),
        "outcome": outcome_code(status),
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP" if client_id else "AUT"}]},
            "who": {"identifier": {"system": "urn:yilian:principal", "value": who}},
            "altId": client_id or None,
            "requestor": True,
            **({"network": {"address": address, "type": "2"}} if address else {}),
        }],
        "source": {"observer": {"display": observer},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4"}]},
    }
    if not ev["agent"][0]["altId"]:
        del ev["agent"][0]["altId"]
    if organization:
        ev["agent"][0]["who"]["display"] = organization
    entities = []
    for pid in dict.fromkeys(patients):
        entities.append({"what": {"reference": f"Patient/{pid}"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})
    for ref in dict.fromkeys(resources):
        if ref.startswith("Patient/") and ref.split("/")[1] in patients:
            continue
        entities.append({"what": {"reference": ref},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"}})
    if query:
        entities.append({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
                         "query": base64.b64encode(query.encode()).decode()})
    if entities:
        ev["entity"] = entities
    return ev


@lru_cache(maxsize=1)
def _reference_targets() -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]:
    reg = get_registry()
    return reg.get("AuditEvent", "agent").targets, reg.get("AuditEvent", "entity").targets, reg.resource_types


@lru_cache(maxsize=4096)
def _agent_row(who: str) -> tuple | None:
    """The ``agent`` reference row of the template's agent (an identifier, no reference)."""
    agent_targets, _, rtypes = _reference_targets()
    return reference_rows("agent", {"identifier": {"system": "urn:yilian:principal", "value": who}},
                          agent_targets, rtypes)


@lru_cache(maxsize=16384)  # a few MB at most
def _what_row(reference: str) -> tuple | None:
    """The ``entity`` row of an entity whose ``what`` is ``{"reference": reference}`` (the
    template's only shape); the same few patients and resources are read over and over, so they
    are parsed once. The ``patient`` parameter (``agent.who.where(resolve() is Patient) |
    entity.what.where(resolve() is Patient)``) has no rows of its own: it is read from the
    ``agent`` and ``entity`` rows of target type Patient (``SearchParam.derived_from``)."""
    _, entity_targets, rtypes = _reference_targets()
    return reference_rows("entity", {"reference": reference}, entity_targets, rtypes)


def event_index(ev: dict) -> IndexRows:
    """The search index rows of an AuditEvent made by :func:`build_event`: the rows
    ``extract_index`` gives for it (a test proves it for every shape build_event makes), read
    straight from the few places the template fills instead of evaluating every AuditEvent
    search parameter's FHIRPath over the event (two thirds of the CPU of materializing)."""
    agent = ev["agent"][0]
    entities = ev.get("entity", ())
    idx = IndexRows()
    network = agent.get("network")
    if network is not None:
        address = network["address"]  # clipped to the columns' size as extract_index clips
        idx.string.append(("address", normalize_string(address)[:INDEX_STR_MAX], address[:INDEX_STR_MAX]))
    token = idx.token
    token.append(("action", None, ev["action"], None, None, None))
    if "altId" in agent:
        token.append(("altid", None, agent["altId"][:INDEX_STR_MAX], None, None, None))
    for e in entities:
        token.append(("entity-role", e["role"]["system"], e["role"]["code"], None, None, None))
    for e in entities:
        if "type" in e:
            token.append(("entity-type", e["type"]["system"], e["type"]["code"], None, None, None))
    token.append(("outcome", None, ev["outcome"], None, None, None))
    for c in ev["subtype"]:
        token.append(("subtype", c["system"], c["code"], None, None, None))
    t = ev["type"]
    token.append(("type", t["system"], t["code"], normalize_string(t["display"]), None, None))
    idx.token = list(dict.fromkeys(token))
    refs = []
    row = _agent_row(agent["who"]["identifier"]["value"])
    if row is not None:
        refs.append(row)
    refs.extend([row for row in (_what_row(e["what"]["reference"]) for e in entities if "what" in e)
                 if row is not None])
    idx.reference = list(dict.fromkeys(refs))
    low, high = parse_date_range(ev["recorded"])
    idx.date.append(("date", low, high))
    return idx


@lru_cache(maxsize=None)
def _journal_insert(dialect: str) -> str:
    """The journal INSERT in the driver's parameter style: rows are plain tuples sent with the
    DBAPI's executemany, the cheapest write there is."""
    mark = "?" if dialect == "sqlite" else "%s"
    return (f"INSERT INTO {audit_journal.name} ({', '.join(_JOURNAL_COLS)}) "
            f"VALUES ({', '.join([mark] * len(_JOURNAL_COLS))})")


def materialize(engine: Engine, *, limit: int = 500, store: FhirStore | None = None) -> int:
    """Turn up to ``limit`` of the oldest journal rows into AuditEvent resources (with their
    search indexes) and remove them from the journal; returns how many (0: the journal is empty).

    ``recorded`` keeps the time of the access; ``meta.lastUpdated`` is when the resource was
    stored, so that history polling with ``_since`` never misses one. The events and their
    index rows are made before the write transaction, which only deletes the rows and stores
    the events, so the database's write lock is held briefly. A row becomes exactly one event
    even with several materializers (other worker processes): their transactions are serialized
    (SQLite's write lock, a PostgreSQL advisory lock), each deletes its rows first, and if
    another materializer already took some of them it rolls back and starts again.
    """
    store = store or FhirStore()
    while True:
        with engine.connect() as conn:
            rows = conn.execute(select(audit_journal).order_by(_J.seq).limit(limit)).all()
        if not rows:
            return 0
        ts = now_us()
        versions = []
        for r in rows:
            ev = build_event(interaction=r.interaction, status=r.status, who=r.who, client_id=r.client_id,
                             organization=r.organization, address=r.address,
                             resources=orjson.loads(r.resources), patients=orjson.loads(r.patients),
                             query=r.query, observer=r.observer, recorded=r.recorded)
            rid = new_id()
            resource = stamp("AuditEvent", rid, ev, 1, ts)
            v = Version("AuditEvent", rid, 1, ts, "POST", resource, True)
            v.content = orjson.dumps(resource).decode()
            v.index = event_index(resource)
            versions.append(v)
        try:
            with write_tx(engine) as conn:
                if conn.dialect.name == "postgresql":  # one materializer at a time: no deadlocks
                    conn.execute(text("SELECT pg_advisory_xact_lock(7261002)"))
                taken = conn.execute(delete(audit_journal).where(_J.seq.in_([r.seq for r in rows]))).rowcount
                if taken != len(rows):
                    raise _Overtaken
                store.write(conn, versions)
        except _Overtaken:
            continue
        return len(rows)


class _Overtaken(Exception):
    """Another materializer took some of the rows first (the transaction is rolled back)."""


def materialize_all(engine: Engine, *, store: FhirStore | None = None) -> int:
    """Materialize the whole journal (in chunks, one transaction each); returns how many."""
    total = 0
    while True:
        n = materialize(engine, store=store)
        total += n
        if n == 0:
            return total


def journal_backlog(engine: Engine) -> int:
    """About how many accesses wait in the journal (the span of its sequence numbers: rows
    leave oldest first, so the span is the count up to the few in-flight gaps); two index
    lookups whatever the length."""
    with engine.connect() as conn:
        lo, hi = conn.execute(select(func.min(_J.seq), func.max(_J.seq))).one()
    return 0 if lo is None else hi - lo + 1


def has_pending(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(_J.seq).limit(1)).first() is not None


class AuditSink:
    """Queues accesses and writes them to the journal in batches from a background thread,
    which also turns journal rows into AuditEvents, keeping the journal short."""

    def __init__(self, engine: Engine, *, flush_interval: float = 0.2, max_batch: int = 2000,
                 max_queued: int = 3000, idle_chunk: int = 500, busy_chunk: int = 200,
                 max_backlog: int = 100_000, catch_up_chunk: int = 1000):
        self.engine = engine
        self.store = FhirStore()
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.idle_chunk = idle_chunk
        self.busy_chunk = busy_chunk
        self.max_backlog = max_backlog
        self.catch_up_chunk = catch_up_chunk
        self.max_queued = max_queued
        # a deque, not a queue.Queue: appending is one atomic step under the GIL, no lock and
        # no condition per access; only a request that finds it full takes ``_room`` (see _put)
        self._pending: collections.deque[tuple | dict] = collections.deque()
        self._room = threading.Condition()
        self._retry: list[tuple | dict] = []  # a batch the database refused, written again next round
        self._closing = threading.Event()
        self._maybe_pending = True  # rows may wait in the journal (from this or an earlier run)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._stopped = threading.Event()
        self._thread.start()

    def record_access(self, *, interaction: str, status: int, who: str, client_id: str | None,
                      organization: str | None, address: str | None, resources: list[str],
                      patients: list[str], query: str | None, observer: str) -> None:
        """Record one access (the fields of :func:`build_event`); returns at once."""
        self._put((now_us(), interaction, status, who, client_id or None, organization, address,
                   patients, resources, query, observer))

    def record(self, event: dict) -> None:
        """Record a complete AuditEvent resource (for events that are not a REST access)."""
        self._put(event)

    def _put(self, item: tuple | dict) -> None:
        # A thread inside a write transaction holds the write lock the writer needs to make room:
        # waiting would deadlock until the database's busy timeout (and then the writer's batch
        # would fail), so its record goes past the bound. The bound is checked without a lock:
        # requests arriving together may pass it by one record each, never more.
        if len(self._pending) >= self.max_queued and not in_write_tx():
            with self._room:  # back-pressure: wait for room
                while len(self._pending) >= self.max_queued and not self._stopped.is_set():
                    self._room.wait(self.flush_interval)
        self._pending.append(item)
        # Appended first, checked second, while the writer sets ``_stopped`` first and drains
        # second: a record the writer's last drain can miss is always one that sees the flag
        # here, and its caller writes it (see _write_after_stop)
        if self._stopped.is_set():
            self._write_after_stop()

    def _write_after_stop(self) -> bool:
        """Write what is queued now that the writer thread has stopped (records arriving during
        or after ``close()``: requests still finishing while the hub shuts down). A caller
        inside a write transaction holds the lock that write needs: a thread writes for it once
        the transaction ends (not a daemon, so the interpreter waits for it at exit). False when
        the database refused a batch (kept queued)."""
        if in_write_tx():
            threading.Thread(target=self._write_after_stop, name="audit-late-writer").start()
            return True
        while self._pending:
            batch = []
            while self._pending and len(batch) < self.max_batch:
                try:
                    batch.append(self._pending.popleft())
                except IndexError:  # another caller drained it meanwhile
                    break
            if batch and not self._write(batch):
                self._pending.extendleft(reversed(batch))  # kept for the next attempt
                return False
        return True

    def _run(self) -> None:
        # The writer sleeps between batches instead of waiting on the queue: a request's put
        # then never wakes a thread (no GIL hand-over per access), and a batch holds up to
        # ``flush_interval`` seconds of accesses, one transaction for all of them.
        while True:
            closing = self._closing.wait(self.flush_interval)
            wrote = False
            while True:
                batch, self._retry = self._retry, []
                pending = self._pending
                taken = min(len(pending), self.max_batch - len(batch))
                if taken > 0:
                    batch.extend([pending.popleft() for _ in range(taken)])
                    with self._room:
                        self._room.notify_all()
                if batch:
                    if not self._write(batch):
                        self._retry = batch
                        break
                    wrote = True
                if len(batch) < self.max_batch:
                    break
            if closing and not self._retry:
                self._stopped.set()
                # what was queued between the last batch and the flag; a refused write is tried
                # again, as before the flag (close() waits for this thread up to its timeout)
                while not self._write_after_stop():
                    time.sleep(0.1)
                return
            self._materialize_some(idle=not wrote)

    def _materialize_some(self, *, idle: bool) -> None:
        """Keep the journal short. Every round makes up to ``busy_chunk`` AuditEvents while
        accesses arrive and ``idle_chunk`` once they stop. When the journal is longer than
        ``max_backlog`` (accesses arrive faster than events are made) the round makes
        ``catch_up_chunk`` events before it takes the next batch: meanwhile the queue fills
        and requests wait for room, so a sustained load settles at the rate at which accesses
        can be both served and turned into AuditEvents, and an AuditEvent query never waits
        for more than about ``max_backlog`` events to be made."""
        if not self._maybe_pending:
            return
        try:
            backlog = journal_backlog(self.engine)
            if backlog == 0:
                self._maybe_pending = False
                return
            if backlog > self.max_backlog:
                chunk = self.catch_up_chunk
            else:
                chunk = self.idle_chunk if idle else self.busy_chunk
            materialize(self.engine, limit=chunk, store=self.store)
        except Exception:  # busy database, or shutting down: try again next round
            log.warning("could not materialize audit events now; will retry", exc_info=True)

    def _write(self, batch: list) -> bool:
        rows = [r[:7] + (orjson.dumps(r[7]).decode(), orjson.dumps(r[8]).decode()) + r[9:]
                for r in batch if isinstance(r, tuple)]
        events = [e for e in batch if isinstance(e, dict)]
        try:
            with write_tx(self.engine) as conn:
                if rows:
                    cursor = conn.connection.driver_connection.cursor()
                    try:
                        cursor.executemany(_journal_insert(conn.dialect.name), rows)
                    finally:
                        cursor.close()
                if events:
                    self.store.write(conn, [self.store.prepare_create("AuditEvent", ev) for ev in events])
            self._maybe_pending = True
            return True
        except Exception:  # the audit trail must not take the API down: report, keep, retry
            log.exception("could not write %d audit records now; they are kept and written again", len(batch))
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued to the journal (it is materialized on the next AuditEvent access
        or idle moment, by this process or the next)."""
        self._closing.set()
        self._thread.join(timeout)  # after its last drain, not only its flag: that drain is written too
