"""The ingest HTTP API (the contract shared with the front-end processor; see docs/ingest.md).

    POST /ingest/messages                      scope yilian/ingest, organization = token's org
    GET  /ingest/messages/{id}                 scope yilian/ingest (same org) or yilian/ingest-admin
    GET  /ingest/messages?status=…             scope yilian/ingest-admin or yilian/monitor
    POST /ingest/messages/{id}/$reprocess      scope yilian/ingest-admin
    POST /ingest/$reprocess                    scope yilian/ingest-admin (filters in the body)
    POST /ingest/heartbeat                     scope yilian/ingest
    GET  /ingest/heartbeats                    scope yilian/ingest (own org) or yilian/monitor

Whole-request problems answer 400/401/403/413 with an OperationOutcome and store nothing.
"""

from __future__ import annotations

import base64
import binascii

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hub.api.auth import authorize
from hub.errors import Forbidden, InvalidRequest, NotFound
from hub.fhir.search.extract import parse_date_range
from hub.ingest import heartbeats
from hub.ingest import log as rawlog
from hub.ingest.errors import PayloadTooLarge
from hub.security.access import Access
from hub.storage.db import read_tx, write_tx

MAX_MESSAGES = 1000
MAX_BYTES = 64 * 1024 * 1024
INGEST, ADMIN, MONITOR = "yilian/ingest", "yilian/ingest-admin", "yilian/monitor"

router = APIRouter(prefix="/ingest", tags=["ingest"])


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _scopes(access: Access) -> set[str]:
    return set(access.principal.scope_text.split())


def _require_any(request: Request, *scopes: str) -> Access:
    access = authorize(request)
    if not _scopes(access) & set(scopes):
        raise Forbidden(f"the token lacks one of the scopes {', '.join(scopes)}")
    return access


