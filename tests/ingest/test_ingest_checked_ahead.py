"""Entries validated and indexed before the write transaction (hub.fhir.bundles.check_entries)
are stored exactly as entries checked inside it: same documents, same index rows."""

from __future__ import annotations

import dataclasses
import re
import uuid

import orjson
from sqlalchemy import select, tuple_

import hub.fhir.store as store_module
from hub.ingest.normalize import RawMessage
from hub.storage.db import write_tx
from hub.storage.schema import INDEX_TABLES, resources
from tests.ingest.conftest import ORG, oru_r01

_GOLDEN = re.compile(r"mpi-[0-9A-Za-z-]+")


class _Rollback(Exception):
    pass


def _stored(conn, keys: list[tuple[str, str]]) -> dict:
    """Documents (without meta.lastUpdated) and index rows of ``keys``; golden record ids
    replaced by a placeholder (each run places the patient in a new person)."""
    out: dict = {}
    cond = tuple_(resources.c.res_type, resources.c.res_id).in_(keys)
    for t, rid, content in conn.execute(select(resources.c.res_type, resources.c.res_id, resources.c.content)
                                        .where(cond)):
        doc = orjson.loads(content) if isinstance(content, (str, bytes)) else content
        doc["meta"].pop("lastUpdated")
        out[f"{t}/{rid}"] = doc
    for kind, (table, cols) in INDEX_TABLES.items():
        rows = conn.execute(select(table.c.res_type, table.c.res_id, *(table.c[c] for c in cols)).where(tuple_(table.c.res_type, table.c.res_id).in_(keys))).all()
        out[kind] = sorted((tuple(r) for r in rows), key=repr)
    return orjson.loads(_GOLDEN.sub("mpi-*", orjson.dumps(out, default=repr).decode()))


def _apply(hub, prepared, monkeypatch) -> tuple[dict, int]:
    """Apply one prepared message and return what it stored and how many index extractions ran
    inside the write transaction; rolled back, so the next run writes the same resources anew."""
    h = hub.hub
    calls = 0
    real = store_module.extract_index

    def counting(resource):
        nonlocal calls
        calls += 1
        return real(resource)

    monkeypatch.setattr(store_module, "extract_index", counting)
    try:
        with write_tx(h.engine) as conn:
            outcome = h.ingest.normalizer.apply(conn, prepared)
            assert outcome.ack_code == "AA", outcome.error_text
            keys = [tuple(r.split("/")) for r in outcome.resources]
            assert keys
            seen = _stored(conn, keys)
            raise _Rollback
    except _Rollback:
        pass
    finally:
        monkeypatch.setattr(store_module, "extract_index", real)
    return seen, calls


def test_entries_checked_ahead_store_the_same_documents_and_index_rows(hub, monkeypatch):
    import hub.ingest.normalize as normalize_module

    # no create-only resource seen held yet (prepare leaves those out of the check)
    monkeypatch.setattr(normalize_module, "_KNOWN_EXISTING", {})
    norm = hub.hub.ingest.normalizer
    msg = oru_r01(f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:10], n_obx=12)
    raw = RawMessage(1, ORG, "hl7v2", msg)

    ahead = norm.prepare(raw)
    entries = ahead.result.bundle["entry"]
    assert ahead.checked is not None and len(ahead.checked) == len(entries)

    inside, calls_inside = _apply(hub, dataclasses.replace(norm.prepare(raw), checked=None), monkeypatch)
    checked, calls_checked = _apply(hub, ahead, monkeypatch)

    assert checked == inside
    # every entry was indexed inside the transaction without the check ahead; with it, only
    # what a store hook changed (the Patient the MPI links to its person, the golden record)
    assert calls_inside >= len(entries)
    assert calls_checked < calls_inside - len(entries) // 2


def test_an_entry_changed_after_the_check_is_checked_again(hub, monkeypatch):
    """A resource replaced or whose references the transaction rewrites does not use the rows
    computed ahead (they describe the resource as it was)."""
    from hub.fhir.bundles import check_entries

    norm = hub.hub.ingest.normalizer
    raw = RawMessage(1, ORG, "hl7v2", oru_r01(f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:10], n_obx=2))
    p = norm.prepare(raw)
    obs = next(e for e in p.result.bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    # the check was made on a different status; the resource written must be indexed as it is
    before = check_entries(p.result.bundle)
    obs["resource"] = {**obs["resource"], "status": "amended"}
    stored, _ = _apply(hub, dataclasses.replace(p, checked=before), monkeypatch)
    key = ["Observation", obs["resource"]["id"]]
    tokens = [r for r in stored["token"] if r[0] == key[0] and r[1] == key[1] and r[2] == "status"]
    assert [r[4] for r in tokens] == ["amended"]


def test_a_patient_the_index_links_is_validated_ahead_and_indexed_once(hub, monkeypatch):
    """The master patient index adds the source Patient's link to its golden record as the
    store writes it, and the store makes its index rows again then: rows made ahead were waste."""
    import hub.fhir.bundles as bundles_module
    import hub.ingest.normalize as normalize_module

    monkeypatch.setattr(normalize_module, "_KNOWN_EXISTING", {})
    indexed: list[str] = []
    validated: list[str] = []
    real_index, real_validate = store_module.extract_index, bundles_module.validate_resource

    def counting_index(resource):
        indexed.append(resource.get("resourceType"))
        return real_index(resource)

    def counting_validate(resource, rtype):
        validated.append(rtype)
        return real_validate(resource, rtype)

    monkeypatch.setattr(bundles_module, "extract_index", counting_index)
    monkeypatch.setattr(bundles_module, "validate_resource", counting_validate)
    norm = hub.hub.ingest.normalizer
    p = norm.prepare(RawMessage(1, ORG, "hl7v2", oru_r01(f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:10])))
    assert validated.count("Patient") == 1 and "Patient" not in indexed
    assert indexed.count("Observation") == 3
    stored, _ = _apply(hub, p, monkeypatch)
    assert validated.count("Patient") == 1  # not validated again inside the transaction
    patient = next(k for k in stored if k.startswith("Patient/") and "mpi-" not in k)
    assert stored[patient]["link"][0]["type"] == "refer"
    assert any(r[:3] == ["Patient", patient.split("/")[1], "link"] for r in stored["reference"])
