"""``ServiceRequest/{id}/$recognition-decision`` (POST; rule R9 of design/RECOGNITION.md).

Parameters ``result`` (Reference), ``decision`` (``accept`` | ``reject``), ``reason`` (code),
``note``, ``organization``: the physician's decision, written as a ``Task`` (task.html; see
docs/recognition.md for why a Task rather than a Provenance) based on the order, focused on the
result, with the user and time; audited as the operation's AuditEvent (the FHIR pipeline) and
counted in the statistics (:func:`index_decisions`, an ``after_write`` hook, so Tasks posted
directly count too).
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from hub.errors import InvalidRequest
from hub.fhir.model import instant, now_us
from hub.fhir.service import FhirRequest, FhirResponse, FhirService
from hub.fhir.validation import validate_resource
from hub.recognition import results
from hub.recognition.params import one, operation_params, org_code
from hub.recognition.reference import CATALOGUE_SYSTEM
from hub.recognition.results import RESULT_TYPES
from hub.recognition.rules import CLINICAL_EXCEPTIONS
from hub.recognition.schema import rec_decisions as D
from hub.security.access import Access
from hub.storage.db import write_tx
from hub.storage.schema import sp_reference as REF
from mappings.identity import organization_id, organization_system
from terminology import urls

TASK_CODE_SYSTEM = urls.code_system("recognition-task")
DECISION_SYSTEM = urls.code_system("recognition-decision")
REASON_SYSTEM = urls.code_system("recognition-reason")
TASK_INPUT_SYSTEM = urls.code_system("recognition-task-input")
PRINCIPAL_SYSTEM = "urn:yilian:principal"  # as in the AuditEvent agent (hub.audit)

#: reasons a physician commonly records (design/RECOGNITION.md), plus the R8 contexts
REJECT_REASONS = {"site-mismatch": "exam site does not match", "time-limit-exceeded": "time limit exceeded",
                  "image-quality": "image quality insufficient", "condition-changed": "condition changed",
                  "other": "other", **{k: v for k, v in CLINICAL_EXCEPTIONS.items() if k != "condition-changed"}}

_REPORTS_OF = select(REF.c.res_id, REF.c.target_id).where(
    REF.c.res_type == "DiagnosticReport", REF.c.param == "result", REF.c.target_type == "Observation",
    REF.c.target_id.in_(bindparam("ids", expanding=True)))


def _reports_of(conn: Connection, svc: FhirService, obs_ids: list[str]) -> dict[str, dict]:
    """Observation id → a DiagnosticReport listing it in ``result``."""
    keys = conn.execute(_REPORTS_OF, {"ids": obs_ids}).all()
    if not keys:
        return {}
    reports = {s.res_id: s.resource() for s in svc.store.read_many(conn, [("DiagnosticReport", k.res_id) for k in keys])}
    return {k.target_id: reports[k.res_id] for k in keys if k.res_id in reports}


def record_decision(svc: FhirService, rec, req: FhirRequest, access: Access, rtype: str,
                    rid: str | None) -> FhirResponse:
    """``ServiceRequest/{id}/$recognition-decision``: the physician's decision as a Task."""
    if req.method != "POST":
        raise InvalidRequest("$recognition-decision is POST with a Parameters body", status=405)
    access.require("Task", "create")
    params = operation_params(req)
    order = f"ServiceRequest/{rid}" if rid else None
    if order is None:
        o = one(params, "order")
        order = o.get("reference") if isinstance(o, dict) else o
        if not order or not str(order).startswith("ServiceRequest/"):
            raise InvalidRequest("give the order: ServiceRequest/{id}/$recognition-decision or 'order'")
    result = one(params, "result")
    result = result.get("reference") if isinstance(result, dict) else result
    if not result or str(result).split("/", 1)[0] not in RESULT_TYPES or "/" not in str(result):
        raise InvalidRequest("'result' must reference the Observation or DiagnosticReport offered",
                             expression=["result"])
    decision = one(params, "decision")
    if decision not in ("accept", "reject"):
        raise InvalidRequest("'decision' must be accept or reject", expression=["decision"])
    reason = one(params, "reason")
    if isinstance(reason, dict):
        reason = reason.get("code") or next((c.get("code") for c in reason.get("coding", [])), None)
    if decision == "reject" and reason not in REJECT_REASONS:
        raise InvalidRequest(f"a rejection needs a 'reason': one of {', '.join(REJECT_REASONS)}",
                             expression=["reason"])
    note = one(params, "note")
    p = access.principal
    rtype_, rid_ = str(result).split("/", 1)
    access.require(rtype_, "read")
    with write_tx(svc.engine) as conn:
        ref = rec.snapshot(conn)
        res = svc.store.read_current(conn, rtype_, rid_).resource()
        subject = (res.get("subject") or {}).get("reference")
        if rid:
            sr = svc.store.read_current(conn, "ServiceRequest", rid).resource()
            ordered_for = str((sr.get("subject") or {}).get("reference") or "")
            if ordered_for.startswith("Patient/") and subject and subject.startswith("Patient/") and \
                    subject.split("/", 1)[1] not in svc.linked_patients(conn, ordered_for.split("/", 1)[1]):
                raise InvalidRequest(f"{result} is not a result of the patient the order is for", expression=["result"])
        orgs = ref.orgs_by_id
        org = results.performer(res, orgs)
        if org is None and rtype_ == "Observation":
            rep = _reports_of(conn, svc, [rid_]).get(rid_)
            org = results.performer(rep, orgs) if rep else None
        item, _ = ref.item_for(results.codings(res), org)
        requester = org_code(one(params, "organization"), ref) or p.organization
        now = now_us()
        inputs = [("item", {"valueCoding": {"system": CATALOGUE_SYSTEM, "code": item}} if item else None),
                  ("performer", {"valueIdentifier": {"system": organization_system(), "value": org}} if org else None),
                  ("requester", {"valueIdentifier": {"system": organization_system(), "value": requester}}
                   if requester else None)]
        task = {
            "resourceType": "Task",
            "status": "completed",
            "intent": "order",
            "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "recognition-decision",
                                 "display": "检查检验结果互认决定 (mutual recognition decision)"}]},
            "basedOn": [{"reference": str(order)}],
            "focus": {"reference": str(result)},
            **({"for": {"reference": subject}} if subject else {}),
            "authoredOn": instant(now),
            "lastModified": instant(now),
            "requester": {"type": "Practitioner", "identifier": {"system": PRINCIPAL_SYSTEM, "value": p.subject},
                          **({"display": p.name} if p.name else {})},
            **({"owner": {"reference": f"Organization/{organization_id(requester)}",
                          "identifier": {"system": organization_system(), "value": requester}}} if requester else {}),
            "businessStatus": {"coding": [{"system": DECISION_SYSTEM, "code": f"{decision}ed"}]},
            **({"statusReason": {"coding": [{"system": REASON_SYSTEM, "code": reason,
                                             **({"display": REJECT_REASONS[reason]} if reason in REJECT_REASONS else {})}]}}
               if reason else {}),
            "input": [{"type": {"coding": [{"system": TASK_INPUT_SYSTEM, "code": name}]}, **value}
                      for name, value in inputs if value],
            **({"note": [{"text": str(note)}]} if note else {}),
        }
        validate_resource(task, "Task")
        stored = svc.store.write(conn, [svc.store.prepare_create("Task", task)])[0]
    resp = FhirResponse(201, stored.fragment(), {"Location": f"{svc.base_url}/{stored.location}", "ETag": stored.etag},
                        stored, resources=[f"Task/{stored.res_id}", str(order), str(result)],
                        patients=[subject.split("/", 1)[1]] if subject and subject.startswith("Patient/") else [])
    return resp


