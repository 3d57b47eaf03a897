"""The FHIR REST endpoint as a plain ASGI application.

FHIR requests are the hub's hot path, so they do not go through FastAPI's routing, dependency
and middleware layers: this class reads the request, hands it to
:class:`hub.fhir.service.FhirService` and writes the response. Errors are mapped here, once, to
an HTTP status and an OperationOutcome; an unexpected error is a 500, never blamed on the client.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl

import orjson
from starlette.concurrency import run_in_threadpool

from hub.errors import HubError, InvalidRequest, NotSupported, Unauthorized
from hub.fhir.service import FhirRequest, FhirResponse
from hub.security.access import Access

log = logging.getLogger("yilian.http")
access_log = logging.getLogger("yilian.access")

FHIR_JSON = b"application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json-patch+json", "text/json")
_PASSED_HEADERS = ("if-match", "if-none-exist", "if-none-match", "prefer", "if-modified-since")
MAX_BODY = 256 * 1024 * 1024


def dump(obj, pretty: bool) -> bytes:
    if not pretty:
        return orjson.dumps(obj)
    # embedded stored JSON (orjson.Fragment) is copied verbatim; parse it so it is indented too
    return orjson.dumps(orjson.loads(orjson.dumps(obj)), option=orjson.OPT_INDENT_2)


def route_of(path: str) -> str:
    """The route without ids or query, so that logs carry no patient data."""
    parts = path.strip("/").split("/")
    out = []
    for i, p in enumerate(parts):
        if i == 0 or p.startswith("$") or p.startswith("_") or (i == 2 and p[:1].isupper()):
            out.append(p)
        elif p:
            out.append(":id")
    return "/" + "/".join(out)


class FhirEndpoint:
    """ASGI app for ``/fhir/…``; ``hub`` is looked up per request (it exists once the
    application's lifespan has started)."""

    prefix = "/fhir"

    def __init__(self, get_hub):
        self.get_hub = get_hub

    async def __call__(self, scope, receive, send) -> None:
        method = scope["method"]
        path = scope["path"][len(self.prefix):].strip("/")
        raw = b""
        if method not in ("GET", "HEAD"):
            chunks, size, more = [], 0, True
            while more:
                msg = await receive()
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    await self._send(send, 413, [], dump(HubError("the request body is too large",
                                                                  code="too-costly").outcome(), False))
                    return
                chunks.append(chunk)
                more = msg.get("more_body", False)
            raw = b"".join(chunks)
            status, headers, body = await run_in_threadpool(self.handle, scope, method, path, raw)
        else:
            # reads are short and never wait on a lock (SQLite WAL, PostgreSQL MVCC): a thread
            # hop would cost more than the read itself
            status, headers, body = self.handle(scope, method, path, raw)
        await self._send(send, status, headers, body if method != "HEAD" else b"")

    @staticmethod
    async def _send(send, status: int, headers: list, body: bytes) -> None:
        hdrs = [(b"content-length", str(len(body)).encode())] + headers
        if body:
            hdrs.append((b"content-type", FHIR_JSON))
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    def handle(self, scope, method: str, path: str, raw: bytes) -> tuple[int, list, bytes]:
        hub = self.get_hub()
        t0 = time.perf_counter()
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        pretty = any(k == "_pretty" and v == "true" for k, v in query)
        status, client = 500, "-"
        req_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            fmt = next((v for k, v in query if k == "_format"), None)
            if fmt and fmt not in ("json", "application/json", "application/fhir+json"):
                raise NotSupported(f"_format {fmt!r} is not supported; this server speaks JSON", status=406)
            auth = req_headers.get("authorization", "")
            if not auth.lower().startswith("bearer "):
                raise Unauthorized("a bearer token is required (OAuth2; see /.well-known/smart-configuration)")
            principal = hub.tokens.verify(auth[7:].strip())
            client = principal.client_id or principal.subject
            access = Access(principal, scope["client"][0] if scope.get("client") else None)
            body = None
            if raw:
                ctype = req_headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype == "application/x-www-form-urlencoded" and path.endswith("_search"):
                    query += parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
                elif ctype and ctype not in _JSON_TYPES:
                    raise NotSupported(f"content type {ctype!r} is not supported; send application/fhir+json",
                                       status=415)
                else:
                    try:
                        body = orjson.loads(raw)
                    except orjson.JSONDecodeError as e:
                        raise InvalidRequest(f"the body is not valid JSON: {e}") from None
            passed = {k: v for k, v in req_headers.items() if k in _PASSED_HEADERS}
            resp: FhirResponse = hub.fhir.handle(FhirRequest(method, path, query, passed, body), access)
            status = resp.status
            headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()]
            return status, headers, (b"" if resp.body is None else dump(resp.body, pretty))
        except HubError as e:
            status = e.status
            headers = [(b"www-authenticate", b'Bearer realm="yilian"')] if e.status == 401 else []
            return status, headers, dump(e.outcome(), pretty)
        except Exception:
            log.exception("internal error on %s %s", method, route_of(path))
            return 500, [], dump(HubError("internal server error; see the hub's log").outcome(), pretty)
        finally:
            access_log.info("%s %s %d %.1fms client=%s", method, route_of(path), status,
                            (time.perf_counter() - t0) * 1000, client)
