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
from tests.storage import search_answers

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
    group = fhir.post("/Group", json={"resourceType": "Group", "type": "person", "actual": True}).json()
    assert fhir.post("/Observation", json={"resourceType": "Observation", "status": "final", "meta": meta,
                                           "code": {"coding": [{"system": LOINC, "code": "2345-7"}]},
                                           "subject": {"reference": f"Group/{group['id']}"}}).status_code == 201
    doc = fhir.post("/Practitioner", json={"resourceType": "Practitioner", "name": [{"family": "Hua"}]}).json()
    assert fhir.post("/Encounter", json={"resourceType": "Encounter", "status": "finished", "meta": meta,
                                         "class": {"code": "AMB"}, "subject": subject,
                                         "participant": [{"individual": {"reference": f"Practitioner/{doc['id']}"}}]}
                     ).status_code == 201
    return {"tag": tag, "family": family, "pid": pat["id"], "practitioner": doc["id"]}


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
        ("/Observation", {"_tag": tag, "patient": pid}),
        ("/Observation", {"_tag": tag, "patient:missing": "true"}),
        ("/Observation", {"_tag": tag, "patient.name": world["family"], "_include": "Observation:patient"}),
        ("/Patient", {"_id": pid, "_revinclude": "Observation:patient"}),
        ("/Patient", {"_has:Observation:patient:code": "2345-7"}),
        ("/Encounter", {"_tag": tag, "practitioner": world["practitioner"]}),
        (f"/Patient/{pid}/Observation", {}),
        (f"/Patient/{pid}/EnrollmentRequest", {}),
        (f"/Patient/{pid}/$everything", {}),
    ]


def _answers(fhir, world) -> list[list[tuple[str, str, str]]]:
    return search_answers(fhir, _searches(world))


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


def _populate_downgrade_and_migrate(db_url, tmp_path, revision: str, old_rows_of, old_marker) -> list:
    """Populate a store over HTTP, downgrade it to ``revision`` and check its rows are the old
    layout's (``old_rows_of(type, content)``, among them ``old_marker``: (table kind, param)), then
    let a hub migrate it at start: the rows a fresh write makes, and every search answered as
    before. Returns the answers."""
    with RunningHub(make_settings(db_url, tmp_path / "data")) as h:
        with h.client() as fhir:
            world = _populate(fhir)
            before = _answers(fhir, world)
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), revision)
        with engine.connect() as conn:  # as the store was before
            old = _rows(conn)
            assert old == _expected(conn, old_rows_of)
            assert any((k, v[0]) == old_marker for rows in old.values() for k, v in rows)
        with RunningHub(make_settings(db_url, tmp_path / "data")) as h:  # migrates at start
            with engine.connect() as conn:
                assert _rows(conn) == _expected(conn, lambda t, content: stored_rows(t, extract_index(content)))
            with h.client() as fhir:
                assert _answers(fhir, world) == before
    finally:
        engine.dispose()
    return before


def test_migration_converts_a_populated_store(db_url, tmp_path):
    # before 0003: every parameter's rows
    before = _populate_downgrade_and_migrate(
        db_url, tmp_path, "0002_fhir_perf", lambda t, content: extract_index(content, every_parameter=True),
        ("token", "combo-code"))
    assert any(len(a) > 1 for a in before)


def _load(name: str):
    import importlib.util

    from hub.storage.migrate import MIGRATIONS

    spec = importlib.util.spec_from_file_location(f"migration_{name}", MIGRATIONS / "versions" / f"{name}.py")
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    return migration


def test_migration_0007_deletes_the_rows_of_the_derived_parameters(db_url, tmp_path):
    """From the layout before 0007 (type-filtered parameters such as Observation patient stored
    whole) to the one a fresh write makes, and back, answering every search alike."""
    unions = {(t, p) for _, t, p in _load("0007_fhir_fold").UNIONS}

    def before_0007(t, content):
        every = extract_index(content, every_parameter=True)
        for kind in INDEX_TABLES:
            setattr(every, kind, [r for r in getattr(every, kind) if (t, r[0]) not in unions])
        return stored_rows(t, every)

    _populate_downgrade_and_migrate(db_url, tmp_path, "0006_fhir_res_pk", before_0007, ("reference", "patient"))


def test_the_migrations_drop_the_rows_of_exactly_the_parameters_the_registry_stores_with_others():
    """0003's and 0007's lists of parameters are copies of what the registry computes at start:
    if they ever differ, new writes and migrated stores hold different rows, and a new migration
    is due. 0003 covered the unions, which 0007 made derived, and 0007 the type-filtered ones."""
    from hub.fhir.search.registry import get_registry

    m3, m6 = _load("0003_fhir_index"), _load("0007_fhir_fold")
    registry = get_registry()
    params = [(rtype, code, sp) for rtype in registry.resource_types for code, sp in registry.for_type(rtype).items()]
    unions = {(rtype, code): (INDEX_TABLES[sp.type][0].name, sp.stored_with or tuple(c for c, _ in sp.derived_from))
              for rtype, code, sp in params
              if sp.stored_with or (sp.derived_from and all(t is None for _, t in sp.derived_from))}
    assert {(rtype, code): (table, bases) for table, rtype, code, bases in m3.COVERED} == unions
    assert {(t, p) for _, t, p in m6.UNIONS} == {k for k, v in unions.items() if not registry.get(*k).stored_with}
    typed = {(rtype, code): sp.derived_from for rtype, code, sp in params
             if any(t is not None for _, t in sp.derived_from)}
    assert {(t, p): sources for t, p, sources in m6.TYPE_FILTERED} == typed
