"""Migration 0004_fhir_history converts a populated store (every version in the history) to the
layout with the current version in ``resources`` only, and back, over real HTTP on both engines.

In a module of its own: the database a module's tests share (``db_url``) is also the one the
module-scoped ``hub`` fixture keeps running on, and a downgrade and a migrating start beneath a
running hub raced its writers (on SQLite the start's migration failed with "database is locked"
when run with the rest of test_history_layout.py) and counted their resources in the totals."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, func, select

from hub.storage.migrate import alembic_config
from hub.storage.schema import resource_history, resources
from tests.conftest import RunningHub, make_settings
from tests.storage.test_history_layout import _history_rows, _lifecycle


def test_migration_0004_history_converts_a_populated_store(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path / "data")
    with RunningHub(settings) as h:
        with h.client() as fhir:
            rid = _lifecycle(fhir)
            other = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()["id"]

            def answers():
                # (fullUrl names the server's port, another one each start)
                out = [[{k: v for k, v in e.items() if k != "fullUrl"}
                        for e in fhir.get(f"/Patient/{rid}/_history").json()["entry"]],
                       [fhir.get(f"/Patient/{rid}/_history/{v}").status_code for v in range(1, 7)],
                       fhir.get(f"/Patient/{other}/_history/1").json()]
                total = fhir.get("/Patient/_history").json()["total"]
                return out, total
            before, total_before = answers()

    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0004_fhir_write")
        with engine.connect() as conn:  # as the store was: every version in the history
            assert conn.execute(select(func.count()).select_from(resource_history)
                                .where(resource_history.c.res_id.in_([rid, other]))).scalar_one() == 6
        with RunningHub(make_settings(db_url, tmp_path / "data")) as h:  # migrates at start
            with engine.connect() as conn:
                assert _history_rows(engine, rid) == [(1, "POST"), (2, "PUT"), (3, "PUT"), (4, "DELETE")]
                assert _history_rows(engine, other) == []
                assert conn.execute(select(resources.c.method).where(resources.c.res_id == other)).scalar_one() == "POST"
            with h.client() as fhir:
                after, total_after = answers()
                assert after == before
                assert total_after == total_before
    finally:
        engine.dispose()
