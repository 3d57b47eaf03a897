"""The hub's HTTP application: FHIR REST under ``/fhir``, OAuth2 token endpoint, health.

The FHIR routes are one thin adapter onto :class:`hub.fhir.service.FhirService`: bytes in,
``FhirRequest`` → ``FhirResponse``, bytes out. Errors are mapped here, once, to an HTTP status
and an OperationOutcome; an unexpected error is a 500, never blamed on the client.
"""

from __future__ import annotations

import base64
import logging
import time
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from sqlalchemy import text

from hub.audit import AuditSink
from hub.config import HubSettings
from hub.errors import HubError, InvalidRequest, NotSupported, Unauthorized
from hub.fhir.capability import capability_statement, smart_configuration
from hub.fhir.service import FhirRequest, FhirResponse, FhirService
from hub.security.access import Access
from hub.security.tokens import TokenService, client_credentials
from hub.storage.engine import make_engine
from hub.storage.migrate import upgrade

log = logging.getLogger("yilian.http")
access_log = logging.getLogger("yilian.access")

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json-patch+json", "text/json")


class Hub:
    """What the application owns for its lifetime: engine, services, audit writer."""

    def __init__(self, settings: HubSettings):
        self.settings = settings
        self.engine = make_engine(settings.db_url)
        upgrade(self.engine)
        self.audit = AuditSink(self.engine) if settings.audit_enabled else None
        self.fhir = FhirService(self.engine, base_url=settings.fhir_base, audit=self.audit,
                                default_count=settings.default_page_size, max_count=settings.max_page_size,
                                max_include=settings.max_include)
        self.tokens = TokenService(
            issuer=settings.token_issuer, audience=settings.token_audience, algorithm=settings.token_algorithm,
            secret=settings.signing_secret(), lifetime_s=settings.token_lifetime_s,
            trusted=TokenService.load_trusted(settings.trusted_issuers_file))
        self.capability = orjson.dumps(capability_statement(self.fhir.registry, settings.fhir_base))

    def close(self) -> None:
        if self.audit:
            self.audit.close()
        self.engine.dispose()


def _outcome_response(e: HubError, pretty: bool = False) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="yilian"'} if e.status == 401 else None
    return Response(_dump(e.outcome(), pretty), status_code=e.status, media_type=FHIR_JSON, headers=headers)


def _dump(obj, pretty: bool) -> bytes:
    if not pretty:
        return orjson.dumps(obj)
    # embedded stored JSON (orjson.Fragment) is copied verbatim; parse it so it is indented too
    return orjson.dumps(orjson.loads(orjson.dumps(obj)), option=orjson.OPT_INDENT_2)


