"""Authorization and audit over real HTTP on both engines: OAuth2 client credentials, JWT
checks, SMART v2 scopes per interaction, patient context, and an AuditEvent per access."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from hub.security.tokens import register_client
from tests.conftest import unique


def test_every_fhir_endpoint_requires_a_token(hub):
    for method, path in [("GET", "/Patient"), ("GET", "/Patient/x"), ("POST", "/Patient"), ("GET", "/_history"),
                         ("POST", "")]:
        r = httpx.request(method, hub.base + path, json={"resourceType": "Patient"} if method == "POST" else None)
        assert r.status_code == 401, (method, path)
        assert r.json()["resourceType"] == "OperationOutcome"
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_bad_tokens_are_refused(hub):
    now = int(time.time())
    claims = {"iss": hub.settings.token_issuer, "aud": hub.settings.token_audience, "sub": "x",
              "scope": "system/*.cruds", "exp": now + 60}
    cases = {
        "wrong key": jwt.encode(claims, "another-secret-another-secret-000", algorithm="HS256"),
        "expired": jwt.encode({**claims, "exp": now - 10}, hub.settings.token_secret, algorithm="HS256"),
        "wrong audience": jwt.encode({**claims, "aud": "other"}, hub.settings.token_secret, algorithm="HS256"),
        "unknown issuer": jwt.encode({**claims, "iss": "evil"}, hub.settings.token_secret, algorithm="HS256"),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "garbage": "not.a.jwt",
    }
    for name, tok in cases.items():
        r = httpx.get(hub.base + "/Patient", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 401, name


def test_client_credentials_flow(hub):
    cid = unique("fep-")
    secret = register_client(hub.hub.engine, cid, "system/Patient.rs system/Observation.cruds", organization="HOSPA")
    r = httpx.post(hub.root + "/oauth2/token", data={"grant_type": "client_credentials", "client_id": cid,
                                                     "client_secret": secret})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    tok = body["access_token"]
    h = {"Authorization": f"Bearer {tok}"}
    assert httpx.get(hub.base + "/Patient", headers=h).status_code == 200
    assert httpx.post(hub.base + "/Patient", headers=h, json={"resourceType": "Patient"}).status_code == 403
    assert httpx.post(hub.base + "/Observation", headers=h, json={
        "resourceType": "Observation", "status": "final", "code": {"text": "x"}}).status_code == 201
    # a narrower scope on request
    r = httpx.post(hub.root + "/oauth2/token", auth=(cid, secret),
                   data={"grant_type": "client_credentials", "scope": "system/Patient.r system/Encounter.r"})
    assert r.json()["scope"] == "system/Patient.r"
    bad = httpx.post(hub.root + "/oauth2/token", data={"grant_type": "client_credentials", "client_id": cid,
                                                       "client_secret": "wrong"})
    assert bad.status_code == 401


@pytest.mark.parametrize("scopes, method, path, expected", [
    ("user/Patient.r", "GET", "/Patient/{pid}", 200),
    ("user/Patient.r", "GET", "/Patient", 403),          # r is not s
    ("user/Patient.s", "GET", "/Patient", 200),
    ("user/Patient.rs", "DELETE", "/Patient/{pid}", 403),
    ("user/Observation.rs", "GET", "/Patient/{pid}", 403),
    ("user/*.read", "GET", "/Patient", 200),            # SMART v1 form
    ("system/Patient.cruds", "GET", "/Observation", 403),
])
def test_scopes_are_enforced_per_interaction(hub, scopes, method, path, expected):
    with hub.client() as admin:
        pid = admin.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    with hub.client(scopes) as c:
        assert c.request(method, path.format(pid=pid)).status_code == expected


def test_patient_context_confines_patient_scopes(hub):
    with hub.client() as admin:
        mine = admin.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        other = admin.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        for pid in (mine, other):
            admin.post("/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                             "subject": {"reference": f"Patient/{pid}"}})
    with hub.client("patient/*.rs", patient=mine) as c:
        assert c.get(f"/Patient/{mine}").status_code == 200
        assert c.get(f"/Patient/{other}").status_code == 403
        obs = c.get("/Observation").json()
        assert obs["total"] == 1
        assert obs["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{mine}"
    with hub.client("patient/*.rs") as c:  # no patient in the token: patient scopes grant nothing
        assert c.get(f"/Patient/{mine}").status_code == 403


def test_each_access_is_audited(hub):
    with hub.client() as admin:
        pid = admin.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    subject = unique("dr-")
    with hub.client("user/Patient.rs", subject=subject) as c:
        c.get(f"/Patient/{pid}")
        c.get("/Patient", params={"_id": pid})
        c.get("/Patient/nope-404")
    deadline = time.time() + 10
    with hub.client() as admin:
        while True:
            events = admin.get("/AuditEvent", params={"entity": f"Patient/{pid}", "_count": 100}).json().get("entry", [])
            mine = [e["resource"] for e in events
                    if e["resource"]["agent"][0]["who"]["identifier"]["value"] == subject]
            # the 404's event may be written in a later audit batch than the two reads'
            failures = admin.get("/AuditEvent", params={"outcome": "4", "_count": 200}).json().get("entry", [])
            failed = any(e["resource"]["agent"][0]["who"]["identifier"]["value"] == subject for e in failures)
            if (len(mine) >= 2 and failed) or time.time() > deadline:
                break
            time.sleep(0.2)
        kinds = sorted(e["subtype"][0]["code"] for e in mine)
        assert kinds == ["read", "search-type"]
        assert all(e["outcome"] == "0" for e in mine)
        search_ev = next(e for e in mine if e["subtype"][0]["code"] == "search-type")
        assert any("query" in ent for ent in search_ev["entity"])
        assert failed
