"""Batch and transaction bundles over real HTTP on both engines (http.html#transaction)."""

from __future__ import annotations

import base64
import concurrent.futures
import json

from tests.conftest import unique


def tx(entries: list[dict], kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def test_transaction_rewrites_urn_uuid_and_resolves_conditional_references(fhir):
    org_id = unique()
    fhir.post("/Organization", json={"resourceType": "Organization", "name": "Xicheng Hospital",
                                    "identifier": [{"system": "urn:yilian:org", "value": org_id}]})
    b = tx([
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient", "name": [{"family": "Zhao"}],
                      "managingOrganization": {"reference": f"Organization?identifier=urn:yilian:org|{org_id}"}},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "BP"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}},
    ])
    r = fhir.post("", json=b)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201", "201"]
    pid = out["entry"][0]["response"]["location"].split("/")[1]
    oid = out["entry"][1]["response"]["location"].split("/")[1]
    obs = fhir.get(f"/Observation/{oid}").json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    pat = fhir.get(f"/Patient/{pid}").json()
    assert pat["managingOrganization"]["reference"].startswith("Organization/")


def test_transaction_is_atomic(fhir):
    family = unique("Atomic")
    b = tx([
        {"resource": {"resourceType": "Patient", "name": [{"family": family}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
    ])
    r = fhir.post("", json=b)
    assert r.status_code in (400, 422)
    assert "entry[1]" in r.json()["issue"][0]["diagnostics"]
    assert fhir.get("/Patient", params={"family": family}).json()["total"] == 0


def test_transaction_conditional_reference_without_match_fails(fhir):
    b = tx([{"resource": {"resourceType": "Patient",
                          "managingOrganization": {"reference": f"Organization?identifier=urn:none|{unique()}"}},
             "request": {"method": "POST", "url": "Patient"}}])
    r = fhir.post("", json=b)
    assert r.status_code in (404, 412)


def test_transaction_put_delete_and_conditional_create(fhir):
    rid = unique("p")
    mrn = unique()
    fhir.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid, "gender": "male"})
    victim = fhir.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    b = tx([
        {"resource": {"resourceType": "Patient", "id": rid, "gender": "female"}, "request": {"method": "PUT", "url": f"Patient/{rid}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{victim}"}},
        {"fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:mrn|{mrn}"}},
        {"request": {"method": "GET", "url": f"Patient/{rid}"}},
    ])
    out = fhir.post("", json=b).json()
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "200" and statuses[1] == "204" and statuses[2] == "201" and statuses[3] == "200"
    assert fhir.get(f"/Patient/{rid}").json()["gender"] == "female"
    assert fhir.get(f"/Patient/{victim}").status_code == 410
    again = fhir.post("", json=tx([b["entry"][2]])).json()
    assert again["entry"][0]["response"]["status"] == "200"


def test_conditional_create_in_concurrent_transactions_is_unique(hub):
    """The failure of several mainstream servers: two transactions racing on one ifNoneExist."""
    mrn = unique()
    bundle = tx([{"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": mrn}]},
                  "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:race|{mrn}"}}])

    def send(_):
        with hub.client() as c:
            return c.post("", json=bundle)

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(send, range(16)))
    assert all(r.status_code == 200 for r in results)
    locations = {r.json()["entry"][0]["response"]["location"].split("/_history")[0] for r in results}
    assert len(locations) == 1
    with hub.client() as c:
        assert c.get("/Patient", params={"identifier": f"urn:race|{mrn}"}).json()["total"] == 1


def test_batch_reports_each_entry(fhir):
    ok_id = fhir.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    b = tx([
        {"request": {"method": "GET", "url": f"Patient/{ok_id}"}},
        {"request": {"method": "GET", "url": "Patient/nope-nope"}},
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
    ], kind="batch")
    out = fhir.post("", json=b).json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "200" and statuses[1] == "404" and statuses[2] in ("400", "422") and statuses[3] == "201"
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_bundle_errors(fhir):
    assert fhir.post("", json={"resourceType": "Bundle", "type": "collection"}).status_code == 400
    assert fhir.post("", json={"resourceType": "Patient"}).status_code == 400
    r = fhir.post("", json=tx([{"resource": {"resourceType": "Patient"}}]))
    assert r.status_code == 400


def test_transaction_put_with_if_none_match_star_only_creates(fhir):
    rid = unique("inm-")
    entry = {"fullUrl": f"urn:uuid:{rid}", "request": {"method": "PUT", "url": f"Patient/{rid}", "ifNoneMatch": "*"},
             "resource": {"resourceType": "Patient", "id": rid, "gender": "female"}}
    first = fhir.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    assert first.status_code == 200, first.text
    assert first.json()["entry"][0]["response"]["status"].startswith("201")
    again = {**entry, "resource": {**entry["resource"], "gender": "male"}}
    second = fhir.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [again]})
    assert second.status_code == 412
    assert fhir.get(f"/Patient/{rid}").json()["gender"] == "female"


