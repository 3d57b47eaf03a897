"""Migration 0003_fhir_index on a populated database, on both engines: a store as it was before
(every parameter's rows) is converted, holds exactly the rows a fresh write makes, and answers
every search as before."""

from __future__ import annotations

import orjson
from alembic import command
from sqlalchemy import create_engine, select

from hub.fhir.search.extract import extract_index, stored_rows
from hub.storage.migrate import alembic_config
from hub.storage.schema import INDEX_TABLES, resources
from tests.conftest import RunningHub, make_settings, unique

LOINC = "http://loinc.org"


def _populate(fhir) -> dict:
    tag = unique("mig")
    meta = {"tag": [{"system": "urn:yilian:test", "code": tag}]}
    family = "Sima" + tag
    pat = fhir.post("/Patient", json={"resourceType": "Patient", "meta": meta,
                                      "name": [{"family": family, "given": ["Guang"]}]}).json()
    subject = {"reference": f"Patient/{pat['id']}"}
    for i, (code, value, parts) in enumerate([("2345-7", 5.4, []), ("85354-9", None, [("8480-6", 120), ("8462-4", 80)]),
                                              ("2345-7", 7.1, [("2345-7", 7.1)])]):
        obs = {"resourceType": "Observation", "status": "final", "meta": meta, "subject": subject,
               "effectiveDateTime": f"2024-02-0{i + 1}", "code": {"coding": [{"system": LOINC, "code": code}]},
               "component": [{"code": {"coding": [{"system": LOINC, "code": c}]}, "valueQuantity": {"value": v}}
                             for c, v in parts]}
        if value is not None:
            obs["valueQuantity"] = {"value": value}
        if not parts:
            del obs["component"]
        assert fhir.post("/Observation", json=obs).status_code == 201
    fhir.post("/Coverage", json={"resourceType": "Coverage", "status": "active", "meta": meta, "beneficiary": subject,
                                 "payor": [subject]})
    fhir.post("/EnrollmentRequest", json={"resourceType": "EnrollmentRequest", "meta": meta, "candidate": subject})
    return {"tag": tag, "family": family, "pid": pat["id"]}


def _searches(world: dict) -> list[tuple[str, dict]]:
    tag, pid = world["tag"], world["pid"]
    return [
        ("/Observation", {"_tag": tag, "combo-code": "2345-7"}),
        ("/Observation", {"_tag": tag, "combo-code": "8480-6"}),
        ("/Observation", {"_tag": tag, "combo-code:not": "8462-4"}),
        ("/Observation", {"_tag": tag, "combo-code:missing": "false"}),
        ("/Observation", {"_tag": tag, "combo-value-quantity": "gt7"}),
        ("/Observation", {"_tag": tag, "combo-code-value-quantity": "2345-7$7.1"}),
        ("/Observation", {"_tag": tag, "combo-code-value-quantity": "8480-6$120"}),
        ("/Observation", {"_tag": tag, "_sort": "-combo-code,date"}),
        ("/Observation", {"_tag": tag, "code": "2345-7", "_sort": "-date"}),
        ("/Observation", {"_tag": tag, "patient.phonetic": world["family"]}),
        ("/Patient", {"phonetic": world["family"], "_revinclude": "Coverage:patient"}),
        ("/Patient", {"_has:Observation:patient:combo-code": "8462-4"}),
        ("/Coverage", {"patient": pid, "_include": "Coverage:patient"}),
        (f"/Patient/{pid}/EnrollmentRequest", {}),
        (f"/Patient/{pid}/$everything", {}),
    ]


def _answers(fhir, world) -> list[list[tuple[str, str, str]]]:
    out = []
    for path, params in _searches(world):
        r = fhir.get(path, params=params)
        assert r.status_code == 200, r.text
        # AuditEvents come and go with the searches themselves (each read is recorded)
        entries = [(e["resource"]["resourceType"], e["resource"]["id"], e.get("search", {}).get("mode", ""))
                   for e in r.json().get("entry", []) if e["resource"]["resourceType"] != "AuditEvent"]
        out.append(entries)
    return out


def _rows(conn) -> dict[tuple[str, str], set]:
    """The stored index rows of every resource, by (type, id): {(kind, value tuple)}."""
    out: dict[tuple[str, str], set] = {}
    for kind, (table, cols) in INDEX_TABLES.items():
        for r in conn.execute(select(table.c.res_type, table.c.res_id, *[table.c[c] for c in cols])):
            out.setdefault((r[0], r[1]), set()).add((kind, tuple(r[2:])))
    return out


def _expected(conn, rows_of) -> dict[tuple[str, str], set]:
    out: dict[tuple[str, str], set] = {}
    for t, rid, content in conn.execute(select(resources.c.res_type, resources.c.res_id, resources.c.content)
                                        .where(resources.c.deleted.is_(False))):
        idx = rows_of(t, orjson.loads(content))
        found = {(kind, tuple(r)) for kind in INDEX_TABLES for r in getattr(idx, kind)}
        if found:
            out[(t, rid)] = found
    return out


def test_migration_converts_a_populated_store(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path / "data")
    with RunningHub(settings) as h:
        with h.client() as fhir:
            world = _populate(fhir)
            before = _answers(fhir, world)
    assert any(len(a) > 1 for a in before)

    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0002_fhir_perf")
        with engine.connect() as conn:
            # as the store was before: every parameter's rows
            old = _rows(conn)
            assert old == _expected(conn, lambda t, content: extract_index(content))
            assert any(k == "token" and v[0] == "combo-code" for rows in old.values() for k, v in rows)

        with RunningHub(make_settings(db_url, tmp_path / "data")) as h:  # migrates at start
            with engine.connect() as conn:
                assert _rows(conn) == _expected(conn, lambda t, content: stored_rows(t, extract_index(content)))
            with h.client() as fhir:
                assert _answers(fhir, world) == before
    finally:
        engine.dispose()



def test_the_migration_drops_the_rows_of_exactly_the_parameters_the_registry_stores_with_others():
    """0003's list of covered parameters is a copy of what the registry computes at start: if the
    two ever differ, new writes and migrated stores hold different rows, and a new migration is due."""
    import importlib.util

    from hub.fhir.search.registry import get_registry

    from hub.storage.migrate import MIGRATIONS

    spec = importlib.util.spec_from_file_location("migration_0003_fhir_index",
                                                  MIGRATIONS / "versions" / "0003_fhir_index.py")
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    listed = {(rtype, code): (table, bases) for table, rtype, code, bases in migration.COVERED}
    registry = get_registry()
    computed = {(rtype, code): (INDEX_TABLES[sp.type][0].name, sp.stored_with)
                for rtype in registry.resource_types for code, sp in registry.for_type(rtype).items()
                if sp.stored_with}
    assert listed == computed
