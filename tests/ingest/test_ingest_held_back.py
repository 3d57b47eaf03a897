"""The ingest's entry filter (``drop_held_back_entries``) on a real store, both engines: entries
the hub must not write are dropped, references to a dropped entry's ``fullUrl`` are pointed at
the stored resource, and the caller's bundle is never changed."""

from __future__ import annotations

import copy
import uuid

from hub.ingest.normalize import SOURCE_EVENT_TIME, drop_held_back_entries
from hub.storage.db import read_tx


def _put(rtype: str, rid: str, resource: dict, *, full_url: str | None = None, create_only: bool = False) -> dict:
    request = {"method": "PUT", "url": f"{rtype}/{rid}"}
    if create_only:
        request["ifNoneMatch"] = "*"
    return {"fullUrl": full_url or f"https://hub.example/fhir/{rtype}/{rid}",
            "resource": {"resourceType": rtype, "id": rid, **resource}, "request": request}


def _at(when: str) -> dict:
    return {"extension": [{"url": SOURCE_EVENT_TIME, "valueInstant": when}]}


def _observation(oid: str, *refs: str) -> dict:
    return _put("Observation", oid, {"status": "final", "code": {"text": "x"},
                                     "performer": [{"reference": r} for r in refs]})


def _stored_organization(fhir, when: str) -> str:
    oid = "org-" + uuid.uuid4().hex[:12]
    r = fhir.put(f"/Organization/{oid}", json={"resourceType": "Organization", "id": oid, "name": "A", **_at(when)})
    assert r.status_code == 201, r.text
    return oid


def test_a_reference_to_a_dropped_create_only_entry_points_at_the_stored_resource(hub, fhir):
    org = _stored_organization(fhir, "2026-12-01T08:00:00Z")
    full_url = f"urn:uuid:{uuid.uuid4()}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        _put("Organization", org, {"name": "B"}, full_url=full_url, create_only=True),
        _observation("obs-" + uuid.uuid4().hex[:12], full_url, "Organization/other")]}
    before = copy.deepcopy(bundle)
    with read_tx(hub.hub.engine) as conn:
        kept, stale, existing = drop_held_back_entries(conn, bundle)
    assert existing == [f"Organization/{org}"] and stale == []
    (obs,) = kept["entry"]
    assert obs["resource"]["performer"] == [{"reference": f"Organization/{org}"}, {"reference": "Organization/other"}]
    assert bundle == before  # the caller's bundle is unchanged


def test_an_older_entry_is_dropped_and_entries_refer_on_unchanged(hub, fhir):
    org = _stored_organization(fhir, "2026-12-01T10:00:00Z")
    newer = "obs-" + uuid.uuid4().hex[:12]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        _put("Organization", org, {"name": "older", **_at("2026-12-01T09:00:00Z")}),
        _observation(newer, f"Organization/{org}")]}
    before = copy.deepcopy(bundle)
    with read_tx(hub.hub.engine) as conn:
        kept, stale, existing = drop_held_back_entries(conn, bundle)
    assert stale == [f"Organization/{org}"] and existing == []
    assert [e["resource"]["id"] for e in kept["entry"]] == [newer]
    assert kept["entry"][0]["resource"]["performer"] == [{"reference": f"Organization/{org}"}]
    assert bundle == before
    # a newer event than the stored one is kept
    bundle["entry"][0]["resource"]["extension"][0]["valueInstant"] = "2026-12-01T11:00:00Z"
    with read_tx(hub.hub.engine) as conn:
        kept, stale, existing = drop_held_back_entries(conn, bundle)
    assert stale == [] and len(kept["entry"]) == 2
