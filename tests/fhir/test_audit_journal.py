"""The compact audit journal (hub.audit) on both engines: every access becomes exactly one
AuditEvent, whichever process materializes it and whenever; nothing queued is lost on shutdown."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from hub.audit import AuditSink, audit_journal, materialize_all
from hub.fhir.store import FhirStore
from hub.storage.engine import make_engine
from hub.storage.migrate import upgrade
from hub.storage.schema import resources
from tests.conftest import RunningHub, make_settings, unique


@pytest.fixture(scope="module")
def engine(db_url):
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _journal_rows(engine) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_journal)).scalar_one()


def _audit_events_of(engine, who: str) -> list[dict]:
    store = FhirStore()
    with engine.connect() as c:
        rows = c.execute(select(resources.c.res_id).where(resources.c.res_type == "AuditEvent")).all()
        found = store.read_many(c, [("AuditEvent", r.res_id) for r in rows])
    events = [s.resource() for s in found]
    return [e for e in events if e["agent"][0]["who"]["identifier"]["value"] == who]


def _record(sink: AuditSink, who: str, n: int) -> None:
    for i in range(n):
        sink.record_access(interaction="read", status=200 if i % 2 else 404, who=who, client_id="app-1",
                           organization="HOSPA", address="10.0.0.7", resources=[f"Observation/o{i}"],
                           patients=[f"p{i}"], query=None, observer="http://hub.test/fhir")


def test_closing_the_sink_writes_every_queued_access_to_the_journal(engine):
    who = unique("closer-")
    sink = AuditSink(engine, flush_interval=60)  # never idle: only close() can write
    before = _journal_rows(engine)
    _record(sink, who, 25)
    sink.close()
    assert _journal_rows(engine) == before + 25
    materialize_all(engine)
    assert _journal_rows(engine) == 0
    events = _audit_events_of(engine, who)
    assert len(events) == 25
    assert sorted(e["outcome"] for e in events).count("4") == 13  # the 404s (even i) are minor failures
    e = events[0]
    assert e["agent"][0]["altId"] == "app-1" and e["agent"][0]["who"]["display"] == "HOSPA"
    assert e["agent"][0]["network"]["address"] == "10.0.0.7"
    for e in events:
        refs = {x["what"]["reference"] for x in e["entity"]}
        i = next(r for r in refs if r.startswith("Patient/")).split("/p")[1]
        assert refs == {f"Patient/p{i}", f"Observation/o{i}"}


def test_concurrent_materializers_make_each_row_exactly_one_event(engine):
    who = unique("race-")
    sink = AuditSink(engine, flush_interval=60)
    _record(sink, who, 300)
    sink.close()
    done: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            done.append(materialize_all(engine))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(done) >= 300
    events = _audit_events_of(engine, who)
    assert len(events) == 300
    assert len({e["id"] for e in events}) == 300


def test_the_recorded_time_is_the_time_of_the_access(engine):
    who = unique("clock-")
    sink = AuditSink(engine, flush_interval=60)
    t0 = time.time()
    _record(sink, who, 1)
    sink.close()
    time.sleep(0.05)
    materialize_all(engine)
    (ev,) = _audit_events_of(engine, who)
    from datetime import datetime

    recorded = datetime.fromisoformat(ev["recorded"].replace("Z", "+00:00")).timestamp()
    stored = datetime.fromisoformat(ev["meta"]["lastUpdated"].replace("Z", "+00:00")).timestamp()
    assert t0 - 1 <= recorded <= stored


def test_accesses_survive_a_restart_and_are_found_through_http(db_url, tmp_path):
    """Accesses journalled by one hub are AuditEvents for the next one; includes see them too."""
    subject = unique("restart-")
    settings = make_settings(db_url, tmp_path)
    with RunningHub(settings) as h:
        with h.client() as admin:
            pid = admin.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        with h.client("user/Patient.rs", subject=subject) as c:
            for _ in range(3):
                assert c.get(f"/Patient/{pid}").status_code == 200
    with RunningHub(make_settings(db_url, tmp_path)) as h2, h2.client() as admin:
        # no waiting: what the first hub flushed on shutdown is there at once
        found = admin.get("/AuditEvent", params={"entity": f"Patient/{pid}", "_count": 100}).json()
        mine = [e["resource"] for e in found.get("entry", [])
                if e["resource"]["agent"][0]["who"]["identifier"]["value"] == subject]
        assert len(mine) == 3 and {e["subtype"][0]["code"] for e in mine} == {"read"}
        inc = admin.get("/Patient", params={"_id": pid, "_revinclude": "AuditEvent:entity"}).json()
        included = [e for e in inc["entry"] if e["search"]["mode"] == "include"]
        assert sum(e["resource"]["agent"][0]["who"]["identifier"]["value"] == subject for e in included) == 3
        one = mine[0]["id"]
        assert admin.get(f"/AuditEvent/{one}").json()["id"] == one


def test_the_writer_turns_the_journal_into_events_while_accesses_keep_coming(engine):
    """Busy rounds and catch-up rounds (journal over ``max_backlog``) both make events; in the
    end every access is exactly one AuditEvent, with no AuditEvent query to trigger it."""
    who = unique("busy-")
    sink = AuditSink(engine, flush_interval=0.02, busy_chunk=5, max_backlog=40, catch_up_chunk=30, max_queued=50)
    try:
        for _ in range(20):
            _record(sink, who, 20)
        deadline = time.time() + 30
        while _journal_rows(engine) and time.time() < deadline:
            time.sleep(0.05)
        assert _journal_rows(engine) == 0
    finally:
        sink.close()
    events = _audit_events_of(engine, who)
    assert len(events) == 400 and len({e["id"] for e in events}) == 400


def _journal_rows_of(engine, who: str) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_journal).where(audit_journal.c.who == who)).scalar_one()


def test_accesses_recorded_while_and_after_the_sink_closes_reach_the_journal(engine):
    """Requests still finishing while the hub shuts down record accesses as the writer stops and
    after: none may be lost (the writer's last drain raced with them, and later ones waited in
    a queue nobody read)."""
    who = unique("closing-race-")
    sink = AuditSink(engine, flush_interval=0.01)
    recorded = [0] * 4
    stop = threading.Event()

    def recorder(k: int) -> None:
        while not stop.is_set():
            _record(sink, who, 1)
            recorded[k] += 1
            time.sleep(0.001)

    threads = [threading.Thread(target=recorder, args=(k,)) for k in range(len(recorded))]
    for t in threads:
        t.start()
    time.sleep(0.1)
    sink.close()
    time.sleep(0.1)  # the recorders go on after close() returned
    stop.set()
    for t in threads:
        t.join()
    _record(sink, who, 1)  # and one more, long after
    materialize_all(engine)  # the writer made events of some rows already: count them all as events
    assert len(_audit_events_of(engine, who)) == sum(recorded) + 1


def test_recording_inside_a_write_transaction_never_waits_for_the_writer(engine):
    """A caller holding the write lock records more accesses than the queue holds: waiting for
    room would wait on the writer, which needs that lock (on SQLite a deadlock until the busy
    timeout, then a failed batch). The records overflow instead and all reach the journal."""
    from hub.storage.db import write_tx

    who = unique("in-tx-")
    sink = AuditSink(engine, max_queued=5, flush_interval=0.05)
    done = threading.Event()

    def inside_a_transaction():
        with write_tx(engine):
            _record(sink, who, 40)
        done.set()

    t = threading.Thread(target=inside_a_transaction)
    t.start()
    assert done.wait(20), "recording inside a write transaction blocked"
    t.join()
    sink.close()
    assert _journal_rows_of(engine, who) == 40


def test_a_batch_the_database_refuses_is_kept_and_written_later(engine, db_url, tmp_path):
    """The writer's transaction fails while another connection holds the database (SQLite:
    an exclusive lock past the busy timeout); the batch is written once the database is back."""
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's exclusive lock is how this test makes the database refuse a write")
    import sqlite3

    from sqlalchemy import create_engine

    quick = create_engine(db_url, connect_args={"timeout": 0.05, "isolation_level": None})
    who = unique("refused-")
    sink = AuditSink(quick, flush_interval=0.05)
    blocker = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        _record(sink, who, 7)
        time.sleep(0.5)  # several writer rounds fail meanwhile
        assert _journal_rows_of(engine, who) == 0
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    sink.close()
    quick.dispose()
    # the writer may already have made events of some rows (it materializes as it goes): count all
    materialize_all(engine)
    assert _journal_rows_of(engine, who) == 0
    assert len(_audit_events_of(engine, who)) == 7


# --------------------------------------------------------------------------- the event template
# materialize builds the index rows of its events directly (hub.audit.event_index) and writes
# them without fhir.resources: these tests prove both give what the generic path would.

_INTERACTIONS = ["create", "read", "vread", "update", "patch", "delete", "search-type", "search-system",
                 "history-instance", "history-type", "history-system", "operation", "batch", "transaction",
                 "capabilities", "something-else"]
_SHAPES = [  # (who, client_id, organization, address, resources, patients, query)
    ("u1", "app-1", "HOSPA", "10.0.0.7", ["Observation/o1"], ["p1"], None),
    ("u1", None, None, None, [], [], None),
    ("", "", "", "", [], [], ""),
    ("Dr. Zoë Müller", "应用", "Hôpital Ärzte", "::1", ["Patient/p1", "Patient/p2", "Patient/p1"], ["p1", "p1"],
     "Observation?patient=p1&code=http://loinc.org|1234-5"),
    ("svc", "c", None, "Ärzte-PC", ["http://other.org/fhir/Patient/9", "Patient/p3/_history/2",
                                    "urn:uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "Observation?code=x",
                                    "plain-id", "Binary/b1", "#contained"], [], "a"),
    ("svc", "c", "O", "1.2.3.4", ["Patient/p1"], ["p1", "p9"], None),
    # longer than the index columns (hub.storage.schema.INDEX_STR_MAX): clipped as extract_index clips
    ("w" * 300, "ç" * 300, "O", "Ä" * 300, ["Patient/p1"], ["p1"], "q" * 300),
]


def _template_events():
    from hub.audit import build_event
    from hub.fhir.store import stamp

    for i, interaction in enumerate(_INTERACTIONS):
        for j, (who, client, org, addr, res, pats, query) in enumerate(_SHAPES):
            status = (200, 201, 404, 409, 500)[(i + j) % 5]
            ev = build_event(interaction=interaction, status=status, who=who, client_id=client, organization=org,
                             address=addr, resources=res, patients=pats, query=query,
                             observer="http://hub.test/fhir", recorded=1_700_000_000_123_456 + i * 7919 + j)
            yield stamp("AuditEvent", f"ae-{i}-{j}", ev, 1, 1_764_000_000_000_001 + j)


def test_accesses_queued_as_the_writer_stops_are_written_even_if_that_write_is_refused_once(engine):
    """Accesses that arrive between the writer's last batch and its stop flag are written by a
    last drain; when the database refuses that drain, the writer tries again instead of leaving
    them queued in a process about to exit."""
    who = unique("late-refused-")
    sink = AuditSink(engine, flush_interval=60)
    real_write, refused = sink._write, []

    def write_refusing_once_after_stop(batch):
        if sink._stopped.is_set() and not refused:
            refused.append(len(batch))
            return False
        return real_write(batch)

    class StopFlag(threading.Event):
        def set(self):
            _record(sink, who, 3)  # arriving in the window before the flag is raised
            super().set()

    sink._write = write_refusing_once_after_stop
    sink._stopped = StopFlag()
    sink.close()
    assert refused == [3]
    assert _journal_rows_of(engine, who) == 3


def test_the_direct_index_of_an_event_is_what_the_generic_extractor_gives():
    from hub.audit import event_index
    from hub.fhir.search.extract import extract_index

    events = list(_template_events())
    assert len(events) == len(_INTERACTIONS) * len(_SHAPES)
    for ev in events:
        assert event_index(ev) == extract_index(ev), ev


def test_every_event_the_template_makes_is_a_valid_audit_event():
    from hub.fhir.validation import validate_resource

    checked = 0
    for ev in _template_events():
        if ev["agent"][0]["who"]["identifier"]["value"] == "":
            continue  # an empty subject is no FHIR string; the hub authenticates none (index test only)
        validate_resource(ev, "AuditEvent")  # raises InvalidResource with the element at fault
        checked += 1
    assert checked == len(_INTERACTIONS) * (len(_SHAPES) - 1)


def test_materialized_events_and_their_index_rows_are_those_of_the_generic_path(engine):
    """What is stored for a journal row: the resource FhirStore.prepare_create makes of
    build_event's event, and the index rows extract_index gives for it."""
    from hub.audit import build_event
    from hub.fhir.search.extract import extract_index
    from hub.fhir.store import stamp
    from hub.storage.schema import INDEX_TABLES

    who = unique("template-")
    sink = AuditSink(engine, flush_interval=60)
    for interaction in ("read", "search-type", "delete"):
        for k, (_, client, org, addr, res, pats, query) in enumerate(_SHAPES):
            sink.record_access(interaction=interaction, status=200, who=f"{who}-{interaction}-{k}",
                               client_id=client, organization=org,
                               address=addr, resources=res, patients=pats, query=query, observer="http://hub.test/fhir")
    sink.close()
    with engine.connect() as c:
        journal = c.execute(select(audit_journal).where(audit_journal.c.who.startswith(who + "-"))
                            .order_by(audit_journal.c.seq)).all()
    materialize_all(engine)
    by_who = {}
    for r in journal:
        (by_who[r.who],) = _audit_events_of(engine, r.who)
    assert len(by_who) == len(journal) == 3 * len(_SHAPES)
    store = FhirStore()
    with engine.connect() as c:
        for r in journal:
            import orjson

            ev = by_who[r.who]
            (stored,) = store.read_many(c, [("AuditEvent", ev["id"])])
            expected = stamp("AuditEvent", ev["id"],
                             build_event(interaction=r.interaction, status=r.status, who=r.who, client_id=r.client_id,
                                         organization=r.organization, address=r.address,
                                         resources=orjson.loads(r.resources), patients=orjson.loads(r.patients),
                                         query=r.query, observer=r.observer, recorded=r.recorded),
                             1, stored.last_updated)
            assert orjson.loads(stored.content) == expected
            if engine.dialect.name == "sqlite":  # stored as written (PostgreSQL's jsonb reorders keys)
                assert stored.content == orjson.dumps(expected).decode()
            want = extract_index(expected)
            for kind, (table, cols) in INDEX_TABLES.items():
                got = c.execute(select(*[table.c[n] for n in cols]).where(
                    table.c.res_type == "AuditEvent", table.c.res_id == ev["id"])).all()
                assert sorted(map(tuple, got), key=repr) == sorted(getattr(want, kind), key=repr), kind
