"""A small stand-in for the hub's ingest HTTP contract, for fault tests the real hub cannot be
told to produce (503 on demand, permanent rejections by rule).

It implements the contract faithfully: client-credentials tokens (HTTP Basic) with an expiry,
bearer + organization checks (401/403), 413 over 1,000 messages, per-item results, idempotency on
``(organization, id)`` (a re-sent id gets the first result with ``duplicate=true``), heartbeats.
What it accepted is kept in order in :attr:`FakeHub.accepted` (first sight of each id only), so a
test can check "exactly once".
"""

from __future__ import annotations

import base64
import secrets
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import free_port

from adapters.hl7v2 import HL7ParseError, build_ack, parse_message


def _outcome(status: int, text: str) -> JSONResponse:
    return JSONResponse({"resourceType": "OperationOutcome",
                         "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}]}, status)


class FakeHub:
    def __init__(self, client_id="fep-test", secret="s3cret", org="HOSPA", token_lifetime_s=300):
        self.client_id, self.secret, self.org = client_id, secret, org
        self.token_lifetime_s = token_lifetime_s
        self.tokens: dict[str, float] = {}
        self.results: dict[str, dict] = {}          # item id -> first result
        self.accepted: list[dict] = []               # first sight of each id, in arrival order
        self.requests = 0
        self.largest_batch = 0
        self.duplicates = 0
        self.heartbeats: list[dict] = []
        self.fail_next = 0                           # answer 503 to this many ingest requests
        self.fail_status = 503
        self.reject_marker = b"POISON"               # items whose payload holds it are rejected permanently
        self.refuse_marker = b"REFUSE400"            # a request holding such an item gets 400 as a whole
        self.lock = threading.Lock()
        self.port = free_port()
        app = Starlette(routes=[Route("/oauth2/token", self.token, methods=["POST"]),
                                Route("/ingest/messages", self.ingest, methods=["POST"]),
                                Route("/ingest/heartbeat", self.heartbeat, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 15
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("fake hub did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    # -- endpoints -------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("basic "):
            return JSONResponse({"error": "invalid_client"}, 401)
        cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if (cid, secret) != (self.client_id, self.secret):
            return JSONResponse({"error": "invalid_client"}, 401)
        tok = secrets.token_hex(16)
        self.tokens[tok] = time.time() + self.token_lifetime_s
        return JSONResponse({"access_token": tok, "token_type": "Bearer", "expires_in": self.token_lifetime_s,
                             "scope": "yilian/ingest"})

    def _authorized(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        tok = auth[7:] if auth.lower().startswith("bearer ") else ""
        return self.tokens.get(tok, 0) > time.time()

    async def heartbeat(self, request: Request) -> Response:
        if not self._authorized(request):
            return _outcome(401, "bearer token required")
        self.heartbeats.append(await request.json())
        return Response(status_code=204)

    async def ingest(self, request: Request) -> Response:
        self.requests += 1
        if not self._authorized(request):
            return _outcome(401, "bearer token required")
        if self.fail_next > 0:
            self.fail_next -= 1
            return _outcome(self.fail_status, "hub temporarily unavailable")
        body = await request.json()
        if body.get("organization") != self.org:
            return _outcome(403, "organization does not match the token")
        messages = body.get("messages") or []
        self.largest_batch = max(self.largest_batch, len(messages))
        if len(messages) > 1000:
            return _outcome(413, "at most 1000 messages a request")
        decoded = []
        for m in messages:
            try:
                payload = base64.b64decode(m["payload"], validate=True)
            except (KeyError, ValueError):
                return _outcome(400, f"message {m.get('id')}: payload is not base64")
            if self.refuse_marker in payload:
                return _outcome(400, f"message {m.get('id')}: malformed item")
            decoded.append((m, payload))
        out = []
        with self.lock:
            for m, payload in decoded:
                first = self.results.get(m["id"])
                if first is not None:
                    self.duplicates += 1
                    out.append({**first, "duplicate": True})
                    continue
                res = self._process(m, payload)
                self.results[m["id"]] = res
                self.accepted.append({**m, "payload": payload})
                out.append(res)
        return JSONResponse({"results": out})

    def _process(self, m: dict, payload: bytes) -> dict:
        mid = f"raw-{len(self.results) + 1}"
        base = {"id": m["id"], "message_id": mid, "duplicate": False, "permanent": False, "error": None}
        if self.reject_marker in payload:
            return {**base, "status": "rejected", "ack_code": "AR", "ack": None, "permanent": True,
                    "error": "poison message rejected by rule"}
        if m.get("kind", "hl7v2") != "hl7v2":
            return {**base, "status": "unsupported", "ack_code": None, "ack": None}
        try:
            msg = parse_message(payload, m.get("charset"))
        except HL7ParseError as exc:
            return {**base, "status": "rejected", "ack_code": "AR", "permanent": True, "error": str(exc),
                    "ack": None}
        ack = build_ack(msg, "AA", text="normalized by fake hub")
        return {**base, "status": "normalized", "ack_code": "AA", "ack": base64.b64encode(ack).decode()}

    # -- for assertions ----------------------------------------------------------------------

    def control_ids(self) -> list[str]:
        """MSH-10 of every HL7 item accepted (first sight of each item id), in arrival order."""
        out = []
        for m in self.accepted:
            if m.get("kind", "hl7v2") == "hl7v2":
                try:
                    out.append(parse_message(m["payload"], m.get("charset")).control_id)
                except HL7ParseError:
                    pass
        return out
