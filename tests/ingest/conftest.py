"""Helpers for the ingest tests: HL7 v2 messages, and a client for ``{root}/ingest``."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

ORG = "HOSPA"


def hl7(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


def adt_a01(mrn: str, *, control_id: str | None = None, when: str = "20261201080000", family: str = "张",
            given: str = "三", trigger: str = "A01", sex: str = "M") -> bytes:
    cid = control_id or uuid.uuid4().hex[:20]
    return hl7(f"MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|{when}||ADT^{trigger}^ADT_A01|{cid}|P|2.5|||||CHN|UNICODE UTF-8",
               f"EVN|{trigger}|{when}",
               f"PID|1||{mrn}^^^HOSPA^MR||{family}^{given}||19800101|{sex}",
               "PV1|1|I|W1^101^1")


def oru_r01(mrn: str, filler: str, *, n_obx: int = 3, control_id: str | None = None,
            when: str = "20261201090000", value: float = 5.0) -> bytes:
    cid = control_id or uuid.uuid4().hex[:20]
    segs = [f"MSH|^~\\&|LIS|HOSPA|YILIAN|HUB|{when}||ORU^R01^ORU_R01|{cid}|P|2.5.1|||||CHN|UNICODE UTF-8",
            f"PID|1||{mrn}^^^HOSPA^MR||李^四||19700101|F",
            f"OBR|1|P{filler}|{filler}^LIS|24331-1^Lipid panel^LN|||{when}|||||||||||||||{when}||CH|F"]
    for i in range(1, n_obx + 1):
        segs.append(f"OBX|{i}|NM|{2000 + i}-{i % 10}^Test {i}^LN||{value + i}|mmol/L^mmol/L^UCUM|1-10|N|||F|||{when}")
    return hl7(*segs)


def item(payload: bytes, *, item_id: str | None = None, kind: str = "hl7v2", feed: str = "his-adt") -> dict:
    return {"id": item_id or str(uuid.uuid4()), "kind": kind, "feed": feed,
            "received_at": "2026-12-01T08:00:00.123Z", "charset": None, "filename": None,
            "payload": base64.b64encode(payload).decode()}


def ingest_client(hub, scopes: str = "yilian/ingest", org: str | None = ORG, **kw) -> httpx.Client:
    token = hub.token(scopes, organization=org, client_id=kw.pop("client_id", "fep-hosp-a"),
                      subject=kw.pop("subject", "fep-hosp-a"))
    return httpx.Client(base_url=hub.root, timeout=60, headers={"Authorization": f"Bearer {token}"})


def post(client: httpx.Client, *items: dict, org: str = ORG, wait: bool = True) -> list[dict]:
    r = client.post("/ingest/messages", json={"organization": org, "wait": wait, "messages": list(items)})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def ack_segments(result: dict) -> list[list[str]]:
    text = base64.b64decode(result["ack"]).decode("utf-8")
    return [seg.split("|") for seg in text.split("\r") if seg]


@pytest.fixture(scope="module")
def fep(hub):
    with ingest_client(hub) as c:
        yield c


@pytest.fixture(scope="module")
def admin(hub):
    with ingest_client(hub, "yilian/ingest-admin yilian/monitor", org=None, client_id="ops", subject="ops") as c:
        yield c
