"""``$recognizable`` (operations.html), registered on the FHIR service:

``Patient/{id}/$recognizable`` (GET or POST)
    ``item`` (catalogue code) or ``code`` (``system|code`` of the ordering hospital's local item),
    ``organization`` (requesting organization's alliance code; default: the token's ``org``),
    ``context`` (R8 clinical context, repeatable or comma-separated).
``ServiceRequest/$recognizable`` (POST: a draft ServiceRequest as the body or as the
    ``serviceRequest`` parameter) and ``ServiceRequest/{id}/$recognizable`` (a stored order):
    item from ``ServiceRequest.code``, patient from ``subject``, requesting organization from
    the parameter, else an ``Organization`` requester, else the token; ``priority`` ``stat``
    counts as the emergency context.

Every result young enough to be inside the item's longest time limit is a candidate, and at
least the ``_count`` (default 20) most recent ones beyond it; the ``item`` part's ``total``
says how many results with a code of the item the person has.

Both answer a ``Parameters`` resource with one ``item`` part and one ``candidate`` part per
result of the person (all linked records, ``FhirService.linked_patients``), best first:
decision, reasons (code, rule, severity, text), scope and HR label, expiry, performer, time,
value (and in the requester's unit where the units are commensurable), references to the
Observation / DiagnosticReport / ImagingStudy and its Endpoints, evidence (qualification,
reference data versions) and the result itself.

The physician's decision is :mod:`hub.recognition.decision`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache

from sqlalchemy import Connection, bindparam, select

from hub.errors import Forbidden, InvalidRequest
from hub.fhir.model import now_us
from hub.fhir.service import FhirRequest, FhirResponse, FhirService
from hub.recognition import results
from hub.recognition.params import clinical_context, code_param, one, operation_params, org_code
from hub.recognition.reference import CATALOGUE_SYSTEM, Reference
from hub.recognition.results import RESULT_TYPES
from hub.recognition.rules import RANK, CHINA_TIME, NEEDS_JUDGEMENT, RECOGNIZABLE, Candidate, Decision, decide
from hub.security.access import Access
from hub.storage.schema import sp_date as DATE
from hub.storage.schema import sp_reference as REF
from hub.storage.schema import sp_token as TOK
from mappings.identity import organization_id, organization_system
from terminology import ucum, urls

DEFAULT_COUNT = 20  # results beyond the item's time limit reported at least (the most recent)
MAX_CANDIDATES = 500


@dataclass
class Query:
    patient: str
    requester: str | None
    codings: list[dict]
    item: str | None
    context: tuple[str, ...]
    order: str | None = None  # ServiceRequest/id


# ------------------------------------------------------------------------------------ inputs

def _from_service_request(sr: dict, params: dict, access: Access, ref: Reference, order: str | None) -> Query:
    if not isinstance(sr, dict) or sr.get("resourceType") != "ServiceRequest":
        raise InvalidRequest("send a ServiceRequest (as the body or the 'serviceRequest' parameter)")
    subject = str((sr.get("subject") or {}).get("reference") or "")
    if not subject.startswith("Patient/"):
        raise InvalidRequest("ServiceRequest.subject must reference the Patient", expression=["ServiceRequest.subject"])
    requester = org_code(one(params, "organization"), ref)
    if requester is None and str((sr.get("requester") or {}).get("reference") or "").startswith("Organization/"):
        requester = org_code(sr["requester"], ref)
    context = list(clinical_context(params))
    if sr.get("priority") == "stat" and "emergency" not in context:
        context.append("emergency")
    codings = [c for c in ((sr.get("code") or {}).get("coding") or []) if isinstance(c, dict)]
    if not codings:
        raise InvalidRequest("ServiceRequest.code has no coding", expression=["ServiceRequest.code"])
    requester = requester or access.principal.organization
    item, _ = ref.item_for(codings, requester)
    return Query(subject.split("/", 1)[1], requester, codings, item, tuple(context), order)


def _from_patient(pid: str, params: dict, access: Access, ref: Reference) -> Query:
    requester = org_code(one(params, "organization"), ref) or access.principal.organization
    item = one(params, "item")
    code = one(params, "code")
    if isinstance(item, dict):
        item = item.get("code")
    if item:
        codings = [{"system": CATALOGUE_SYSTEM, "code": str(item)}]
    elif code:
        codings = code.get("coding", [code]) if isinstance(code, dict) else code_param(code)
    else:
        raise InvalidRequest("give the requested item: 'item' (catalogue code) or 'code' (system|code)")
    found, _ = ref.item_for(codings, requester)
    return Query(pid, requester, codings, found, clinical_context(params))


# ------------------------------------------------------------------------------------ evaluation

# the result keys of the item's codes for the patients, newest first (statements built once;
# expanding bind parameters keep them in SQLAlchemy's compiled cache)
# driven from the patients' references (a patient has hundreds of results; a code has millions),
# with the report that lists each result (one round trip)
_REP = REF.alias("report_of")
_MATCHES = (
    select(TOK.c.res_type, TOK.c.res_id, DATE.c.low, _REP.c.res_id)
    .select_from(REF)
    .join(TOK, TOK.c.res_pk == REF.c.res_pk)
    .outerjoin(DATE, (DATE.c.res_pk == TOK.c.res_pk) & (DATE.c.param == "date"))
    .outerjoin(_REP, (_REP.c.target_type == TOK.c.res_type) & (_REP.c.target_id == TOK.c.res_id)
               & (_REP.c.param == "result") & (_REP.c.res_type == "DiagnosticReport"))
    .where(REF.c.param == "subject", REF.c.target_type == "Patient", REF.c.target_id.in_(bindparam("pids", expanding=True)),
           REF.c.res_type.in_(RESULT_TYPES),
           TOK.c.param == "code", TOK.c.code.in_(bindparam("codes", expanding=True)))
)


def _candidates(conn: Connection, svc: FhirService, ref: Reference, q: Query, pids: list[str],
                now: datetime, count: int) -> tuple[list[dict], dict[str, dict], int]:
    """Observations and DiagnosticReports of the patients whose code may be the item: every one
    young enough to be inside the item's longest time limit, and at least the ``count`` most
    recent (older ones can only be TIME_EXPIRED). Returns them, the reports listing the
    Observations among them (by Observation id), and how many results there are in all."""
    codes = ref.codes_of(q.item) if q.item else {c["code"] for c in q.codings}
    when: dict[tuple[str, str], int] = {}
    report_of: dict[str, str] = {}
    for t, rid, low, report in conn.execute(_MATCHES, {"codes": sorted(codes), "pids": list(pids)}):
        low = -1 if low is None else low
        if when.get((t, rid), -2) < low:
            when[(t, rid)] = low
        if report and t == "Observation":
            report_of.setdefault(rid, report)
    newest = sorted(when, key=when.__getitem__, reverse=True)
    limit_days = max((e.time_limit_days for e in ref.catalogue.get(q.item or "", ())), default=0)
    cutoff = int((now.timestamp() - (limit_days + 1) * 86400) * 1_000_000)
    chosen = [k for i, k in enumerate(newest) if i < count or when[k] >= cutoff][:MAX_CANDIDATES]
    wanted = set(chosen)
    reports_needed = {("DiagnosticReport", report_of[k[1]]) for k in chosen if k[1] in report_of}
    docs, reports = [], {}
    for s in svc.store.read_many(conn, chosen + sorted(reports_needed - wanted)):
        res = s.resource() | {"resourceType": s.res_type}
        if (s.res_type, s.res_id) in wanted:
            docs.append(res)
        if (s.res_type, s.res_id) in reports_needed:
            reports[s.res_id] = res
    return docs, {oid: reports[rid] for oid, rid in report_of.items() if rid in reports}, len(newest)


_STUDIES_BASED_ON = select(REF.c.res_id, REF.c.target_id).where(
    REF.c.res_type == "ImagingStudy", REF.c.param == "basedon", REF.c.target_type == "ServiceRequest",
    REF.c.target_id.in_(bindparam("orders", expanding=True)))
_STUDIES_BY_IDENTIFIER = select(TOK.c.res_id, TOK.c.system, TOK.c.code).where(
    TOK.c.res_type == "ImagingStudy", TOK.c.param == "identifier", TOK.c.code.in_(bindparam("values", expanding=True)))


def _studies_of(conn: Connection, svc: FhirService, reports: list[dict]) -> dict[str, list[dict]]:
    """DiagnosticReport id → the ImagingStudies of its images: those it references
    (``imagingStudy``), those based on the same order (``basedOn``, as the DICOM service links a
    study to the ServiceRequest of its accession number), those sharing an identifier with it
    (the accession number)."""
    if not reports:
        return {}
    wanted: dict[str, set[str]] = {}
    by_order: dict[str, list[str]] = {}
    by_ident: dict[tuple[str, str], list[str]] = {}
    for rep in reports:
        ids = wanted.setdefault(rep["id"], set())
        for r in rep.get("imagingStudy") or []:
            ref_ = str((r or {}).get("reference") or "")
            if ref_.startswith("ImagingStudy/"):
                ids.add(ref_.split("/", 1)[1])
        for b in rep.get("basedOn") or []:
            ref_ = str((b or {}).get("reference") or "")
            if ref_.startswith("ServiceRequest/"):
                by_order.setdefault(ref_.split("/", 1)[1], []).append(rep["id"])
        for ident in rep.get("identifier") or []:
            if isinstance(ident, dict) and ident.get("value"):
                by_ident.setdefault((ident.get("system"), ident["value"]), []).append(rep["id"])
    if by_order:
        for study, order in conn.execute(_STUDIES_BASED_ON, {"orders": sorted(by_order)}):
            for rep_id in by_order[order]:
                wanted[rep_id].add(study)
    if by_ident:
        values = sorted({v for _, v in by_ident})
        for study, system, value in conn.execute(_STUDIES_BY_IDENTIFIER, {"values": values}):
            for rep_id in by_ident.get((system, value), ()):
                wanted[rep_id].add(study)
    keys = sorted({("ImagingStudy", i) for ids in wanted.values() for i in ids})
    found = {s.res_id: s.resource() for s in svc.store.read_many(conn, keys)} if keys else {}
    return {rep_id: [found[i] for i in sorted(ids) if i in found] for rep_id, ids in wanted.items()}


_ucum_from_local = lru_cache(maxsize=4096)(ucum.from_local)


def _quantity_in(value: dict | None, unit: str | None) -> dict | None:
    """``valueQuantity`` converted to ``unit`` (UCUM, exact) when the units are commensurable."""
    if not value or not unit or value.get("value") is None:
        return None
    source = _ucum_from_local(value.get("code") or value.get("unit"))
    if not source or source == unit:
        return None
    try:
        converted = ucum.convert(Decimal(str(value["value"])), source, unit)
    except Exception:  # incommensurable (mg/dL → mmol/L needs a molar mass) or not UCUM: show as sent
        return None
    return {"value": float(converted), "unit": unit, "system": urls.UCUM, "code": unit}


def _reason_part(r) -> dict:
    return {"name": "reason", "part": [{"name": "code", "valueCode": r.code}, {"name": "rule", "valueString": r.rule},
                                        {"name": "severity", "valueCode": r.severity},
                                        {"name": "text", "valueString": r.text}]}


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(CHINA_TIME).isoformat(timespec="seconds") if dt else None


def _candidate_part(ref: Reference, res: dict, c: Candidate, d: Decision, report: dict | None,
                    studies: list[dict], requester_unit: str | None) -> dict:
    rtype, rid = res["resourceType"], res["id"]
    parts: list[dict] = [{"name": "decision", "valueCode": d.decision}]
    if d.scope:
        parts.append({"name": "scope", "valueCoding": {"system": results.MARK_SYSTEM, "code": d.scope,
                                                       "display": d.label}})
    if d.expires:
        parts.append({"name": "expires", "valueDateTime": _iso(d.expires)})
    parts.extend(_reason_part(r) for r in d.reasons)
    if c.performer:
        parts.append({"name": "performer", "valueReference": {
            "reference": f"Organization/{organization_id(c.performer)}",
            "identifier": {"system": organization_system(), "value": c.performer}}})
    if c.effective:
        parts.append({"name": "effective", "valueDateTime": _iso(c.effective)})
    parts.append({"name": "result", "valueReference": {"reference": f"{rtype}/{rid}"}})
    if rtype == "DiagnosticReport":
        parts.append({"name": "report", "valueReference": {"reference": f"{rtype}/{rid}"}})
    elif report:
        parts.append({"name": "report", "valueReference": {"reference": f"DiagnosticReport/{report['id']}"}})
    for s in studies:
        parts.append({"name": "imagingStudy", "valueReference": {"reference": f"ImagingStudy/{s['id']}"}})
        parts.extend({"name": "endpoint", "valueReference": {"reference": e}} for e in results.endpoints(s))
    if res.get("valueQuantity"):
        parts.append({"name": "value", "valueQuantity": res["valueQuantity"]})
        conv = _quantity_in(res["valueQuantity"], requester_unit)
        if conv:
            parts.append({"name": "valueInRequesterUnit", "valueQuantity": conv})
    evidence = [{"name": f"{k}Version", "valueInteger": v} for k, v in sorted(ref.versions.items())]
    if d.qualification:
        evidence.insert(0, {"name": "qualification", "valueString": d.qualification.evidence()})
    parts.append({"name": "evidence", "part": evidence})
    parts.append({"name": "resource", "resource": res})
    return {"name": "candidate", "part": parts}


def recognizable(svc: FhirService, rec, req: FhirRequest, access: Access, rtype: str, rid: str | None) -> FhirResponse:
    """The ``$recognizable`` operation (both Patient and ServiceRequest)."""
    for t in RESULT_TYPES:
        access.require(t, "read")
    params = operation_params(req)
    now = datetime.now(timezone.utc)
    try:
        count = min(int(one(params, "_count") or DEFAULT_COUNT), MAX_CANDIDATES)
    except ValueError:
        raise InvalidRequest("_count must be a number", expression=["_count"]) from None
    with svc.engine.connect() as conn:
        ref = rec.snapshot(conn)
        if rtype == "Patient":
            if not rid:
                raise InvalidRequest("use Patient/{id}/$recognizable")
            q = _from_patient(rid, params, access, ref)
        else:
            if rid:
                access.require("ServiceRequest", "read")
                sr = svc.store.read_current(conn, "ServiceRequest", rid).resource()
                order = f"ServiceRequest/{rid}"
            else:
                sr = req.body if isinstance(req.body, dict) and req.body.get("resourceType") == "ServiceRequest" \
                    else one(params, "serviceRequest")
                order = None
            q = _from_service_request(sr, params, access, ref, order)
        if not q.requester:
            raise InvalidRequest("the requesting organization is unknown: give 'organization' or use a token with an org")
        ctx = access.patient_only("Observation", "read")
        if ctx and ctx != q.patient:
            raise Forbidden("the patient is outside the patient context of this token")
        pids = svc.linked_patients(conn, q.patient)
        docs, reports, total = _candidates(conn, svc, ref, q, pids, now, count)
        if not total:  # results referencing the patient prove it exists; otherwise 404 / 410
            svc.store.read_current(conn, "Patient", q.patient)
        studies = _studies_of(conn, svc, [d for d in docs if d["resourceType"] == "DiagnosticReport"])
    orgs = ref.orgs_by_id
    requester_unit = ref.unit_of(q.item, q.requester) if q.item else None
    evaluated = []
    for res in docs:
        report = reports.get(res["id"]) if res["resourceType"] == "Observation" else None
        org = results.performer(res, orgs) or (results.performer(report, orgs) if report else None)
        item, _ = ref.item_for(results.codings(res), org)
        if q.item and item != q.item:
            continue  # another organization's code that happens to look the same
        linked = studies.get(res["id"], []) if res["resourceType"] == "DiagnosticReport" else []
        imaging = any(e.requires_images for e in ref.catalogue.get(item or "", ()))
        c = Candidate(item, org, res.get("status"), results.effective(res),
                      images_available=any(results.has_images(s) for s in linked) if imaging else None,
                      claimed_marks=results.claimed_marks(res))
        evaluated.append((res, c, decide(ref, c, q.requester, now, q.context), report, linked))
    evaluated.sort(key=lambda e: (-RANK[e[2].decision], -(e[1].effective.timestamp() if e[1].effective else 0)))
    item_part = {"name": "item", "part": [
        {"name": "requested", "valueCodeableConcept": {"coding": q.codings}},
        {"name": "organization", "valueIdentifier": {"system": organization_system(), "value": q.requester}}]}
    if q.item and q.item in ref.catalogue:
        e = ref.catalogue[q.item][0]
        item_part["part"].insert(0, {"name": "code", "valueCoding": {"system": CATALOGUE_SYSTEM, "code": q.item,
                                                                     **({"display": e.name} if e.name else {})}})
        item_part["part"].append({"name": "category", "valueCode": e.category})
    else:
        item_part["part"].append({"name": "reason", "valueCode": "NOT_IN_CATALOGUE"})
    item_part["part"].append({"name": "total", "valueInteger": total})
    body = {"resourceType": "Parameters", "parameter": [item_part] + [
        _candidate_part(ref, res, c, d, report, linked, requester_unit) for res, c, d, report, linked in evaluated]}
    _record_offers(rec, q, evaluated)
    refs = [f"{r['resourceType']}/{r['id']}" for r, *_ in evaluated]
    return FhirResponse(200, body, resources=refs + ([q.order] if q.order else []), patients=[q.patient])


def _record_offers(rec, q: Query, evaluated: list) -> None:
    now = now_us()
    rec.offers.record([{"at": now, "requester": q.requester, "performer": c.performer, "item": c.item or q.item,
                        "result_ref": f"{res['resourceType']}/{res['id']}", "decision": d.decision,
                        "reasons": " ".join(d.codes)}
                       for res, c, d, *_ in evaluated if d.decision in (RECOGNIZABLE, NEEDS_JUDGEMENT)])
