"""What the ingest does to a bundle before the write transaction (references resolved, the
stale guard's candidates read, create-only entries the hub holds left unchecked) stores exactly
what the transaction alone would."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

import hub.fhir.bundles as bundles
import hub.ingest.normalize as normalize_module
from hub.fhir.bundles import check_entries, process_bundle, resolve_put_references
from hub.ingest.normalize import RawMessage
from hub.security.access import Access
from hub.security.scopes import parse_scopes
from hub.security.tokens import Principal
from hub.storage.db import write_tx
from tests.ingest.conftest import ORG, oru_r01
from tests.ingest.test_ingest_checked_ahead import _apply

BASE = "https://yilian.example.org/fhir"


def _access() -> Access:
    return Access(Principal("tests", "tests", parse_scopes("system/*.cruds"), "system/*.cruds"))


def _bundle(n: str) -> dict:
    """PUT entries referring to each other by fullUrl, a POST entry referred to by its urn:uuid,
    and a conditional reference to an entry of the same bundle."""
    pat, org = f"p{n}", f"o{n}"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"{BASE}/Organization/{org}",
         "resource": {"resourceType": "Organization", "id": org, "name": "Lab",
                      "identifier": [{"system": "urn:test:org", "value": org}]},
         "request": {"method": "PUT", "url": f"Organization/{org}"}},
        {"fullUrl": f"{BASE}/Patient/{pat}",
         "resource": {"resourceType": "Patient", "id": pat, "name": [{"family": "Qian"}],
                      "managingOrganization": {"reference": f"{BASE}/Organization/{org}"}},
         "request": {"method": "PUT", "url": f"Patient/{pat}"}},
        {"fullUrl": "urn:uuid:88888888-8888-8888-8888-888888888888",
         "resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": f"{BASE}/Patient/{pat}"}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"fullUrl": f"{BASE}/Observation/x{n}",
         "resource": {"resourceType": "Observation", "id": f"x{n}", "status": "final", "code": {"text": "HR"},
                      "subject": {"reference": f"{BASE}/Patient/{pat}"},
                      "encounter": {"reference": "urn:uuid:88888888-8888-8888-8888-888888888888"},
                      "performer": [{"reference": f"Organization?identifier=urn:test:org|pre{n}"}]},
         "request": {"method": "PUT", "url": f"Observation/x{n}"}},
    ]}


def _stored_lab(hub, n: str) -> None:
    """The Organization the bundle's conditional reference finds."""
    b = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Organization", "id": f"pre{n}", "identifier": [
            {"system": "urn:test:org", "value": f"pre{n}"}]}, "request": {"method": "PUT", "url": f"Organization/pre{n}"}}]}
    assert process_bundle(hub.hub.fhir, b, _access(), transaction=True).status == 200


def test_references_resolved_ahead_are_stored_as_the_transaction_resolves_them(hub):
    n = uuid.uuid4().hex[:8]
    _stored_lab(hub, n)
    b = _bundle(n)
    pending = resolve_put_references(b)
    entries = b["entry"]
    # PUT entries' full URLs are their Type/id; the others are left to the transaction
    assert entries[1]["resource"]["managingOrganization"]["reference"] == f"Organization/o{n}"
    assert entries[2]["resource"]["subject"]["reference"] == f"Patient/p{n}"
    obs = entries[3]["resource"]
    assert obs["encounter"]["reference"].startswith("urn:uuid:")
    assert pending == {id(obs)}
    checked = check_entries(b, pending=pending)
    assert [checked.references_final(e["resource"]) for e in entries] == [True, True, True, False]
    with write_tx(hub.hub.engine) as conn:
        r = process_bundle(hub.hub.fhir, b, _access(), transaction=True, conn=conn, checked=checked)
    assert r.status == 200, r.body
    enc_id = r.body["entry"][2]["response"]["location"].split("/")[1]
    s = hub.hub.fhir.store
    with write_tx(hub.hub.engine) as conn:
        stored_obs = s.read(conn, "Observation", f"x{n}").resource()
        stored_enc = s.read(conn, "Encounter", enc_id).resource()
    assert stored_obs["encounter"]["reference"] == f"Encounter/{enc_id}"
    assert stored_obs["performer"][0]["reference"] == f"Organization/pre{n}"
    assert stored_obs["subject"]["reference"] == f"Patient/p{n}"
    assert stored_enc["subject"]["reference"] == f"Patient/p{n}"


