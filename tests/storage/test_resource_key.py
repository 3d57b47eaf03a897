"""The integer key of a resource (``res_pk``, hub.storage.schema) over real HTTP and the store,
on both engines: new resources take increasing keys, an update or a delete keeps the key, and a
resource's index rows carry its key and are replaced by it (the migration of a populated store:
test_res_pk_migration_0006.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from hub.fhir.model import Stored
from hub.storage.db import write_tx
from hub.storage.schema import INDEX_TABLES, resources
from tests.conftest import unique


def _key(engine, res_type: str, rid: str) -> int:
    with engine.connect() as c:
        return c.execute(select(resources.c.res_pk).where(
            resources.c.res_type == res_type, resources.c.res_id == rid)).scalar_one()


def _rows_by_key(engine, pk: int) -> dict[str, set[tuple]]:
    """The index rows holding ``pk``, by table: (res_type, res_id, values…)."""
    out = {}
    with engine.connect() as c:
        for table, cols in INDEX_TABLES.values():
            rows = c.execute(select(table.c.res_type, table.c.res_id, *[table.c[n] for n in cols])
                             .where(table.c.res_pk == pk)).all()
            if rows:
                out[table.name] = {tuple(r) for r in rows}
    return out


def _ids(fhir, params: dict) -> list[str]:
    r = fhir.get("/Patient", params=params)
    assert r.status_code == 200, r.text
    return [e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def test_new_resources_take_increasing_keys_and_updates_and_deletes_keep_them(hub, fhir):
    engine = hub.hub.engine
    tag = unique("pk")
    meta = {"tag": [{"system": "urn:yilian:test", "code": tag}]}
    first = fhir.post("/Patient", json={"resourceType": "Patient", "meta": meta,
                                        "name": [{"family": "Sima" + tag}]}).json()["id"]
    bundle = fhir.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{unique()}", "resource": {"resourceType": "Patient", "meta": meta},
         "request": {"method": "POST", "url": "Patient"}} for _ in range(3)]})
    assert bundle.status_code == 200, bundle.text
    in_bundle = [e["response"]["location"].split("/")[1] for e in bundle.json()["entry"]]
    last = fhir.put(f"/Patient/{tag}", json={"resourceType": "Patient", "id": tag, "meta": meta}).json()["id"]
    keys = [_key(engine, "Patient", rid) for rid in (first, *in_bundle, last)]
    assert keys == sorted(keys) and len(set(keys)) == 5

    pk = keys[0]
    assert _ids(fhir, {"family": "Sima" + tag}) == [first]
    put = fhir.put(f"/Patient/{first}", json={"resourceType": "Patient", "id": first, "meta": meta,
                                               "name": [{"family": "Zhuge" + tag}]})
    assert put.status_code == 200
    assert _key(engine, "Patient", first) == pk
    # the rows of the version replaced are gone, those of the new one carry the same key
    assert _ids(fhir, {"family": "Sima" + tag}) == []
    assert _ids(fhir, {"family": "Zhuge" + tag}) == [first]
    names = {r[3] for r in _rows_by_key(engine, pk)["sp_string"] if r[2] == "family"}
    assert names == {"zhuge" + tag}
    assert fhir.delete(f"/Patient/{first}").status_code in (200, 204)
    assert _key(engine, "Patient", first) == pk and _rows_by_key(engine, pk) == {}
    again = fhir.put(f"/Patient/{first}", json={"resourceType": "Patient", "id": first, "meta": meta})
    assert again.status_code in (200, 201)
    assert _key(engine, "Patient", first) == pk
    assert _ids(fhir, {"_tag": tag, "_sort": "_id"}) == sorted([first, *in_bundle, last])


def test_every_index_row_carries_the_key_of_its_resource(hub, fhir):
    fhir.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                                    "effectiveDateTime": "2024-02-01", "valueQuantity": {"value": 13.1}})
    with hub.hub.engine.connect() as c:
        for table, _ in INDEX_TABLES.values():
            wrong = c.execute(text(
                f"SELECT count(*) FROM {table.name} s LEFT JOIN resources r "
                f"ON r.res_type = s.res_type AND r.res_id = s.res_id WHERE r.res_pk IS NULL OR r.res_pk <> s.res_pk"))
            assert wrong.scalar_one() == 0, table.name


def test_an_update_prepared_from_a_read_without_the_key_finds_it(hub):
    """A caller may prepare an update from a Stored it made itself (the key unknown): the
    store looks the key up, and replaces the resource's rows all the same."""
    store, engine = hub.hub.fhir.store, hub.hub.engine
    family = "Ouyang" + unique()
    with write_tx(engine) as conn:
        (created,) = store.write(conn, [store.prepare_create("Patient", {"resourceType": "Patient",
                                                                        "name": [{"family": family}]})])
    pk = _key(engine, "Patient", created.res_id)
    assert created.res_pk == pk
    with write_tx(engine) as conn:
        bare = Stored("Patient", created.res_id, created.version, created.last_updated, False, created.content)
        v = store.prepare_update(conn, "Patient", created.res_id, {"resourceType": "Patient", "gender": "male"},
                                 current=bare)
        (updated,) = store.write(conn, [v])
    assert updated.res_pk == pk == _key(engine, "Patient", created.res_id)
    rows = _rows_by_key(engine, pk)
    assert "sp_string" not in rows  # the name's rows are gone
    assert ("gender", "male") in {(r[2], r[4]) for r in rows["sp_token"]}  # (param, code)


@pytest.mark.postgres
def test_postgresql_writers_take_keys_without_waiting_for_each_other(hub):
    """Keys come from a sequence: a second transaction creating resources while the first is
    still open neither waits for it (a counter row would hold it until the first commits) nor
    takes its keys."""
    store, engine = hub.hub.fhir.store, hub.hub.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite writers take turns")
    with write_tx(engine) as first:
        (a,) = store.write(first, [store.prepare_create("Patient", {"resourceType": "Patient"})])
        with write_tx(engine) as second:
            second.execute(text("SET LOCAL lock_timeout = '2s'"))
            (b,) = store.write(second, [store.prepare_create("Patient", {"resourceType": "Patient"})])
    assert b.res_pk > a.res_pk
    assert (_key(engine, "Patient", a.res_id), _key(engine, "Patient", b.res_id)) == (a.res_pk, b.res_pk)