async def _body(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BYTES:
        raise PayloadTooLarge(f"at most {MAX_BYTES} bytes per request")
    raw = await request.body()
    if len(raw) > MAX_BYTES:
        raise PayloadTooLarge(f"at most {MAX_BYTES} bytes per request")
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def _instant(value, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return parse_date_range(str(value))[0]
    except ValueError:
        raise InvalidRequest(f"{name} must be an ISO 8601 instant, not {value!r}") from None


def _opt_str(item: dict, key: str, where: str, n: int = 200) -> str | None:
    v = item.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > n:
        raise InvalidRequest(f"{where}.{key} must be a string of at most {n} characters")
    return v


def parse_items(body: dict) -> list[rawlog.Incoming]:
    """The request's ``messages``, validated; raises InvalidRequest / PayloadTooLarge."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages must be a list", expression=["messages"])
    if len(messages) > MAX_MESSAGES:
        raise PayloadTooLarge(f"at most {MAX_MESSAGES} messages per request, not {len(messages)}")
    items = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidRequest(f"{where} must be an object")
        item_id = m.get("id")
        if not isinstance(item_id, str) or not item_id or len(item_id) > 200:
            raise InvalidRequest(f"{where}.id must be a non-empty string of at most 200 characters")
        kind = m.get("kind") or "hl7v2"
        if kind not in rawlog.KINDS:
            raise InvalidRequest(f"{where}.kind must be one of {', '.join(sorted(rawlog.KINDS))}, not {kind!r}")
        payload = m.get("payload")
        if not isinstance(payload, str):
            raise InvalidRequest(f"{where}.payload must be base64 text")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where}.payload is not valid base64") from None
        items.append(rawlog.Incoming(
            item_id=item_id, kind=kind, payload=data, feed=_opt_str(m, "feed", where, 100),
            received_at=_instant(m.get("received_at"), f"{where}.received_at"),
            charset_hint=_opt_str(m, "charset", where, 40), filename=_opt_str(m, "filename", where, 1000)))
    return items


@router.post("/messages")
async def post_messages(request: Request) -> Response:
    """Store a batch of raw messages; with ``wait`` (default) answer with their ACKs."""
    hub = request.app.state.hub
    access = authorize(request, hub_scope=INGEST)
    body = await _body(request)
    org = body.get("organization")
    if not isinstance(org, str) or not org:
        raise InvalidRequest("organization is required", expression=["organization"])
    if access.principal.organization != org:
        raise Forbidden(f"the token acts for organization {access.principal.organization!r}, not {org!r}")
    wait = body.get("wait", True)
    if not isinstance(wait, bool):
        raise InvalidRequest("wait must be true or false")
    items = parse_items(body)
    results = await run_in_threadpool(hub.ingest.receive, access, org, items, wait=wait)
    response = _json({"results": results})
    # a sender's next batch on a new connection: the kernel hands it to whichever worker process
    # accepts first, usually an idle one. On a kept-alive connection every batch went to the
    # process that accepted it first (four front-end processors on one of two workers: one core)
    response.headers["Connection"] = "close"
    return response


def _message_id(value: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise NotFound(f"no ingest message {value!r}")
    return int(value)


@router.get("/messages/{message_id}")
def get_message(message_id: str, request: Request) -> Response:
    hub = request.app.state.hub
    access = _require_any(request, INGEST, ADMIN, MONITOR)
    scopes = _scopes(access)
    with read_tx(hub.engine) as conn:
        m = rawlog.read_message(conn, _message_id(message_id))
    if m is None:
        raise NotFound(f"no ingest message {message_id!r}")
    if not scopes & {ADMIN, MONITOR} and m["organization"] != access.principal.organization:
        raise NotFound(f"no ingest message {message_id!r}")  # other organizations' messages do not exist
    if scopes & {ADMIN, MONITOR}:
        with_payload = ADMIN in scopes and request.query_params.get("payload") == "true"
        if with_payload:
            hub.ingest.audit_payload_read(access, [m["id"]])
        return _json(rawlog.message_view(m, with_payload=with_payload))
    first = m["duplicate_of"] or m["id"]
    return _json(rawlog.item_result(m["item_id"], first, m["duplicate_of"] is not None, m["status_row"]))


def _filters(params) -> list:
    status = params.get("status")
    if status and status not in rawlog.STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(rawlog.STATUSES)}")
    return rawlog.message_filters(
        status=status, message_type=params.get("type"), organization=params.get("organization"),
        sending_facility=params.get("sender"), kind=params.get("kind"),
        since=_instant(params.get("since"), "since"), until=_instant(params.get("until"), "until"))


@router.get("/messages")
def list_messages(request: Request) -> Response:
    hub = request.app.state.hub
    access = _require_any(request, ADMIN, MONITOR)
    p = request.query_params
    try:
        count = min(int(p.get("_count", 50)), 1000)
        offset = max(int(p.get("_offset", 0)), 0)
    except ValueError:
        raise InvalidRequest("_count and _offset must be integers") from None
    with_payload = p.get("payload") == "true"
    if with_payload and ADMIN not in _scopes(access):
        raise Forbidden("raw payloads are shown to yilian/ingest-admin only")
    with read_tx(hub.engine) as conn:
        items = rawlog.list_messages(conn, _filters(p), limit=count, offset=offset, with_payload=with_payload)
    if with_payload:
        hub.ingest.audit_payload_read(access, [int(m["message_id"]) for m in items])
    return _json({"messages": items, "offset": offset, "count": len(items)})


@router.post("/messages/{message_id}/$reprocess")
async def reprocess_one(message_id: str, request: Request) -> Response:
    hub = request.app.state.hub
    authorize(request, hub_scope=ADMIN)
    mid = _message_id(message_id)

    def run():
        with read_tx(hub.engine) as conn:
            m = rawlog.read_message(conn, mid)
        if m is None:
            raise NotFound(f"no ingest message {message_id!r}")
        hub.ingest.reprocess([m["duplicate_of"] or m["id"]], wait=True)
        with read_tx(hub.engine) as conn:
            return rawlog.message_view(rawlog.read_message(conn, mid), with_payload=False)

    return _json(await run_in_threadpool(run))


@router.post("/$reprocess")
async def reprocess_many(request: Request) -> Response:
    """Requeue the messages matching the body's filters (status, type, organization, sender,
    kind, since, until); with ``wait`` they are processed before the answer."""
    hub = request.app.state.hub
    authorize(request, hub_scope=ADMIN)
    body = await _body(request)
    filters = {k: v for k, v in body.items() if k in ("status", "type", "organization", "sender", "kind",
                                                       "since", "until") and v not in (None, "")}
    if not filters:
        raise InvalidRequest("give at least one filter (status, type, organization, sender, kind, since, until)")
    conds = _filters(filters)
    wait = body.get("wait", False) is True

    def run():
        ids = hub.ingest.select_ids(conds)
        n = hub.ingest.reprocess(ids, wait=wait)
        return {"queued": n, "message_ids": [str(i) for i in ids[:1000]]}

    return _json(await run_in_threadpool(run))


@router.post("/heartbeat")
async def post_heartbeat(request: Request) -> Response:
    hub = request.app.state.hub
    access = authorize(request, hub_scope=INGEST)
    body = await _body(request)
    org = body.get("organization") or access.principal.organization
    if org != access.principal.organization:
        raise Forbidden(f"the token acts for organization {access.principal.organization!r}, not {org!r}")
    node = body.get("node")
    if not isinstance(node, str) or not node or len(node) > 200:
        raise InvalidRequest("node must be a non-empty string of at most 200 characters", expression=["node"])

    def run():
        with write_tx(hub.engine) as conn:
            heartbeats.record(conn, org, node, body)

    await run_in_threadpool(run)
    return Response(status_code=204)


@router.get("/heartbeats")
def get_heartbeats(request: Request) -> Response:
    hub = request.app.state.hub
    access = _require_any(request, INGEST, MONITOR)
    own = None if MONITOR in _scopes(access) else access.principal.organization
    if own is None and MONITOR not in _scopes(access):
        raise Forbidden("the token acts for no organization")
    with read_tx(hub.engine) as conn:
        nodes = heartbeats.latest(conn, organization=own, stale_s=hub.settings.ingest_heartbeat_stale_s)
        if request.query_params.get("history") == "true":
            for n in nodes:
                n["history"] = heartbeats.history(conn, n["organization"], n["node"])
    return _json({"nodes": nodes})