def test_a_resource_whose_references_were_final_is_not_walked_in_the_transaction(hub, monkeypatch):
    """The walk the ahead step made is not made again inside the write transaction, except for
    the resource it left pending."""
    n = uuid.uuid4().hex[:8]
    _stored_lab(hub, n)
    b = _bundle(n)
    checked = check_entries(b, pending=resolve_put_references(b))
    walked: list = []
    real = bundles._walk_references

    def spy(node, fn):
        if isinstance(node, dict) and "resourceType" in node:
            walked.append(node["resourceType"])
        return real(node, fn)

    monkeypatch.setattr(bundles, "_walk_references", spy)
    with write_tx(hub.hub.engine) as conn:
        r = process_bundle(hub.hub.fhir, b, _access(), transaction=True, conn=conn, checked=checked)
    assert r.status == 200, r.body
    assert walked == ["Observation"]


def test_a_full_url_given_twice_is_left_to_the_transaction(hub):
    n = uuid.uuid4().hex[:8]
    b = _bundle(n)
    b["entry"][0]["fullUrl"] = b["entry"][1]["fullUrl"]  # the Organization's and the Patient's
    pending = resolve_put_references(b)
    assert b["entry"][2]["resource"]["subject"]["reference"] == f"{BASE}/Patient/p{n}"
    assert id(b["entry"][2]["resource"]) in pending


@pytest.mark.parametrize("seen_held", [False, True])
def test_a_create_only_entry_seen_held_is_not_checked_ahead_and_still_written_when_absent(
        hub, monkeypatch, seen_held):
    """The hint is only a hint: an Organization remembered as held but absent (another hub
    deleted it, or the hint is stale) is written and indexed as without it."""
    norm = hub.hub.ingest.normalizer
    org = f"ORG{uuid.uuid4().hex[:6].upper()}"  # its Organization stub is new to the hub
    raw = RawMessage(1, org, "hl7v2", oru_r01(f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:10], n_obx=2))
    monkeypatch.setattr(normalize_module, "_KNOWN_EXISTING", {})
    plain = norm.prepare(raw)
    stub = next(e for e in plain.result.bundle["entry"] if e["request"].get("ifNoneMatch") == "*"
                and e["resource"]["resourceType"] == "Organization")
    if seen_held:
        normalize_module._remember_existing([stub["request"]["url"]])
    p = norm.prepare(raw)
    stub_p = next(e for e in p.result.bundle["entry"] if e["request"]["url"] == stub["request"]["url"])
    assert (p.checked.index_of(stub_p["resource"], "Organization") is None) == seen_held
    stored, _ = _apply(hub, p, monkeypatch)
    expected, _ = _apply(hub, dataclasses.replace(plain, checked=None, candidates=None), monkeypatch)
    assert stub["request"]["url"] in stored
    assert stored == expected


def test_a_create_only_entry_the_hub_holds_is_remembered_and_not_checked_again(hub, monkeypatch):
    monkeypatch.setattr(normalize_module, "_KNOWN_EXISTING", {})
    norm = hub.hub.ingest.normalizer

    def message() -> RawMessage:
        return RawMessage(1, ORG, "hl7v2", oru_r01(f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:10], n_obx=1))

    with write_tx(hub.hub.engine) as conn:
        assert norm.apply(conn, norm.prepare(message())).status == "normalized"
        assert norm.apply(conn, norm.prepare(message())).status == "normalized"  # the stub held: dropped
    p = norm.prepare(message())
    stub = next(e for e in p.result.bundle["entry"] if e["resource"]["resourceType"] == "Organization")
    assert stub["request"]["url"] in normalize_module._KNOWN_EXISTING
    assert p.checked.index_of(stub["resource"], "Organization") is None
    assert len(p.checked) == len(p.result.bundle["entry"]) - 1
    with write_tx(hub.hub.engine) as conn:
        o = norm.apply(conn, p)
    assert o.status == "normalized" and stub["request"]["url"] in o.resources


