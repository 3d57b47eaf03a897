"""Migration 0006_fhir_res_pk on a populated store, over real HTTP on both engines: the store as
it was (index rows found by (res_type, res_id), no key) gets a key per resource and in every
index row, answers the searches that look at one resource's rows (probes, ``:not``, ``_sort``,
``_has``, ``_include``) exactly as before, and its resources keep their keys when updated.

In a module of its own, as test_history_migration_0004.py (a downgrade beneath a running hub
races its writers)."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect, select, text

from hub.storage.migrate import alembic_config, upgrade
from hub.storage.schema import INDEX_TABLES, resources
from tests.conftest import RunningHub, make_settings, unique
from tests.storage import search_answers

LOINC = "http://loinc.org"


def _populate(fhir) -> dict:
    tag = unique("pk")
    meta = {"tag": [{"system": "urn:yilian:test", "code": tag}]}
    pids = []
    for family, gender, birth in (("Zhao", "female", "1970-03-01"), ("Qian", "male", "1985-07-12"),
                                  ("Sun", "female", "1992-11-30")):
        pids.append(fhir.post("/Patient", json={"resourceType": "Patient", "meta": meta, "gender": gender,
                                                "birthDate": birth, "name": [{"family": family + tag}]}).json()["id"])
    for i, (pid, code) in enumerate([(pids[0], "2345-7"), (pids[0], "718-7"), (pids[1], "2345-7")]):
        assert fhir.post("/Observation", json={
            "resourceType": "Observation", "status": "final", "meta": meta, "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": f"2024-01-1{i}",
            "valueQuantity": {"value": 5 + i}}).status_code == 201
    # an updated and a deleted resource: their replaced rows are gone before and after
    replaced = {"resourceType": "Patient", "id": pids[2], "meta": meta, "gender": "other",
                "name": [{"family": "Li" + tag}]}
    assert fhir.put(f"/Patient/{pids[2]}", json=replaced).status_code == 200
    gone = fhir.post("/Patient", json={"resourceType": "Patient", "meta": meta, "gender": "male"}).json()["id"]
    assert fhir.delete(f"/Patient/{gone}").status_code in (200, 204)
    return {"tag": tag, "pids": pids}


def _searches(w: dict) -> list[tuple[str, dict]]:
    tag, (p0, p1, _) = w["tag"], w["pids"]
    return [
        ("/Patient", {"_tag": tag, "gender": "female"}),  # _tag the start, gender a probe
        ("/Patient", {"_tag": tag, "gender:not": "female"}),
        ("/Patient", {"_tag": tag, "_sort": "birthdate"}),
        ("/Patient", {"_tag": tag, "_sort": "-family"}),
        ("/Patient", {"_tag": tag, "family": "Li" + tag}),
        ("/Patient", {"_tag": tag, "family": "Sun" + tag}),
        ("/Patient", {"_has:Observation:patient:code": "2345-7", "_tag": tag}),
        ("/Observation", {"_tag": tag, "_sort": "-date"}),
        ("/Observation", {"_tag": tag, "code": "2345-7", "_include": "Observation:subject"}),
        ("/Observation", {"subject": p0, "code:not": "718-7"}),
        ("/Observation", {"subject.gender": "male"}),
        (f"/Patient/{p1}/$everything", {}),
    ]


def _answers(fhir, w) -> list[list[tuple[str, str, str]]]:
    return search_answers(fhir, _searches(w))


def _mismatched_rows(conn) -> int:
    """Index rows without the key of their resource."""
    return sum(conn.execute(text(
        f"SELECT count(*) FROM {table.name} s LEFT JOIN resources r ON r.res_type = s.res_type "
        f"AND r.res_id = s.res_id WHERE r.res_pk IS NULL OR r.res_pk <> s.res_pk")).scalar_one()
        for table, _ in INDEX_TABLES.values())


def test_migration_0006_keys_a_populated_store(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path / "data")
    with RunningHub(settings) as h:
        with h.client() as fhir:
            world = _populate(fhir)
            before = _answers(fhir, world)
    # each search finds something, but the one for the replaced version's name
    assert before[5] == [] and all(before[:5] + before[6:]), before

    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0004_fhir_history")  # this revision and 0007 on it
        with engine.connect() as conn:  # as the store was
            assert "res_pk" not in {c["name"] for c in inspect(conn).get_columns("sp_token")}
            counts = {t.name: conn.execute(text(f"SELECT count(*) FROM {t.name}")).scalar_one()
                      for t, _ in INDEX_TABLES.values()}
            n_resources = conn.execute(text("SELECT count(*) FROM resources")).scalar_one()
        upgrade(engine, "0006_fhir_res_pk")  # this revision alone (the hub below takes 0007 too)
        with engine.connect() as conn:
            ix = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("sp_token")}
            assert ix.get("ix_sp_token_pk") == ["res_pk"] and "ix_sp_token_res" not in ix
            assert {t.name: conn.execute(text(f"SELECT count(*) FROM {t.name}")).scalar_one()
                    for t, _ in INDEX_TABLES.values()} == counts
            keys = conn.execute(select(resources.c.res_pk)).scalars().all()
            assert len(set(keys)) == len(keys) == n_resources
            assert _mismatched_rows(conn) == 0
        with RunningHub(make_settings(db_url, tmp_path / "data")) as h:
            with h.client() as fhir:
                assert _answers(fhir, world) == before
                # new resources take keys after the existing ones; an update keeps its key
                p2 = world["pids"][2]
                with engine.connect() as conn:
                    old = conn.execute(select(resources.c.res_pk).where(resources.c.res_id == p2)).scalar_one()
                meta = {"tag": [{"system": "urn:yilian:test", "code": world["tag"]}]}
                assert fhir.put(f"/Patient/{p2}", json={"resourceType": "Patient", "id": p2, "meta": meta,
                                                        "name": [{"family": "Wang" + world["tag"]}]}).status_code == 200
                new = fhir.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
                with engine.connect() as conn:
                    assert conn.execute(select(resources.c.res_pk).where(resources.c.res_id == p2)).scalar_one() == old
                    key = conn.execute(select(resources.c.res_pk).where(resources.c.res_id == new)).scalar_one()
                    assert key > max(keys)
                    assert _mismatched_rows(conn) == 0
                tag = world["tag"]
                for family, found in (("Li", []), ("Wang", [p2])):
                    r = fhir.get("/Patient", params={"_tag": tag, "family": family + tag}).json()
                    assert [e["resource"]["id"] for e in r.get("entry", [])] == found
    finally:
        engine.dispose()
