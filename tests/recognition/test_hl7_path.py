"""The HL7 v2 path: an ORU^R01 from hospital H001 through ``POST /ingest/messages`` becomes an
Observation carrying the HR mark, recognizable for a physician at H002 (real HTTP, both engines)."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from hub.recognition.results import MARK_SYSTEM
from tests.recognition.conftest import sample_bytes
from tests.recognition.test_recognition_http import (
    ADMIN,
    DOCTOR,
    ask,
    candidates,
    qualifications,
    summary,
)

#: H001's LIS sends its codes with coding system "L" (local): the hub files them under
#: …/CodeSystem/local/H001/lab, the system a blank ``local_system`` in the code file stands for
H001_HL7_CODES = "H001,,GLU,葡萄糖,14749-6,CAT-GLU,mmol/L\nH001,,HGB,血红蛋白,718-7,CAT-HGB,g/L\n"


def hl7_time(days_ago: float) -> str:
    return (datetime.now(timezone(timedelta(hours=8))) - timedelta(days=days_ago)).strftime("%Y%m%d%H%M%S+0800")


def oru_r01(mrn: str, code: str, name: str, value: str, unit: str, days_ago: float, status: str = "F",
            person: str = "李^四||19700101|F") -> bytes:
    when, cid, filler = hl7_time(days_ago), uuid.uuid4().hex[:20], uuid.uuid4().hex[:8]
    segs = [f"MSH|^~\\&|LIS|H001|YILIAN|HUB|{hl7_time(0)}||ORU^R01^ORU_R01|{cid}|P|2.5.1|||||CHN|UNICODE UTF-8",
            f"PID|1||{mrn}^^^H001^MR||{person}",
            f"OBR|1|P{filler}|{filler}^LIS|{code}^{name}^L|||{when}|||||||||||||||{when}||CH|{status}",
            f"OBX|1|NM|{code}^{name}^L||{value}|{unit}^{unit}^UCUM||N|||{status}|||{when}"]
    return ("\r".join(segs) + "\r").encode("utf-8")


@pytest.fixture(scope="module")
def published(hub):
    with httpx.Client(base_url=hub.root, timeout=60, headers={"Authorization": f"Bearer {hub.token(ADMIN)}"}) as c:
        for kind, body in (("scopes", sample_bytes("scopes")), ("catalogue", sample_bytes("catalogue")),
                           ("codemaps", sample_bytes("codemaps") + H001_HL7_CODES.encode()),
                           ("qualifications", qualifications())):
            r = c.post(f"/recognition/reference/{kind}", params={"effective_from": "2000-01-01", "retag": "wait"},
                       content=body, headers={"Content-Type": "text/csv"})
            assert r.status_code == 201, r.text


def ingest(hub, message: bytes) -> dict:
    token = hub.token("yilian/ingest", organization="H001", client_id="fep-h001", subject="fep-h001")
    with httpx.Client(base_url=hub.root, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/ingest/messages", json={"organization": "H001", "wait": True, "messages": [{
            "id": str(uuid.uuid4()), "kind": "hl7v2", "feed": "lis", "received_at": "2026-12-01T08:00:00Z",
            "charset": None, "filename": None, "payload": base64.b64encode(message).decode()}]})
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    ack = base64.b64decode(result["ack"]).decode()
    assert "MSA|AA" in ack or "MSA|CA" in ack, ack
    return result


def observations_of(fhir, code: str, mrn: str) -> list[dict]:
    found = fhir.get("/Observation", params={"code": f"https://yilian.example.org/fhir/CodeSystem/local/H001/lab|{code}",
                                             "patient.identifier": mrn, "_count": 50}).json()
    return [e["resource"] for e in found.get("entry", [])]


def test_oru_from_h001_is_marked_and_recognizable_at_h002(hub, published, fhir):
    mrn = uuid.uuid4().hex[:10]
    ingest(hub, oru_r01(mrn, "GLU", "葡萄糖", "5.8", "mmol/L", 3))
    [obs] = observations_of(fhir, "GLU", mrn)
    assert {t["code"] for t in obs["meta"]["tag"] if t["system"] == MARK_SYSTEM} == {"WH", "HB"}
    pid = obs["subject"]["reference"].split("/", 1)[1]
    with hub.client(DOCTOR, subject="dr-li", organization="H002") as doctor:
        [c] = candidates(ask(doctor, pid, "urn:yilian:h002:lis", "B-GLU-01"))
        assert summary(c) == ("RECOGNIZABLE", [])
        assert c["result"][0]["valueReference"]["reference"] == f"Observation/{obs['id']}"
        assert c["performer"][0]["valueReference"]["identifier"]["value"] == "H001"
        # haemoglobin in g/L from H001, asked in H002's code and unit (g/dL)
        ingest(hub, oru_r01(mrn, "HGB", "血红蛋白", "128", "g/L", 2))
        [c] = candidates(ask(doctor, pid, "urn:yilian:h002:lis", "XHB"))
        assert summary(c) == ("RECOGNIZABLE", [])
        assert c["valueInRequesterUnit"][0]["valueQuantity"]["value"] == 12.8


def test_oru_beyond_the_time_limit_and_preliminary(hub, published, fhir):
    mrn = uuid.uuid4().hex[:10]
    person = "王^五||19851212|M"  # not the person of the other test (the MPI would link them)
    ingest(hub, oru_r01(mrn, "GLU", "葡萄糖", "6.0", "mmol/L", 45, person=person))
    ingest(hub, oru_r01(mrn, "GLU", "葡萄糖", "6.2", "mmol/L", 1, status="P", person=person))
    obs = observations_of(fhir, "GLU", mrn)
    assert len(obs) == 2
    pid = obs[0]["subject"]["reference"].split("/", 1)[1]
    with hub.client(DOCTOR, subject="dr-li", organization="H002") as doctor:
        got = sorted(summary(c) for c in candidates(ask(doctor, pid, "urn:yilian:h002:lis", "B-GLU-01")))
    assert got == [("NOT_RECOGNIZABLE", ["NOT_FINAL"]), ("NOT_RECOGNIZABLE", ["TIME_EXPIRED"])]