def create_app(settings: HubSettings) -> FastAPI:
    hub_holder: dict[str, Hub] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        hub = Hub(settings)
        hub_holder["hub"] = hub
        app.state.hub = hub
        try:
            yield
        finally:
            hub.close()

    app = FastAPI(title="Yilian hub", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")

    def authenticate(request: Request, hub: Hub) -> Access:
        auth = request.headers.get("authorization")
        if not auth or not auth.lower().startswith("bearer "):
            raise Unauthorized("a bearer token is required (OAuth2; see /.well-known/smart-configuration)")
        principal = hub.tokens.verify(auth[7:].strip())
        return Access(principal, request.client.host if request.client else None)

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/health/ready", include_in_schema=False)
    def ready(request: Request) -> Response:
        hub: Hub = request.app.state.hub
        try:
            with hub.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            log.exception("database not reachable")
            return Response(b'{"status":"database unavailable"}', status_code=503, media_type="application/json")
        return Response(b'{"status":"ready"}', media_type="application/json")

    @app.get("/.well-known/smart-configuration", include_in_schema=False)
    @app.get("/fhir/.well-known/smart-configuration", include_in_schema=False)
    def smart_config() -> dict:
        return smart_configuration(settings)

    @app.get("/fhir/metadata")
    def metadata(request: Request) -> Response:
        """The CapabilityStatement (http.html#capabilities); public, as SMART clients expect."""
        hub: Hub = request.app.state.hub
        pretty = request.query_params.get("_pretty") == "true"
        body = hub.capability if not pretty else _dump(orjson.loads(hub.capability), True)
        return Response(body, media_type=FHIR_JSON)

    @app.post("/oauth2/token")
    async def token(request: Request) -> Response:
        """OAuth2 client credentials (RFC 6749 §4.4), client authenticated by HTTP Basic or form."""
        hub: Hub = request.app.state.hub
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            except ValueError:
                pass
        if form.get("grant_type") != "client_credentials":
            return Response(b'{"error":"unsupported_grant_type"}', status_code=400, media_type="application/json")
        if not client_id or not secret:
            return Response(b'{"error":"invalid_client"}', status_code=401, media_type="application/json")
        try:
            body = client_credentials(hub.engine, hub.tokens, client_id, secret, form.get("scope"))
        except Unauthorized:
            log.warning("token refused for client %s", client_id)
            return Response(b'{"error":"invalid_client"}', status_code=401, media_type="application/json")
        return Response(orjson.dumps(body), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]

    @app.api_route("/fhir", methods=methods, include_in_schema=False)
    @app.api_route("/fhir/{path:path}", methods=methods, summary="FHIR R4 REST API")
    async def fhir(request: Request, path: str = "") -> Response:
        if request.method in ("GET", "HEAD"):
            # reads are short and never wait on a lock (SQLite WAL, PostgreSQL MVCC): a thread
            # hop would cost more than the read itself
            return _fhir(request, path, b"")
        raw = await request.body()
        return await run_in_threadpool(_fhir, request, path, raw)

    def _fhir(request: Request, path: str, raw: bytes) -> Response:
        hub: Hub = request.app.state.hub
        t0 = time.perf_counter()
        query = parse_qsl(request.url.query, keep_blank_values=True)
        pretty = any(k == "_pretty" and v == "true" for k, v in query)
        status = 500
        client = "-"
        try:
            fmt = next((v for k, v in query if k == "_format"), None)
            if fmt and fmt not in ("json", "application/json", "application/fhir+json"):
                raise NotSupported(f"_format {fmt!r} is not supported; this server speaks JSON", status=406)
            access = authenticate(request, hub)
            client = access.principal.client_id or access.principal.subject
            body = None
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if raw:
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
            headers = {k.lower(): v for k, v in request.headers.items()
                       if k.lower() in ("if-match", "if-none-exist", "if-none-match", "prefer", "if-modified-since")}
            resp = hub.fhir.handle(FhirRequest(request.method, path, query, headers, body), access)
            status = resp.status
            return _to_http(resp, pretty, request.method == "HEAD")
        except HubError as e:
            status = e.status
            return _outcome_response(e, pretty)
        except Exception:
            log.exception("internal error on %s %s", request.method, _route_of(path))
            status = 500
            return _outcome_response(HubError("internal server error; see the hub's log"), pretty)
        finally:
            access_log.info("%s %s %d %.1fms client=%s", request.method, _route_of(path), status,
                            (time.perf_counter() - t0) * 1000, client)

    return app


def _route_of(path: str) -> str:
    """The route without ids or query, so that logs carry no patient data."""
    parts = path.strip("/").split("/")
    out = []
    for i, p in enumerate(parts):
        if i == 0 or p.startswith("$") or p.startswith("_") or (i == 2 and p[:1].isupper()):
            out.append(p)
        elif p:
            out.append(":id")
    return "/" + "/".join(out)


def _to_http(resp: FhirResponse, pretty: bool, head: bool) -> Response:
    content = b"" if resp.body is None or head else _dump(resp.body, pretty)
    return Response(content, status_code=resp.status, media_type=FHIR_JSON if resp.body is not None else None,
                    headers=resp.headers)
