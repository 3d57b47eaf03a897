"""FHIR REST interactions over real HTTP, on SQLite and PostgreSQL (http.html)."""

from __future__ import annotations

import concurrent.futures

from tests.conftest import unique


def patient(mrn: str, family: str = "Wang", **kw) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3.mrn", "value": mrn}],
            "name": [{"family": family, "given": ["Fang"]}], "gender": "female", "birthDate": "1975-04-09", **kw}


def test_create_returns_201_location_etag_and_the_stored_resource(fhir):
    r = fhir.post("/Patient", json=patient(unique()))
    assert r.status_code == 201
    body = r.json()
    assert body["meta"]["versionId"] == "1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"].endswith(f"/Patient/{body['id']}/_history/1")
    assert "last-modified" in r.headers
    assert r.headers["content-type"].startswith("application/fhir+json")


def test_read_vread_and_not_found(fhir):
    rid = fhir.post("/Patient", json=patient(unique())).json()["id"]
    r = fhir.get(f"/Patient/{rid}")
    assert r.status_code == 200 and r.json()["id"] == rid
    assert fhir.get(f"/Patient/{rid}/_history/1").json()["meta"]["versionId"] == "1"
    nf = fhir.get("/Patient/does-not-exist")
    assert nf.status_code == 404
    assert nf.json()["resourceType"] == "OperationOutcome"
    assert fhir.get(f"/Patient/{rid}/_history/9").status_code == 404