def test_the_scan_for_references_tells_keys_from_text_and_finds_nested_ones():
    """The ahead step reads references out of the serialized resources: a string that only
    mentions a full URL is left alone; a conditional reference deep in a list is found."""
    url = f"{BASE}/Patient/p1"
    patient = {"fullUrl": url, "resource": {"resourceType": "Patient", "id": "p1"},
               "request": {"method": "PUT", "url": "Patient/p1"}}
    text = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": f',"reference":"{url}"'}}
    b = {"resourceType": "Bundle", "type": "transaction", "entry": [
        patient, {"resource": text, "request": {"method": "PUT", "url": "Observation/o1"}}]}
    assert resolve_put_references(b) == set()
    assert text["code"]["text"] == f',"reference":"{url}"'
    nested = {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
              "hasMember": [{"reference": "Observation?identifier=a|b"}],
              "subject": {"reference": url}}
    b["entry"].append({"resource": nested, "request": {"method": "PUT", "url": "Observation/o2"}})
    assert resolve_put_references(b) == {id(nested)}
    assert nested["subject"]["reference"] == "Patient/p1"


def test_references_to_full_urls_are_found_whatever_the_full_urls_share():
    """The scan first looks for a reference starting with what the bundle's full URLs share (the
    server's base): one that names an entry is rewritten; one that names a created entry's
    urn:uuid (nothing shared with the others) is left to the transaction."""
    entries = [{"fullUrl": f"{BASE}/{t}/{i}", "resource": {"resourceType": t, "id": i},
                "request": {"method": "PUT", "url": f"{t}/{i}"}} for t, i in (("Patient", "p1"), ("Encounter", "e1"))]
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"{BASE}/Patient/p1"}, "encounter": {"reference": "Encounter/e1"}}
    b = {"resourceType": "Bundle", "type": "transaction",
         "entry": [*entries, {"resource": obs, "request": {"method": "PUT", "url": "Observation/o1"}}]}
    assert resolve_put_references(b) == set()
    assert obs["subject"]["reference"] == "Patient/p1"
    created = {"resourceType": "Observation", "status": "final", "code": {"text": "y"}}
    later = {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "z"},
             "hasMember": [{"reference": "urn:uuid:0c4f6a2e-1111-4222-8333-944445555666"}]}
    b["entry"] += [{"fullUrl": "urn:uuid:0c4f6a2e-1111-4222-8333-944445555666", "resource": created,
                    "request": {"method": "POST", "url": "Observation"}},
                   {"resource": later, "request": {"method": "PUT", "url": "Observation/o2"}}]
    assert resolve_put_references(b) == {id(later)}


def test_the_patient_is_normalized_for_matching_while_preparing_not_in_the_transaction(hub, monkeypatch):
    mpi = hub.hub.mpi
    norm = hub.hub.ingest.normalizer
    calls = []
    real = mpi.profile.normalize
    monkeypatch.setattr(mpi.profile, "normalize", lambda snap: calls.append(1) or real(snap))
    p = norm.prepare(RawMessage(1, ORG, "hl7v2", oru_r01(f"MRN{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:10],
                                                         n_obx=1)))
    assert len(calls) == 1
    calls.clear()
    with write_tx(hub.hub.engine) as conn:
        o = norm.apply(conn, p)
    assert o.status == "normalized" and any(r.startswith("Patient/") for r in o.resources)
    assert calls == []  # before_write found it in the cache
