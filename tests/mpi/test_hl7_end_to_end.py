"""End to end through the HL7 v2 ingest (real HTTP, both engines): one person registered at
three organizations becomes one golden record, $everything returns the records of all three,
and an ADT A40 merge is reflected in the index."""

from __future__ import annotations

import base64
import uuid

import httpx

from mappings.identity import org_system, patient_id
from tests.mpi.test_index_http import golden_of, ids, resident_id

BASE = "https://yilian.example.org/fhir"


def _msg(org: str, *segments: str) -> dict:
    text = "\r".join([f"MSH|^~\\&|HIS|{org}|YILIAN|HUB|20261201080000||{segments[0]}|{uuid.uuid4().hex[:20]}|P|2.5"
                      "|||||CHN|UNICODE UTF-8", *segments[1:]]) + "\r"
    return {"id": str(uuid.uuid4()), "kind": "hl7v2", "feed": "his", "received_at": "2026-12-01T08:00:00.000Z",
            "charset": None, "filename": None, "payload": base64.b64encode(text.encode()).decode()}


def _send(hub, org: str, *messages: dict) -> None:
    token = hub.token("yilian/ingest", organization=org, client_id=f"fep-{org}", subject=f"fep-{org}")
    with httpx.Client(base_url=hub.root, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/ingest/messages", json={"organization": org, "wait": True, "messages": list(messages)})
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        ack = base64.b64decode(res["ack"]).decode()
        assert "MSA|AA" in ack or "MSA|CA" in ack, ack


def _adt(org: str, trigger: str, pid3: str, name: str = "欧阳^秀英", *extra: str) -> dict:
    return _msg(org, f"ADT^{trigger}^ADT_A01", f"EVN|{trigger}|20261201080000",
                f"PID|1||{pid3}||{name}||19800315|F", "PV1|1|O|OPD^1^1", *extra)


def _oru(org: str, mrn: str, filler: str) -> dict:
    return _msg(org, "ORU^R01^ORU_R01", f"PID|1||{mrn}^^^{org}^MR||欧阳^秀英||19800315|F",
                f"OBR|1|P{filler}|{filler}^LIS|718-7^Hemoglobin^LN|||20261201090000|||||||||||||||20261201090000||HM|F",
                "OBX|1|NM|718-7^Hemoglobin^LN||128|g/L^g/L^UCUM|115-150|N|||F|||20261201090000")


def _pid(org: str, mrn: str) -> str:
    return patient_id(org_system(org, "mrn", BASE), mrn)


def test_three_organizations_one_golden_record_everything_and_a40(hub, fhir):
    rid = resident_id("19800315", "44", female=True)
    tag = uuid.uuid4().hex[:6]
    a, a2, b, c = f"A{tag}", f"A2{tag}", f"B{tag}", f"C{tag}"
    _send(hub, "HOSPA", _adt("HOSPA", "A04", f"{a}^^^HOSPA^MR~{rid}^^^^NNCHN"), _oru("HOSPA", a, f"LA{tag}"))
    _send(hub, "HOSPB", _adt("HOSPB", "A04", f"{b}^^^HOSPB^MR~{rid}^^^^NNCHN"), _oru("HOSPB", b, f"LB{tag}"))
    _send(hub, "HOSPC", _adt("HOSPC", "A04", f"{c}^^^HOSPC^MR"), _oru("HOSPC", c, f"LC{tag}"))
    pa, pb, pc = (fhir.get(f"/Patient/{_pid(o, m)}").json() for o, m in (("HOSPA", a), ("HOSPB", b), ("HOSPC", c)))
    person = golden_of(pa)
    assert golden_of(pb) == person and golden_of(pc) == person

    everything = fhir.get(f"/Patient/{pb['id']}/$everything", params={"_type": "Patient,Observation"}).json()
    observations = [e["resource"] for e in everything["entry"] if e["resource"]["resourceType"] == "Observation"]
    subjects = {o["subject"]["reference"] for o in observations}
    assert subjects == {f"Patient/{pa['id']}", f"Patient/{pb['id']}", f"Patient/{pc['id']}"}
    assert {pa["id"], pb["id"], pc["id"]} <= ids(everything, "Patient")

    # HOSPA registered her twice; an A40 merges the duplicate (with its result) into the first
    _send(hub, "HOSPA", _adt("HOSPA", "A04", f"{a2}^^^HOSPA^MR", "欧阳^秀"), _oru("HOSPA", a2, f"LD{tag}"))
    dup = _pid("HOSPA", a2)
    dup_obs = fhir.get("/Observation", params={"subject": f"Patient/{dup}"}).json()
    assert len(ids(dup_obs)) == 1
    _send(hub, "HOSPA", _msg("HOSPA", "ADT^A40^ADT_A39", "EVN|A40|20261201100000",
                             f"PID|1||{a}^^^HOSPA^MR||欧阳^秀英||19800315|F", f"MRG|{a2}^^^HOSPA^MR"))
    moved = fhir.get(f"/Observation/{next(iter(ids(dup_obs)))}").json()
    assert moved["subject"]["reference"] == f"Patient/{pa['id']}"
    merged = fhir.get(f"/Patient/{dup}").json()
    assert merged["active"] is False
    golden = fhir.get(f"/Patient/{person}").json()
    assert f"Patient/{dup}" not in [lk["other"]["reference"] for lk in golden["link"]]
    after = fhir.get(f"/Patient/{pc['id']}/$everything", params={"_type": "Observation"}).json()
    assert moved["id"] in ids(after) and len(ids(after)) == 4