def test_update_versions_and_if_match(fhir):
    res = fhir.post("/Patient", json=patient(unique())).json()
    rid = res["id"]
    res["gender"] = "male"
    r = fhir.put(f"/Patient/{rid}", json=res, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    stale = fhir.put(f"/Patient/{rid}", json=res, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert fhir.get(f"/Patient/{rid}/_history/1").json()["gender"] == "female"
    assert fhir.get(f"/Patient/{rid}").json()["gender"] == "male"


def test_update_as_create_with_client_id(fhir):
    rid = unique("client-")
    r = fhir.put(f"/Patient/{rid}", json={**patient(unique()), "id": rid})
    assert r.status_code == 201
    assert r.json()["id"] == rid and r.json()["meta"]["versionId"] == "1"


def test_update_with_mismatched_id_is_400(fhir):
    rid = unique("a")
    r = fhir.put(f"/Patient/{rid}", json={**patient(unique()), "id": "other"})
    assert r.status_code == 400


def test_json_patch(fhir):
    rid = fhir.post("/Patient", json=patient(unique())).json()["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "other"}, {"op": "add", "path": "/active", "value": True}]
    r = fhir.patch(f"/Patient/{rid}", content=__import__("json").dumps(ops),
                   headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200
    assert r.json()["gender"] == "other" and r.json()["active"] is True
    assert r.json()["meta"]["versionId"] == "2"
    bad = fhir.patch(f"/Patient/{rid}", content='[{"op":"replace","path":"/gender","value":"nonsense"}]',
                     headers={"Content-Type": "application/json-patch+json"})
    assert bad.status_code in (400, 422)
    assert "gender" in bad.text


def test_delete_is_soft_with_history(fhir):
    rid = fhir.post("/Patient", json=patient(unique())).json()["id"]
    assert fhir.delete(f"/Patient/{rid}").status_code == 204
    assert fhir.get(f"/Patient/{rid}").status_code == 410
    assert fhir.delete(f"/Patient/{rid}").status_code == 204  # idempotent
    hist = fhir.get(f"/Patient/{rid}/_history").json()
    assert hist["type"] == "history" and hist["total"] == 2
    methods = [e["request"]["method"] for e in hist["entry"]]
    assert methods == ["DELETE", "POST"]
    assert fhir.get(f"/Patient/{rid}/_history/1").status_code == 200
    assert fhir.get(f"/Patient/{rid}/_history/2").status_code == 410


def test_history_type_system_since_and_count(fhir):
    marker = unique()
    t0 = fhir.post("/Patient", json=patient(marker)).json()["meta"]["lastUpdated"]
    for _ in range(3):
        fhir.post("/Patient", json=patient(unique()))
    h = fhir.get("/Patient/_history", params={"_since": t0, "_count": 2}).json()
    assert len(h["entry"]) == 2 and h["total"] >= 4
    assert any(link["relation"] == "next" for link in h["link"])
    sys_hist = fhir.get("/_history", params={"_since": t0}).json()
    assert sys_hist["total"] >= 4


def test_conditional_create(fhir):
    mrn = unique()
    cond = {"If-None-Exist": f"identifier=urn:oid:1.2.3.mrn|{mrn}"}
    first = fhir.post("/Patient", json=patient(mrn), headers=cond)
    again = fhir.post("/Patient", json=patient(mrn), headers=cond)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]


def test_conditional_create_is_unique_under_concurrency(hub):
    mrn = unique()

    def create(_):
        with hub.client() as c:
            return c.post("/Patient", json=patient(mrn),
                          headers={"If-None-Exist": f"identifier=urn:oid:1.2.3.mrn|{mrn}"})

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(create, range(16)))
    assert sorted({r.status_code for r in results}) in ([200, 201], [201])
    assert len({r.json()["id"] for r in results}) == 1
    with hub.client() as c:
        assert c.get("/Patient", params={"identifier": f"urn:oid:1.2.3.mrn|{mrn}"}).json()["total"] == 1


def test_conditional_update_and_delete(fhir):
    mrn = unique()
    q = {"identifier": f"urn:oid:1.2.3.mrn|{mrn}"}
    created = fhir.put("/Patient", params=q, json=patient(mrn))
    assert created.status_code == 201
    updated = fhir.put("/Patient", params=q, json={**patient(mrn), "gender": "male"})
    assert updated.status_code == 200 and updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"
    assert fhir.delete("/Patient", params=q).status_code == 204
    assert fhir.get(f"/Patient/{created.json()['id']}").status_code == 410


def test_conditional_update_with_several_matches_is_412(fhir):
    family = unique("Fam")
    fhir.post("/Patient", json=patient(unique(), family))
    fhir.post("/Patient", json=patient(unique(), family))
    r = fhir.put("/Patient", params={"family": family}, json=patient(unique(), family))
    assert r.status_code == 412


def test_prefer_return(fhir):
    minimal = fhir.post("/Patient", json=patient(unique()), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["location"]
    oo = fhir.post("/Patient", json=patient(unique()), headers={"Prefer": "return=OperationOutcome"})
    assert oo.json()["resourceType"] == "OperationOutcome"


def test_invalid_resource_names_the_element(fhir):
    r = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "robot"})
    assert r.status_code in (400, 422)
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert "gender" in oo["issue"][0]["diagnostics"]
    nested = fhir.post("/Patient", json={"resourceType": "Patient", "identifier": [{"use": "bogus", "value": "1"}]})
    assert nested.status_code == 422 and "Patient.identifier[0].use" in nested.json()["issue"][0]["expression"]
    assert fhir.post("/Patient", json={"resourceType": "Observation", "status": "final",
                                       "code": {"text": "x"}}).status_code in (400, 422)
    assert fhir.post("/Patient", content=b"{not json", headers={"Content-Type": "application/fhir+json"}).status_code == 400
    assert fhir.get("/NoSuchType/1").status_code == 404


def test_validate_operation(fhir):
    ok = fhir.post("/Patient/$validate", json=patient("x")).json()
    assert ok["issue"][0]["severity"] == "information"
    bad = fhir.post("/Patient/$validate", json={"resourceType": "Patient", "birthDate": "not-a-date"}).json()
    assert bad["issue"][0]["severity"] == "error" and "birthDate" in bad["issue"][0]["diagnostics"]


def test_pretty_and_format(fhir):
    rid = fhir.post("/Patient", json=patient(unique())).json()["id"]
    assert b"\n  " in fhir.get(f"/Patient/{rid}", params={"_pretty": "true"}).content
    assert fhir.get(f"/Patient/{rid}", params={"_format": "json"}).status_code == 200
    assert fhir.get(f"/Patient/{rid}", params={"_format": "xml"}).status_code == 406


def test_metadata_lists_resources_and_search_params(hub):
    import httpx

    cs = httpx.get(hub.base + "/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    obs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    names = {p["name"] for p in obs["searchParam"]}
    assert {"code", "subject", "patient", "date", "value-quantity", "code-value-quantity"} <= names
    assert httpx.get(hub.root + "/health").json()["status"] == "ok"
    assert httpx.get(hub.root + "/health/ready").status_code == 200