def index_decisions(conn: Connection, versions) -> None:
    """``after_write`` hook: every recognition-decision Task (written by the operation or posted
    directly) is counted in ``rec_decisions``."""
    for v in versions:
        if v.res_type != "Task" or v.resource is None:
            continue
        task = v.resource
        if not any(c.get("system") == TASK_CODE_SYSTEM and c.get("code") == "recognition-decision"
                   for c in (task.get("code") or {}).get("coding", [])):
            continue
        inputs = {}
        for i in task.get("input") or []:
            name = next((c.get("code") for c in (i.get("type") or {}).get("coding", [])
                         if c.get("system") == TASK_INPUT_SYSTEM), None)
            val = i.get("valueCoding", {}).get("code") or i.get("valueIdentifier", {}).get("value")
            if name:
                inputs[name] = val
        outcome = next((c.get("code") for c in (task.get("businessStatus") or {}).get("coding", [])
                        if c.get("system") == DECISION_SYSTEM), None)
        if outcome not in ("accepted", "rejected"):
            continue
        row = {"task_id": v.res_id, "at": v.last_updated, "requester": inputs.get("requester"),
               "performer": inputs.get("performer"), "item": inputs.get("item"),
               "result_ref": (task.get("focus") or {}).get("reference"),
               "order_ref": next((b.get("reference") for b in task.get("basedOn") or []), None),
               "outcome": outcome,
               "reason": next((c.get("code") for c in (task.get("statusReason") or {}).get("coding", [])), None),
               "user_id": ((task.get("requester") or {}).get("identifier") or {}).get("value")}
        conn.execute(D.delete().where(D.c.task_id == v.res_id))
        conn.execute(D.insert().values(**row))
