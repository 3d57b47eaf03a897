"""The hub's HTTP application: FHIR REST under ``/fhir``, OAuth2 token endpoint, health.

FHIR requests go to :class:`hub.api.fhir_endpoint.FhirEndpoint`, a plain ASGI app on the hot
path; everything else (token endpoint, metadata, SMART configuration, health, API docs, the
lifespan that owns the engine and services) is a FastAPI application.
"""

from __future__ import annotations

import base64
import logging
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import text

from hub.api.fhir_endpoint import FHIR_JSON, FhirEndpoint, dump
from hub.audit import AuditSink
from hub.config import HubSettings
from hub.dicom.service import DicomService
from hub.dicom.web import router as dicomweb_router
from hub.errors import HubError, Unauthorized
from hub.fhir.capability import capability_statement, smart_configuration
from hub.fhir.service import FhirService
from hub.mpi.review_api import router as mpi_router
from hub.mpi.service import install_mpi
from hub.ingest.api import router as ingest_router
from hub.ingest.service import make_ingest_service
from hub.ingest.workers import WorkerPool
from hub.recognition.api import router as recognition_router
from hub.recognition.service import RecognitionService
from hub.security.tokens import TokenService, client_credentials
from hub.storage.db import set_write_lock_timeout
from hub.storage.engine import make_engine

log = logging.getLogger("yilian.http")

class Hub:
    """What the application owns for its lifetime: engine, services, audit writer."""

    def __init__(self, settings: HubSettings):
        started = datetime.now(UTC)
        self.settings = settings
        self.engine = make_engine(settings.db_url)
        set_write_lock_timeout(self.engine, settings.database_lock_timeout_s)
        if settings.migrate_at_start:
            from hub.storage.migrate import upgrade

            upgrade(self.engine)
        self.audit = AuditSink(self.engine) if settings.audit_enabled else None
        self.fhir = FhirService(self.engine, base_url=settings.fhir_base, audit=self.audit,
                                default_count=settings.default_page_size, max_count=settings.max_page_size,
                                max_include=settings.max_include)
        self.tokens = TokenService(
            issuer=settings.token_issuer, audience=settings.token_audience, algorithm=settings.token_algorithm,
            secret=settings.signing_secret(), lifetime_s=settings.token_lifetime_s,
            trusted=TokenService.load_trusted(settings.trusted_issuers_file))
        # before anything that writes: every Patient, from any path, is matched (hub.mpi)
        self.mpi = install_mpi(self)  # matching, golden records, $match/$ihe-pix/$merge (hub.mpi)
        self.dicom = DicomService(settings, self.engine, self.fhir, self.audit)  # hub.dicom
        if settings.dicom_enabled:
            self.dicom.start_scp()
        self.recognition = RecognitionService(self.engine, self.fhir,  # marks, $recognizable (hub.recognition)
                                              watch_s=settings.recognition_watch_s)
        self.recognition.install()
        self.recognition.start_watching()
        self.ingest = make_ingest_service(self.engine, self.fhir, settings, audit=self.audit)
        self.ingest_workers = WorkerPool(self.ingest, settings.ingest_workers)
        self.ingest_workers.start()
        # after the components: it lists the operations they registered
        self.capability = orjson.dumps(capability_statement(self.fhir.registry, settings.fhir_base, started,
                                                            operations=self.fhir.operations))

    def close(self) -> None:
        self.dicom.close()
        self.ingest_workers.stop()
        self.recognition.close()
        if self.audit:
            self.audit.close()
        self.engine.dispose()


def create_app(settings: HubSettings) -> YilianApp:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        hub = Hub(settings)
        app.state.hub = hub
        try:
            yield
        finally:
            hub.close()

    app = FastAPI(title="Yilian hub", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")

    @app.exception_handler(HubError)
    async def hub_error(request: Request, exc: HubError) -> Response:
        # the non-FHIR routes answer domain errors as OperationOutcome too, mapped once here
        headers = {"WWW-Authenticate": 'Bearer realm="yilian"'} if exc.status == 401 else None
        return Response(orjson.dumps(exc.outcome()), status_code=exc.status, headers=headers,
                        media_type=FHIR_JSON.decode())

    app.include_router(ingest_router)
    app.include_router(dicomweb_router)
    app.include_router(mpi_router)

    app.include_router(recognition_router)

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
        body = hub.capability if not pretty else dump(orjson.loads(hub.capability), True)
        return Response(body, media_type=FHIR_JSON.decode())

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

    return YilianApp(app)


class YilianApp:
    """The hub's ASGI application: FHIR requests go straight to :class:`FhirEndpoint`, the rest
    to FastAPI (which also runs the lifespan)."""

    def __init__(self, api: FastAPI):
        self.api = api
        self.fhir = FhirEndpoint(lambda: api.state.hub)

    @property
    def state(self):
        return self.api.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if (path == "/fhir" or path.startswith("/fhir/")) and path not in _FASTAPI_FHIR_PATHS:
                await self.fhir(scope, receive, send)
                return
        await self.api(scope, receive, send)


_FASTAPI_FHIR_PATHS = frozenset({"/fhir/metadata", "/fhir/.well-known/smart-configuration"})
