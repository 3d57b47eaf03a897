"""Versions and history with the current version kept in ``resources`` only (migration
0004_fhir_history), over real HTTP on both engines: a create writes no history row, an update
moves the version it replaces to ``resource_history``, and vread, instance, type and system
history answer every version as before (the migration of a populated store:
test_history_migration_0004.py)."""

from __future__ import annotations

import re

from sqlalchemy import select, text

from hub.storage.schema import resource_history, resources
from tests.conftest import unique


def _history_rows(engine, rid: str) -> list[tuple[int, str]]:
    with engine.connect() as c:
        return sorted(tuple(r) for r in c.execute(
            select(resource_history.c.version, resource_history.c.method).where(resource_history.c.res_id == rid)))


def _lifecycle(fhir) -> str:
    """Create, update, patch-like update, delete and create again: versions 1-5."""
    tag = unique("hist")
    body = {"resourceType": "Patient", "meta": {"tag": [{"system": "urn:yilian:test", "code": tag}]}, "gender": "male"}
    rid = fhir.post("/Patient", json=body).json()["id"]
    for gender in ("female", "other"):
        assert fhir.put(f"/Patient/{rid}", json={**body, "id": rid, "gender": gender}).status_code == 200
    assert fhir.delete(f"/Patient/{rid}").status_code in (200, 204)
    assert fhir.put(f"/Patient/{rid}", json={**body, "id": rid, "gender": "unknown"}).status_code in (200, 201)
    return rid


def test_a_create_writes_no_history_row_and_updates_move_the_replaced_version(hub, fhir):
    rid = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()["id"]
    assert _history_rows(hub.hub.engine, rid) == []
    rid = _lifecycle(fhir)
    assert _history_rows(hub.hub.engine, rid) == [(1, "POST"), (2, "PUT"), (3, "PUT"), (4, "DELETE")]
    with hub.hub.engine.connect() as c:
        cur = c.execute(select(resources.c.version, resources.c.method, resources.c.deleted)
                        .where(resources.c.res_id == rid)).one()
    assert tuple(cur) == (5, "PUT", False)


def test_vread_and_history_answer_every_version(fhir):
    rid = _lifecycle(fhir)
    genders = {1: "male", 2: "female", 3: "other", 5: "unknown"}
    for v, g in genders.items():
        r = fhir.get(f"/Patient/{rid}/_history/{v}")
        assert r.status_code == 200 and r.json()["gender"] == g and r.json()["meta"]["versionId"] == str(v)
    assert fhir.get(f"/Patient/{rid}/_history/4").status_code == 410
    assert fhir.get(f"/Patient/{rid}/_history/6").status_code == 404
    h = fhir.get(f"/Patient/{rid}/_history").json()
    assert h["total"] == 5
    assert [e["request"]["method"] for e in h["entry"]] == ["PUT", "DELETE", "PUT", "PUT", "POST"]
    assert [e.get("resource", {}).get("meta", {}).get("versionId") for e in h["entry"]] == ["5", None, "3", "2", "1"]
    # paging runs over both tables in one order
    paged = []
    for offset in range(0, 5, 2):
        page = fhir.get(f"/Patient/{rid}/_history", params={"_count": 2, "_offset": offset}).json()
        assert page["total"] == 5
        paged += [e["request"]["method"] for e in page.get("entry", [])]
    if len(paged) == 5:  # the server pages by _offset
        assert paged == ["PUT", "DELETE", "PUT", "PUT", "POST"]


def _plan(conn, sql: str) -> str:
    if conn.dialect.name == "sqlite":
        return "\n".join(r[-1] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    conn.execute(text("SET enable_seqscan = off"))
    return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))


def test_history_reads_both_tables_in_time_order_by_index(hub):
    """System and type history merge two index scans in last_updated order: neither table is
    read whole and sorted."""
    store, engine = hub.hub.fhir.store, hub.hub.engine
    for kw in ({}, {"res_type": "Patient"}, {"res_type": "Patient", "since": 1}, {"res_type": "Patient", "res_id": "x"}):
        with engine.connect() as conn:
            plan = _plan(conn, _literal_history(store, engine, kw))
        assert not re.search(r"SCAN (resources|resource_history)(?! USING)|Seq Scan", plan), plan
        if engine.dialect.name == "sqlite" and not kw.get("res_id"):
            assert "MERGE (UNION ALL)" in plan, plan


def _literal_history(store, engine, kw) -> str:
    """The history statement of ``FhirStore.history`` compiled with literal values."""
    captured = {}

    class _Conn:
        dialect = engine.dialect

        def execute(self, q):
            captured["q"] = q
            return []

    store.history(_Conn(), count=10, with_total=False, **kw)
    return str(captured["q"].compile(engine, compile_kwargs={"literal_binds": True}))


def test_a_write_prepared_from_an_overtaken_read_is_refused(hub, fhir):
    """Two updates prepared from the same version: the second, written after the first, would
    store that version number twice; it answers 409 Conflict instead and stores nothing."""
    from hub.errors import Conflict
    from hub.storage.db import write_tx

    store, engine = hub.hub.fhir.store, hub.hub.engine
    rid = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()["id"]
    with engine.connect() as conn:
        cur = store.read(conn, "Patient", rid)
    first = store.prepare_update(None, "Patient", rid, {"resourceType": "Patient", "gender": "female"}, current=cur)
    second = store.prepare_update(None, "Patient", rid, {"resourceType": "Patient", "gender": "other"}, current=cur)
    with write_tx(engine) as conn:
        store.write(conn, [first])
    try:
        with write_tx(engine) as conn:
            store.write(conn, [second])
        raise AssertionError("the overtaken write was stored")
    except Conflict:
        pass
    assert fhir.get(f"/Patient/{rid}").json()["gender"] == "female"
    assert _history_rows(engine, rid) == [(1, "POST")]
