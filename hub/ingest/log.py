"""The raw log: storing incoming items (append-only, deduplicated) and reading their outcomes.

Duplicates (chapter "hub/ — the ingest log" of issue 3):

* the same ``(organization, sender item id)`` again → nothing stored, the first result answers
  (``duplicate=true``);
* the same HL7 message (organization, MSH-10 control id, SHA-256 of the bytes) under a new item
  id → stored (the raw log keeps every delivery) with ``duplicate_of`` naming the first, never
  processed, answered with the first's outcome.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import Connection, and_, insert, or_, select
from sqlalchemy.exc import IntegrityError

from adapters.hl7v2 import read_header
from hub.fhir.model import now_us
from hub.ingest.normalize import RawMessage
from hub.ingest.schema import ingest_messages as M
from hub.ingest.schema import ingest_status as S
from hub.storage.db import write_tx

KINDS = frozenset(("hl7v2", "csv", "json", "xml", "cda", "dicom-meta"))

#: the statuses of the HTTP contract; a claimed message is still "received" for the sender
STATUSES = ("received", "normalized", "rejected", "failed", "unsupported")


@dataclass
class Incoming:
    """One item of an ingest request, validated."""

    item_id: str
    kind: str
    payload: bytes
    feed: str | None = None
    received_at: int | None = None
    charset_hint: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class Claim:
    """Who holds a "processing" claim on messages, and until when (µs)."""

    worker: str
    until: int


@dataclass
class Stored:
    """Where an item ended up: its raw-log id, the id whose outcome answers for it, and whether
    it was new (and still needs normalizing)."""

    item_id: str
    message_id: int
    outcome_id: int
    duplicate: bool
    new: bool
    raw: RawMessage | None = None


_NO_HEADER = {"sending_app": None, "sending_facility": None, "control_id": None, "message_type": None,
              "version": None, "charset": None}


def _header_columns(item: Incoming) -> dict:
    """MSH fields for the raw log (every row has every column: rows are inserted together)."""
    if item.kind != "hl7v2":
        return _NO_HEADER
    h = read_header(item.payload, item.charset_hint)
    mtype = "^".join(x for x in (h.message_type, h.trigger) if x) or None
    return {"sending_app": _clip(h.sending_application, 255), "sending_facility": _clip(h.sending_facility, 255),
            "control_id": _clip(h.control_id, 200), "message_type": _clip(mtype, 20),
            "version": _clip(h.version, 20), "charset": _clip(h.charset, 40)}


def _clip(v: str | None, n: int) -> str | None:
    return v[:n] if v else None


def store_items(engine, organization: str, client_id: str | None, items: Sequence[Incoming], *,
                claim: Claim | None = None) -> list[Stored]:
    """Write the new items to the raw log in one transaction and queue them (status received, or
    processing under ``claim`` for a request that normalizes them itself; unsupported at once for
    kinds no adapter reads). Returns one :class:`Stored` per item."""
    try:
        return _store_items(engine, organization, client_id, items, claim)
    except IntegrityError:
        # a concurrent request stored the same item or content first: now we see it as a duplicate
        return _store_items(engine, organization, client_id, items, claim)


def _store_items(engine, organization, client_id, items, claim) -> list[Stored]:
    now = now_us()
    out: list[Stored | None] = [None] * len(items)
    with write_tx(engine) as conn:
        known = _known_items(conn, organization, [it.item_id for it in items])
        rows: list[dict] = []
        row_items: list[int] = []
        seen_items: dict[str, int] = {}
        for i, it in enumerate(items):
            if it.item_id in known:
                mid, first = known[it.item_id]
                out[i] = Stored(it.item_id, mid, first or mid, True, False)
            elif it.item_id in seen_items:
                out[i] = ("same-item", seen_items[it.item_id])  # resolved below
            else:
                seen_items[it.item_id] = i
                digest = hashlib.sha256(it.payload).hexdigest()
                rows.append({"organization": organization, "item_id": it.item_id, "kind": it.kind,
                             "feed": it.feed, "received_at": it.received_at, "stored_at": now,
                             "client_id": client_id, "payload": it.payload, "sha256": digest,
                             "charset_hint": it.charset_hint, "filename": it.filename,
                             "duplicate_of": None, **_header_columns(it)})
                row_items.append(i)
        firsts = _first_by_content(conn, organization, [r for r in rows if r.get("control_id")])
        originals, copies = [], []
        for r, i in zip(rows, row_items):
            key = (r.get("control_id"), r["sha256"])
            if r.get("control_id") and key in firsts:
                copies.append((r, i, key))
            else:
                if r.get("control_id"):
                    firsts[key] = None  # the first of this content is in this request
                originals.append((r, i, key))
        ids = _insert(conn, organization, [r for r, _, _ in originals])
        for (r, i, key), mid in zip(originals, ids):
            if r.get("control_id") and firsts.get(key) is None:
                firsts[key] = mid
            raw = RawMessage(mid, organization, r["kind"], r["payload"], r["charset_hint"], r.get("sending_facility"))
            out[i] = Stored(r["item_id"], mid, mid, False, True, raw)
        for r, _, key in copies:
            r["duplicate_of"] = firsts[key]
        copy_ids = _insert(conn, organization, [r for r, _, _ in copies])
        for (r, i, key), mid in zip(copies, copy_ids):
            out[i] = Stored(r["item_id"], mid, firsts[key], True, False)
        if originals:
            conn.execute(insert(S), [_queued_status(r["kind"], mid, now, claim)
                                     for (r, _, _), mid in zip(originals, ids)])
    for i, o in enumerate(out):
        if isinstance(o, tuple):  # the same item id twice in one request: the second is a duplicate
            first = out[o[1]]
            out[i] = Stored(first.item_id, first.message_id, first.outcome_id, True, False)
    return out  # type: ignore[return-value]


def _queued_status(kind: str, mid: int, now: int, claim: Claim | None) -> dict:
    row = {"message_id": mid, "status": "processing" if claim else "received", "attempts": 0, "next_attempt_at": 0,
           "updated_at": now, "processed_by": claim.worker if claim else None,
           "claimed_until": claim.until if claim else None, "ack_code": None, "ack": None, "permanent": False, "error_code": None,
           "error_text": None, "error_segment": None, "error_field": None, "resources": None,
           "skipped_stale": None}
    if kind != "hl7v2":
        row.update(status="unsupported", error_text=f"{kind} messages are stored; no adapter maps them yet")
    return row


def _insert(conn: Connection, organization: str, rows: list[dict]) -> list[int]:
    """Insert raw-log rows of ``organization``; returns their ids in the order of ``rows``. One
    executemany, then the ids by the rows' unique (organization, item id): SQLAlchemy runs an
    ``INSERT … RETURNING`` that must keep the order of its rows one row at a time (the table
    has no sentinel column for it to sort by), a statement per message."""
    if not rows:
        return []
    conn.execute(insert(M), rows)
    ids: dict[str, int] = {}
    for chunk in _chunks([r["item_id"] for r in rows], 500):
        ids.update((r.item_id, r.id) for r in conn.execute(
            select(M.c.item_id, M.c.id).where(M.c.organization == organization, M.c.item_id.in_(chunk))))
    return [ids[r["item_id"]] for r in rows]


def _known_items(conn: Connection, organization: str, item_ids: list[str]) -> dict[str, tuple[int, int | None]]:
    out = {}
    for chunk in _chunks(list(dict.fromkeys(item_ids)), 500):
        q = select(M.c.item_id, M.c.id, M.c.duplicate_of).where(M.c.organization == organization,
                                                               M.c.item_id.in_(chunk))
        out.update({r.item_id: (r.id, r.duplicate_of) for r in conn.execute(q)})
    return out


def _first_by_content(conn: Connection, organization: str, rows: list[dict]) -> dict:
    out: dict = {}
    wanted = {(r["control_id"], r["sha256"]) for r in rows}
    for chunk in _chunks(sorted({c for c, _ in wanted}), 500):
        q = select(M.c.control_id, M.c.sha256, M.c.id).where(
            M.c.organization == organization, M.c.control_id.in_(chunk), M.c.duplicate_of.is_(None))
        for r in conn.execute(q):
            if (r.control_id, r.sha256) in wanted:
                out[(r.control_id, r.sha256)] = r.id
    return out


def _chunks(xs: list, n: int) -> Iterable[list]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


# ---------------------------------------------------------------------- reading outcomes

_ITEM_COLUMNS = (M.c.id, M.c.organization, M.c.item_id, M.c.duplicate_of, S.c.status, S.c.ack_code, S.c.ack,
                 S.c.permanent, S.c.error_code, S.c.error_text, S.c.error_segment, S.c.error_field)


def outcomes(conn: Connection, ids: Iterable[int]) -> dict[int, dict]:
    """Status rows by raw-log id (the ids whose outcome answers: originals)."""
    out = {}
    for chunk in _chunks(list(dict.fromkeys(ids)), 500):
        q = select(S).where(S.c.message_id.in_(chunk))
        out.update({r.message_id: dict(r._mapping) for r in conn.execute(q)})
    return out


def item_result(item_id: str, message_id: int, duplicate: bool, status: dict | None) -> dict:
    """The per-item object of the HTTP contract."""
    st = (status or {}).get("status") or "received"
    if st == "processing":  # claimed by a worker: still pending for the sender
        st = "received"
    ack = (status or {}).get("ack")
    return {"id": item_id, "message_id": str(message_id), "status": st, "duplicate": duplicate,
            "ack_code": (status or {}).get("ack_code"),
            "ack": base64.b64encode(ack).decode() if ack else None,
            "permanent": bool((status or {}).get("permanent")),
            "error": error_text(status)}


def error_text(status: dict | None) -> str | None:
    if not status or not status.get("error_text"):
        return None
    where = ""
    if status.get("error_segment"):
        where = f" at {status['error_segment']}" + (f"-{status['error_field']}" if status.get("error_field") else "")
    elif status.get("error_field"):
        where = f" at {status['error_field']}"
    code = f"HL7 {status['error_code']}" if status.get("error_code") is not None else "error"
    return f"{code}{where}: {status['error_text']}"


def read_message(conn: Connection, message_id: int) -> dict | None:
    """One raw-log row with its (or its first copy's) status, for inspection."""
    row = conn.execute(select(M).where(M.c.id == message_id)).first()
    if row is None:
        return None
    m = dict(row._mapping)
    m["status_row"] = outcomes(conn, [m["duplicate_of"] or m["id"]]).get(m["duplicate_of"] or m["id"])
    return m


def message_view(m: dict, *, with_payload: bool) -> dict:
    """The listing / inspection view of a raw-log row (payload only when asked and allowed)."""
    st = m.get("status_row") or {}
    out = item_result(m["item_id"], m["id"], m["duplicate_of"] is not None, st)
    out.update({
        "organization": m["organization"], "kind": m["kind"], "feed": m["feed"],
        "received_at": _iso(m["received_at"]), "stored_at": _iso(m["stored_at"]), "sha256": m["sha256"],
        "sending_application": m["sending_app"], "sending_facility": m["sending_facility"],
        "control_id": m["control_id"], "message_type": m["message_type"], "version": m["version"],
        "charset": m["charset"], "duplicate_of": str(m["duplicate_of"]) if m["duplicate_of"] else None,
        "attempts": st.get("attempts"), "updated_at": _iso(st.get("updated_at")),
        "processed_by": st.get("processed_by"),
        "error_detail": ({"code": st.get("error_code"), "segment": st.get("error_segment"),
                          "field": st.get("error_field"), "text": st.get("error_text")}
                         if st.get("error_text") else None),
        "resources": orjson.loads(st["resources"]) if st.get("resources") else [],
        "skipped_stale": orjson.loads(st["skipped_stale"]) if st.get("skipped_stale") else [],
    })
    if with_payload:
        out["payload"] = base64.b64encode(m["payload"]).decode()
    return out


def _iso(us: int | None) -> str | None:
    from hub.fhir.model import instant

    return instant(us) if us is not None else None


def message_filters(*, status: str | None = None, message_type: str | None = None,
                    organization: str | None = None, sending_facility: str | None = None,
                    since: int | None = None, until: int | None = None, kind: str | None = None) -> list:
    """WHERE conditions over the raw log joined to its status, shared by listing and reprocessing."""
    conds = []
    if status == "received":
        conds.append(S.c.status.in_(("received", "processing")))
    elif status:
        conds.append(S.c.status == status)
    if message_type:
        conds.append(M.c.message_type == message_type)
    if organization:
        conds.append(M.c.organization == organization)
    if sending_facility:
        conds.append(or_(M.c.sending_facility == sending_facility,
                         M.c.sending_facility.like(sending_facility.replace("%", r"\%") + "^%", escape="\\")))
    if kind:
        conds.append(M.c.kind == kind)
    if since is not None:
        conds.append(M.c.stored_at >= since)
    if until is not None:
        conds.append(M.c.stored_at <= until)
    return conds


def list_messages(conn: Connection, conds: list, *, limit: int, offset: int, with_payload: bool) -> list[dict]:
    cols = [M] if with_payload else [c for c in M.c if c.name != "payload"]
    q = (select(*cols, *[c.label(f"s_{c.name}") for c in S.c])
         .select_from(M.join(S, S.c.message_id == M.c.id))
         .where(and_(*conds) if conds else True).order_by(M.c.id.desc()).limit(limit).offset(offset))
    out = []
    for r in conn.execute(q):
        d = dict(r._mapping)
        m = {k: v for k, v in d.items() if not k.startswith("s_")}
        m.setdefault("payload", b"")
        m["status_row"] = {k[2:]: v for k, v in d.items() if k.startswith("s_")}
        out.append(message_view(m, with_payload=with_payload))
    return out