def test_transaction_puts_read_current_versions_again_after_an_entry_written_on_its_own(fhir):
    """Plain PUT entries read their current versions together; an entry that writes on its
    own (here a PATCH of the same Patient) makes a later PUT of it see the version it wrote."""
    rid, other = unique("pv-"), unique("pv-")
    fhir.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid, "gender": "male"})
    fhir.put(f"/Patient/{other}", json={"resourceType": "Patient", "id": other, "gender": "male"})
    patch = [{"op": "replace", "path": "/gender", "value": "other"}]
    b = tx([
        {"resource": {"resourceType": "Patient", "id": other, "gender": "female"},
         "request": {"method": "PUT", "url": f"Patient/{other}"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64.b64encode(json.dumps(patch).encode()).decode()},
         "request": {"method": "PATCH", "url": f"Patient/{rid}"}},
        {"resource": {"resourceType": "Patient", "id": rid, "gender": "unknown"},
         "request": {"method": "PUT", "url": f"Patient/{rid}"}},
        {"resource": {"resourceType": "Patient", "id": unique("pv-new-"), "gender": "female"},
         "request": {"method": "PUT", "url": "Patient/" + unique("pv-new2-")}},
    ])
    b["entry"][3]["resource"]["id"] = b["entry"][3]["request"]["url"].split("/")[1]
    r = fhir.post("", json=b)
    assert r.status_code == 200, r.text
    locations = [e["response"]["location"] for e in r.json()["entry"]]
    assert locations[0].endswith(f"Patient/{other}/_history/2")
    assert locations[1].endswith(f"Patient/{rid}/_history/2")
    assert locations[2].endswith(f"Patient/{rid}/_history/3")
    assert locations[3].endswith("/_history/1")
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200", "200", "200", "201"]
    assert fhir.get(f"/Patient/{rid}").json()["gender"] == "unknown"
    assert fhir.get(f"/Patient/{other}").json()["gender"] == "female"


def test_transaction_index_rows_follow_the_rewritten_references(fhir):
    """Entries are validated and indexed before the write transaction once their urn:uuid
    references are rewritten; one whose conditional reference the transaction resolves is
    indexed again: searches by either reference find what the transaction wrote."""
    org_id = unique()
    r = fhir.post("/Organization", json={"resourceType": "Organization", "name": "Dongcheng Hospital",
                                         "identifier": [{"system": "urn:yilian:org", "value": org_id}]})
    org = r.json()["id"]
    b = tx([
        {"fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333",
         "resource": {"resourceType": "Patient", "name": [{"family": "Qian"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:44444444-4444-4444-4444-444444444444",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "HR"},
                      "subject": {"reference": "urn:uuid:33333333-3333-3333-3333-333333333333"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:55555555-5555-5555-5555-555555555555",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "RR"},
                      "performer": [{"reference": f"Organization?identifier=urn:yilian:org|{org_id}"}]},
         "request": {"method": "POST", "url": "Observation"}},
    ])
    r = fhir.post("", json=b)
    assert r.status_code == 200, r.text
    pid, oid, performed = (e["response"]["location"].split("/")[1] for e in r.json()["entry"])
    found = fhir.get("/Observation", params={"subject": f"Patient/{pid}"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [oid]
    found = fhir.get("/Observation", params={"performer": f"Organization/{org}"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [performed]


def test_rows_a_caller_checked_ahead_follow_the_references_the_transaction_rewrites(hub, fhir):
    """A caller (the HL7 ingest) may hand process_bundle the entries it validated and indexed
    itself; where the transaction then rewrites an entry's urn:uuid references, those rows are
    made again, so searches find the references as stored."""
    from hub.fhir.bundles import check_entries, process_bundle
    from hub.security.access import Access
    from hub.security.scopes import parse_scopes
    from hub.security.tokens import Principal

    b = tx([
        {"fullUrl": "urn:uuid:66666666-6666-6666-6666-666666666666",
         "resource": {"resourceType": "Patient", "name": [{"family": "Sun"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:77777777-7777-7777-7777-777777777777",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "HR"},
                      "subject": {"reference": "urn:uuid:66666666-6666-6666-6666-666666666666"}},
         "request": {"method": "POST", "url": "Observation"}},
    ])
    access = Access(Principal("tests", "tests", parse_scopes("system/*.cruds"), "system/*.cruds"))
    r = process_bundle(hub.hub.fhir, b, access, transaction=True, checked=check_entries(b))
    assert r.status == 200, r.body
    pid, oid = (e["response"]["location"].split("/")[1] for e in r.body["entry"])
    found = fhir.get("/Observation", params={"subject": f"Patient/{pid}"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [oid]
