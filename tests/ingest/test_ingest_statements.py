"""The statements the ingest runs per message and per request, both engines: the raw log stores a
request in statements that do not grow with its items."""

from __future__ import annotations

import uuid

from sqlalchemy import event

from hub.ingest import log as rawlog
from tests.ingest.conftest import ORG, oru_r01


def test_the_raw_log_stores_a_request_in_statements_that_do_not_grow_with_its_items(hub):
    engine = hub.hub.engine
    seen: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
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
