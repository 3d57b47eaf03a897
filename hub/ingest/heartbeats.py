"""Front-end processor heartbeats: the latest per node, and a short history.

Each ``POST /ingest/heartbeat`` is kept as sent (JSON) with the time the hub received it; rows
older than ``HISTORY_S`` are pruned when the node reports again. A node is *stale* when its
latest heartbeat is older than ``stale_s``.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, delete, func, insert, select

from hub.fhir.model import instant, now_us
from hub.ingest.schema import ingest_heartbeats as H

HISTORY_S = 24 * 3600


def record(conn: Connection, organization: str, node: str, body: dict) -> None:
    now = now_us()
    conn.execute(insert(H).values(organization=organization, node=node, received_at=now,
                                  body=orjson.dumps(body).decode()))
    conn.execute(delete(H).where(H.c.organization == organization, H.c.node == node,
                                 H.c.received_at < now - HISTORY_S * 1_000_000))


def latest(conn: Connection, *, organization: str | None, stale_s: float) -> list[dict]:
    last = select(func.max(H.c.id).label("id")).group_by(H.c.organization, H.c.node)
    if organization:
        last = last.where(H.c.organization == organization)
    rows = conn.execute(select(H).where(H.c.id.in_(last.scalar_subquery())).order_by(H.c.organization, H.c.node))
    now = now_us()
    out = []
    for r in rows:
        body = orjson.loads(r.body)
        out.append({**body, "organization": r.organization, "node": r.node,
                    "received_at": instant(r.received_at), "stale": (now - r.received_at) > stale_s * 1_000_000})
    return out


def history(conn: Connection, organization: str, node: str, limit: int = 100) -> list[dict]:
    rows = conn.execute(select(H).where(H.c.organization == organization, H.c.node == node)
                        .order_by(H.c.id.desc()).limit(limit))
    return [{**orjson.loads(r.body), "received_at": instant(r.received_at)} for r in rows]
