"""The statements the ingest runs per message and per request, both engines: the raw log stores a
request in statements that do not grow with its items, and on SQLite a message's transaction
reads the stored current versions of its entries once (the stale guard's read)."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import event

from hub.ingest import log as rawlog
from hub.ingest.normalize import RawMessage
from hub.storage.db import write_tx
from tests.ingest.conftest import ORG, oru_r01


def test_the_raw_log_stores_a_request_in_statements_that_do_not_grow_with_its_items(hub):
    engine = hub.hub.engine
    seen: list[str] = []

    me = threading.get_ident()

    def before(conn, cursor, statement, parameters, context, executemany):
        if threading.get_ident() == me:  # not the hub's background threads (audit, workers)
            seen.append(statement)

    def store(n: int) -> list[rawlog.Stored]:
        items = [rawlog.Incoming(item_id=str(uuid.uuid4()), kind="hl7v2",
                                 payload=oru_r01("MRN1", uuid.uuid4().hex[:10])) for _ in range(n)]
        seen.clear()
        stored = rawlog.store_items(engine, ORG, "fep-hosp-a", items)
        assert [s.item_id for s in stored] == [it.item_id for it in items]
        assert all(s.new and s.outcome_id == s.message_id for s in stored)
        return stored

    event.listen(engine, "before_cursor_execute", before)
    try:
        store(2)
        few = len(seen)
        stored = store(40)
        many = len(seen)
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert many == few
    # each item got its own row's id, in order
    with engine.connect() as conn:
        rows = {r.id: r.item_id for r in conn.execute(
            rawlog.select(rawlog.M.c.id, rawlog.M.c.item_id).where(rawlog.M.c.id.in_([s.message_id for s in stored])))}
    assert [rows[s.message_id] for s in stored] == [s.item_id for s in stored]


def test_a_message_reads_the_versions_its_transaction_follows_once(hub):
    h = hub.hub
    if h.engine.dialect.name != "sqlite":
        pytest.skip("on PostgreSQL the transaction reads them itself, FOR UPDATE on the rows it writes only")
    norm = h.ingest.normalizer
    mrn, filler = f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:10]
    first = norm.prepare(RawMessage(1, ORG, "hl7v2", oru_r01(mrn, filler, value=5.0)))
    with write_tx(h.engine) as conn:
        assert norm.apply(conn, first).ack_code == "AA"
    again = norm.prepare(RawMessage(2, ORG, "hl7v2", oru_r01(mrn, filler, value=6.0)))
    reads: list[str] = []
    with write_tx(h.engine) as conn:
        raw = conn.connection.driver_connection
        raw.set_trace_callback(lambda sql: reads.append(sql) if sql.lstrip().upper().startswith("SELECT")
                               and " FROM resources " in f"{sql} " else None)
        try:
            outcome = norm.apply(conn, again)
        finally:
            raw.set_trace_callback(None)
    assert outcome.ack_code == "AA", outcome.error_text
    assert len(reads) == 1, reads
    observations = [r for r in outcome.resources if r.startswith("Observation/")]
    assert observations
    with h.engine.connect() as conn:
        for ref in observations:
            stored = h.fhir.store.read(conn, *ref.split("/"))
            assert stored.version == 2 and stored.resource()["valueQuantity"]["value"] in (7.0, 8.0, 9.0)
