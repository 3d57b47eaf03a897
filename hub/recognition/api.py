"""HTTP routes for recognition reference data and statistics (non-FHIR, bearer-authorized).

    POST /recognition/reference/{kind}?effective_from=2026-03-01[&retag=wait|background|none]
                                                                    body: the CSV (text/csv) or JSON
    POST /recognition/reference?effective_from=…                   body: a JSON release of several kinds
    GET  /recognition/reference/{kind}[?version=n]                  the version in force (or version n)
    GET  /recognition/reference/{kind}/versions
    GET  /recognition/statistics?from=2026-01-01&to=2026-02-01&group_by=requester,item,period&period=month

Reference data needs the hub scope ``yilian/recognition-admin``; statistics that or
``yilian/recognition-stats``. Errors are OperationOutcomes (``create_app`` maps HubErrors).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
import orjson

from hub.api.auth import authorize
from hub.errors import Forbidden
from hub.recognition.reference import KINDS, ReferenceDataError
from hub.recognition.stats import statistics
from hub.recognition.store import effective_us

ADMIN_SCOPE = "yilian/recognition-admin"
STATS_SCOPE = "yilian/recognition-stats"

router = APIRouter(prefix="/recognition", tags=["recognition"])


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _format(request: Request) -> str:
    fmt = request.query_params.get("format")
    if fmt:
        return fmt
    ctype = request.headers.get("content-type", "")
    return "json" if "json" in ctype else "csv"


def _service(request: Request):
    return request.app.state.hub.recognition


@router.post("/reference")
async def publish_release(request: Request) -> Response:
    access = authorize(request, hub_scope=ADMIN_SCOPE)
    data = await request.body()
    from starlette.concurrency import run_in_threadpool

    out = await run_in_threadpool(_service(request).publish, None, data,
                                  effective_from=request.query_params.get("effective_from"),
                                  source=request.query_params.get("source") or "api",
                                  loaded_by=access.principal.subject,
                                  retag=request.query_params.get("retag", "background"))
    return _json(out, 201)


@router.post("/reference/{kind}")
async def publish_kind(kind: str, request: Request) -> Response:
    access = authorize(request, hub_scope=ADMIN_SCOPE)
    if kind not in KINDS:
        raise ReferenceDataError(f"unknown reference data kind {kind!r}; one of {', '.join(KINDS)}", status=404)
    data = await request.body()
    from starlette.concurrency import run_in_threadpool

    out = await run_in_threadpool(_service(request).publish, kind, data, fmt=_format(request),
                                  effective_from=request.query_params.get("effective_from"),
                                  source=request.query_params.get("source") or "api",
                                  loaded_by=access.principal.subject,
                                  retag=request.query_params.get("retag", "background"))
    return _json(out, 201)


@router.get("/reference/{kind}")
def read_kind(kind: str, request: Request) -> Response:
    authorize(request, hub_scope=ADMIN_SCOPE)
    if kind not in KINDS:
        raise ReferenceDataError(f"unknown reference data kind {kind!r}; one of {', '.join(KINDS)}", status=404)
    rec = _service(request)
    with rec.engine.connect() as conn:
        version = request.query_params.get("version")
        if version is None:
            at = request.query_params.get("at")
            version = rec.reference.in_force(conn, effective_us(at) if at else None).get(kind)
            if version is None:
                raise ReferenceDataError(f"no {kind} version is in force", status=404, code="not-found")
        try:
            version = int(version)
        except ValueError:
            raise ReferenceDataError(f"version {version!r} is not a number") from None
        rows = rec.reference.rows(conn, kind, version)
        meta = next(v for v in rec.reference.versions(conn, kind) if v["version"] == version)
    return _json({"kind": kind, **meta, "rows": rows})


@router.get("/reference/{kind}/versions")
def list_versions(kind: str, request: Request) -> Response:
    authorize(request, hub_scope=ADMIN_SCOPE)
    rec = _service(request)
    with rec.engine.connect() as conn:
        return _json({"kind": kind, "versions": rec.reference.versions(conn, kind)})


@router.get("/statistics")
def get_statistics(request: Request) -> Response:
    access = authorize(request)
    scopes = access.principal.scope_text.split()
    if ADMIN_SCOPE not in scopes and STATS_SCOPE not in scopes:
        raise Forbidden(f"the token lacks the scope {STATS_SCOPE!r} (or {ADMIN_SCOPE!r})")
    qp = request.query_params
    start = effective_us(qp["from"]) if qp.get("from") else None
    end = effective_us(qp["to"]) if qp.get("to") else None
    group_by = tuple(g for g in (qp.get("group_by") or "requester,item,period").split(",") if g)
    rec = _service(request)
    rec.offers.flush()
    with rec.engine.connect() as conn:
        return _json(statistics(conn, start=start, end=end, group_by=group_by, period=qp.get("period", "month")))
