"""The demonstration alliance of ``yilian demo`` on both engines: the feeds go through the
ingest pipeline, the two registrations are one person, and H001's glucose is recognizable at H002."""

from __future__ import annotations

from hub.demo.alliance import load_alliance


def test_the_demo_alliance_shows_records_across_hospitals_and_a_recognizable_result(hub):
    ids = load_alliance(hub.hub)
    patient = ids["patient_h002"]
    with hub.client("system/*.rs") as c:
        everything = c.get(f"/{patient}/$everything").json()
    sources = {(e["resource"]["resourceType"], (e["resource"].get("meta") or {}).get("source"))
               for e in everything["entry"]}
    assert ("Patient", "urn:yilian:org:H002#HIS") in sources
    assert ("Observation", "urn:yilian:org:H001#LIS") in sources
    order = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order",
             "subject": {"reference": patient},
             "code": {"coding": [{"system": "urn:yilian:h002:lis", "code": "B-GLU-01"}]}}
    with hub.client("user/*.rs user/ServiceRequest.cruds", subject="dr-wang", organization="H002") as doctor:
        answer = doctor.post("/ServiceRequest/$recognizable", json=order).json()
    decisions = [p["valueCode"] for c in answer["parameter"] if c["name"] == "candidate"
                 for p in c["part"] if p["name"] == "decision"]
    assert "RECOGNIZABLE" in decisions
