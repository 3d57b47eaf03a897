"""The review queue and link history of the master patient index over HTTP (``/mpi/…``).

Possible matches the index would not link by itself wait here for a person:

- ``GET  /mpi/reviews?status=open&_count=50&_offset=0`` — a page of items, oldest first;
- ``GET  /mpi/reviews/{id}`` — one item, with ``ETag: W/"<version>"``;
- ``POST /mpi/reviews/{id}/accept`` — the two records are one person: a manual link;
- ``POST /mpi/reviews/{id}/reject`` — two people: a manual non-match, never linked automatically.

- ``GET  /mpi/patients/{id}`` — a source Patient's current link (person, state, automatic or
  manual, rule, score) and its link history, newest first.

Decisions need ``If-Match: W/"<version>"`` (optimistic concurrency, as FHIR's http.html#concurrency):
412 when the item changed since it was read, 409 when it is no longer open, 428 without
``If-Match``. Every call needs the hub scope ``yilian/mpi`` and is audited like a FHIR interaction.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
import orjson
from sqlalchemy import func, select, update

from hub.api.auth import authorize
from hub.errors import Conflict, HubError, InvalidRequest, NotFound, PreconditionFailed
from hub.fhir.model import instant, now_us
from hub.fhir.service import FhirRequest, FhirResponse, _etag_version
from hub.mpi.tables import mpi_link_event, mpi_record, mpi_review
from hub.storage.db import write_tx

SCOPE = "yilian/mpi"
_V = mpi_review.c

router = APIRouter(prefix="/mpi", tags=["master patient index"])


class PreconditionRequired(HubError):
    status, code = 428, "required"


def _item(row) -> dict:
    return {"id": row.review_id, "status": row.status, "version": row.version,
            "patient": f"Patient/{row.patient_id}", "candidate": f"Patient/{row.candidate_id}",
            "score": round(row.score, 2), "explanation": row.detail, "created": instant(row.created),
            **({"decided": instant(row.decided)} if row.decided else {}),
            **({"decidedBy": row.decided_by} if row.decided_by else {})}


def _json(body, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def _audited(request: Request, access, run):
    """Run ``run() -> (status, body, headers, patients)`` and audit it (also when it fails)."""
    hub = request.app.state.hub
    req = FhirRequest(request.method, request.url.path.lstrip("/"), list(request.query_params.multi_items()))
    try:
        status, body, headers, patients = run()
    except HubError as e:
        hub.fhir._audit(access, "operation", req, FhirResponse(e.status, None))
        raise
    hub.fhir._audit(access, "operation", req, FhirResponse(status, None, patients=patients,
                                                           resources=[f"Patient/{p}" for p in patients]))
    return _json(body, status, headers)


@router.get("/reviews")
def list_reviews(request: Request, status: str = "open", _count: int = 50, _offset: int = 0) -> Response:
    access = authorize(request, hub_scope=SCOPE)
    if status not in ("open", "accepted", "rejected", "obsolete"):
        raise InvalidRequest("status must be open, accepted, rejected or obsolete")
    if not 1 <= _count <= 500 or _offset < 0:
        raise InvalidRequest("_count must be 1–500 and _offset not negative")
    hub = request.app.state.hub

    def run():
        with hub.engine.connect() as conn:
            rows = conn.execute(select(mpi_review).where(_V.status == status)
                                .order_by(_V.created, _V.review_id).limit(_count).offset(_offset)).all()
            total = conn.execute(select(func.count()).select_from(mpi_review).where(_V.status == status)).scalar_one()
        pats = [p for r in rows for p in (r.patient_id, r.candidate_id)]
        return 200, {"total": total, "offset": _offset, "items": [_item(r) for r in rows]}, None, pats

    return _audited(request, access, run)


@router.get("/reviews/{review_id}")
def get_review(request: Request, review_id: str) -> Response:
    access = authorize(request, hub_scope=SCOPE)
    hub = request.app.state.hub

    def run():
        with hub.engine.connect() as conn:
            row = conn.execute(select(mpi_review).where(_V.review_id == review_id)).first()
        if row is None:
            raise NotFound(f"review item {review_id!r} is not known")
        return 200, _item(row), {"ETag": f'W/"{row.version}"'}, [row.patient_id, row.candidate_id]

    return _audited(request, access, run)


@router.post("/reviews/{review_id}/accept")
def accept_review(request: Request, review_id: str) -> Response:
    return _decide(request, review_id, accept=True)


@router.post("/reviews/{review_id}/reject")
def reject_review(request: Request, review_id: str) -> Response:
    return _decide(request, review_id, accept=False)


def _decide(request: Request, review_id: str, *, accept: bool) -> Response:
    access = authorize(request, hub_scope=SCOPE)
    hub = request.app.state.hub
    mpi = hub.mpi
    if_match = request.headers.get("if-match")

    def run():
        if not if_match:
            raise PreconditionRequired('a decision needs If-Match: W/"<version>" of the review item')
        expected = _etag_version(if_match)
        actor = access.principal.subject
        with write_tx(hub.engine) as conn:
            q = select(mpi_review).where(_V.review_id == review_id)
            row = conn.execute(q.with_for_update()).first()
            if row is None:
                raise NotFound(f"review item {review_id!r} is not known")
            if row.version != expected:
                raise PreconditionFailed(f"review item {review_id} is at version {row.version}, not {expected}")
            if row.status != "open":
                raise Conflict(f"review item {review_id} is already {row.status}")
            if accept:
                person = mpi.person_of(conn, row.candidate_id)
                if person is None:
                    raise Conflict(f"Patient/{row.candidate_id} is no longer in the index (merged or deleted)")
                mpi.link_manually(conn, row.patient_id, person, actor=actor, why=f"review {review_id} accepted")
            else:
                mpi.record_nonmatch(conn, row.patient_id, row.candidate_id, actor=actor)
                mpi.event(conn, row.patient_id, None, "review-rejected", "manual", actor=actor,
                          detail=f"review {review_id}: not Patient/{row.candidate_id}")
            conn.execute(update(mpi_review).where(_V.review_id == review_id).values(
                status="accepted" if accept else "rejected", version=row.version + 1,
                decided=now_us(), decided_by=actor[:100]))
            mpi.flush(conn)
            row = conn.execute(q).first()
        return 200, _item(row), {"ETag": f'W/"{row.version}"'}, [row.patient_id, row.candidate_id]

    return _audited(request, access, run)


@router.get("/patients/{patient_id}")
def patient_links(request: Request, patient_id: str) -> Response:
    access = authorize(request, hub_scope=SCOPE)
    hub = request.app.state.hub
    E = mpi_link_event.c

    def run():
        with hub.engine.connect() as conn:
            row = conn.execute(select(mpi_record).where(mpi_record.c.patient_id == patient_id)).first()
            if row is None:
                raise NotFound(f"Patient/{patient_id} is not in the master patient index")
            events = conn.execute(select(mpi_link_event).where(E.patient_id == patient_id)
                                  .order_by(E.ts.desc(), E.event_id.desc()).limit(500)).all()
        body = {"patient": f"Patient/{patient_id}", "person": f"Patient/{row.person_id}", "state": row.state,
                "source": row.source, "rule": row.rule, "score": row.score, "updated": instant(row.updated),
                "history": [{"at": instant(e.ts), "action": e.action, "source": e.source,
                             **({"person": f"Patient/{e.person_id}"} if e.person_id else {}),
                             **({"actor": e.actor} if e.actor else {}),
                             **({"score": round(e.score, 2)} if e.score is not None else {}),
                             **({"detail": e.detail} if e.detail else {})} for e in events]}
        return 200, body, None, [patient_id]

    return _audited(request, access, run)
