"""The front-end processor's own hub client (``front_end_processor.hub_client``) against the
real hub, on both engines: the HTTP contract both sides code against, end to end."""

from __future__ import annotations

import asyncio
import time
import uuid

from front_end_processor.hub_client import HubClient, HubRefused
from front_end_processor.outbox import PendingItem, iso
from hub.security.tokens import register_client

from .conftest import ORG, adt_a01


def _pending(seq: int, payload: bytes, kind: str = "hl7v2") -> PendingItem:
    return PendingItem(seq=seq, id=f"{uuid.uuid4().hex}-{seq}", kind=kind, feed="his-adt", order_key=None,
                       received_at=iso(time.time()), charset=None, filename=None, payload=payload)


def test_the_front_end_processors_client_delivers_and_reports(hub, admin):
    client_id = "fep-contract-" + uuid.uuid4().hex[:6]
    secret = register_client(hub.hub.engine, client_id, "yilian/ingest", organization=ORG)

    async def run():
        c = HubClient(hub.root, client_id, secret, ORG)
        try:
            items = [_pending(1, adt_a01("FEP-1")), _pending(2, b"not hl7"), _pending(3, b"a,b\n1,2\n", "csv")]
            first = await c.send(items)
            again = await c.send(items[:1])
            await c.heartbeat({"organization": ORG, "node": client_id, "version": "test", "uptime_s": 1,
                               "outbox": {"depth": 0, "oldest_pending_age_s": 0}, "dead_letters": 0})
            try:
                await c.send([_pending(4, b"x", "pdf")])
                refused = None
            except HubRefused as e:
                refused = e.status
            return first, again, refused
        finally:
            await c.aclose()

    first, again, refused = asyncio.run(run())
    assert [r["status"] for r in first] == ["normalized", "rejected", "unsupported"]
    assert [r["permanent"] for r in first] == [False, True, False]
    assert again[0]["duplicate"] is True and again[0]["message_id"] == first[0]["message_id"]
    assert refused == 400
    nodes = admin.get("/ingest/heartbeats").json()["nodes"]
    assert any(n["node"] == client_id and n["stale"] is False for n in nodes)
