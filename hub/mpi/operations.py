"""FHIR operations of the master patient index.

- ``Patient/$match`` — IHE PDQm ITI-119 / patient-operation-match: candidates with
  ``Bundle.entry.search.score`` and the ``match-grade`` extension;
- ``Patient/$ihe-pix`` — IHE PIXm ITI-83: the identifiers and Patient references of every record
  linked to the person a source identifier belongs to;
- ``Patient/$merge`` — FHIR patient merge (the R5/R6 ``Patient/$merge`` parameters, on R4
  resources; IHE PMIR ITI-93 merge semantics) with :func:`hub.mpi.merge.move_patient_records`;
- ``Patient/$unmerge`` — this hub's inverse of ``$merge`` (:func:`hub.mpi.merge.undo_merge`).

Every operation asks :class:`hub.security.access.Access` first; ``FhirService.handle`` audits it.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode

from hub.errors import Forbidden, InvalidRequest, InvalidResource, MultipleMatches, NotFound
from hub.fhir.service import FhirRequest, FhirResponse
from hub.fhir.validation import validate_resource
from hub.mpi.index import PERSON_SYSTEM, MasterPatientIndex, is_golden_id
from hub.mpi.merge import move_patient_records, referring_records, undo_merge
from hub.mpi.scoring import Outcome
from hub.storage.db import write_tx

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


def register(svc, mpi: MasterPatientIndex, thresholds) -> None:
    ops = MpiOperations(mpi, thresholds)
    svc.register_operation("match", ops.match, types=("Patient",))
    svc.register_operation("ihe-pix", ops.pix, types=("Patient",))
    svc.register_operation("merge", ops.merge, types=("Patient",))
    svc.register_operation("unmerge", ops.unmerge, types=("Patient",))


def _params(req: FhirRequest) -> dict[str, list[dict]]:
    """Parameters (POST body) by name; each value is the parameter element."""
    body = req.body
    if body is None:
        return {}
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequest("the operation takes a Parameters resource as its body")
    out: dict[str, list[dict]] = {}
    for p in body.get("parameter") or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str):
            out.setdefault(p["name"], []).append(p)
    return out


def _parameters(*parts: tuple[str, str, object]) -> dict:
    return {"resourceType": "Parameters",
            "parameter": [{"name": n, k: v} for n, k, v in parts]}


class MpiOperations:
    def __init__(self, mpi: MasterPatientIndex, thresholds):
        self.mpi = mpi
        self.thresholds = thresholds

    # ------------------------------------------------------------------ $match
    def match(self, svc, req: FhirRequest, access, rtype, rid) -> FhirResponse:
        """patient-operation-match / PDQm ITI-119: ``resource`` (Patient), ``onlyCertainMatches``,
        ``count``. Grades: ``certain`` (the index would link automatically), ``probable`` /
        ``possible`` (it would ask a person: upper / lower half of the review band)."""
        if rid is not None or req.method != "POST":
            raise InvalidRequest("$match is invoked as POST Patient/$match with a Parameters body")
        access.require("Patient", "search-type")
        params = _params(req)
        resource = (params.get("resource") or [{}])[0].get("resource")
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            raise InvalidResource("$match needs the parameter 'resource' holding a Patient")
        validate_resource(resource, "Patient")
        only_certain = bool((params.get("onlyCertainMatches") or [{}])[0].get("valueBoolean", False))
        count = (params.get("count") or [{}])[0].get("valueInteger", 10)
        if not isinstance(count, int) or not 1 <= count <= 100:
            raise InvalidRequest("count must be an integer from 1 to 100")
        with svc.engine.connect() as conn:
            cands = [c for c in self.mpi.find_matches(conn, resource) if c.result.outcome is not Outcome.NEW]
            if only_certain:
                cands = [c for c in cands if c.result.outcome is Outcome.LINK]
            cands = cands[:count]
            stored = {s.res_id: s for s in svc.store.read_many(conn, [("Patient", c.patient_id) for c in cands])}
        ctx = access.patient_only("Patient", "search-type")
        entries = []
        for c in cands:
            s = stored.get(c.patient_id)
            if s is None or (ctx and ctx != c.patient_id):
                continue
            entries.append({"fullUrl": f"{svc.base_url}/Patient/{c.patient_id}", "resource": s.fragment(),
                            "search": {"extension": [{"url": MATCH_GRADE, "valueCode": self._grade(c.result)}],
                                       "mode": "match", "score": self._score(c.result)}})
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
        if entries:
            bundle["entry"] = entries
        ids = [e["fullUrl"].rsplit("/", 1)[-1] for e in entries]
        return FhirResponse(200, bundle, resources=[f"Patient/{i}" for i in ids], patients=ids)

    def _grade(self, result) -> str:
        if result.outcome is Outcome.LINK:
            return "certain"
        mid = (self.thresholds.link + self.thresholds.review) / 2
        return "probable" if result.score >= mid else "possible"

    def _score(self, result) -> float:
        """The log2 likelihood ratio as a 0–1 score: 0.5 at the review threshold; a
        deterministic link (same resident ID) is at least 0.99."""
        x = result.score - self.thresholds.review
        s = 1.0 / (1.0 + math.pow(2.0, -max(-60.0, min(60.0, x))))
        if result.outcome is Outcome.LINK:
            s = max(s, 0.99)
        return round(s, 4)

    # ------------------------------------------------------------------ $ihe-pix
    def pix(self, svc, req: FhirRequest, access, rtype, rid) -> FhirResponse:
        """PIXm ITI-83: ``sourceIdentifier`` (system|value), ``targetSystem`` (0..*). 404 when
        the source identifier is unknown, 403 when a target system is unknown (ITI-83 §2:3.83.4.2.3)."""
        if rid is not None or req.method not in ("GET", "POST"):
            raise InvalidRequest("$ihe-pix is invoked at the type level: Patient/$ihe-pix?sourceIdentifier=…")
        access.require("Patient", "read")
        query = list(req.query)
        if req.method == "POST":
            posted = _params(req)
            for p in posted.get("sourceIdentifier", []) + posted.get("targetSystem", []):
                v = p.get("valueString") or p.get("valueUri")
                if v is None and isinstance(p.get("valueIdentifier"), dict):
                    ident = p["valueIdentifier"]
                    v = f"{ident.get('system', '')}|{ident.get('value', '')}"
                query.append((p["name"], v or ""))
        sources = [v for k, v in query if k == "sourceIdentifier"]
        targets = [s for k, v in query if k == "targetSystem" for s in v.split(",") if s]
        if len(sources) != 1 or "|" not in sources[0] or not sources[0].split("|", 1)[1]:
            raise InvalidRequest("sourceIdentifier must be given once, as system|value")
        with svc.engine.connect() as conn:
            found = [p for p in svc._match_ids(conn, "Patient", urlencode({"identifier": sources[0]}), limit=20)
                     if not is_golden_id(p)]
            if not found:
                raise NotFound(f"sourceIdentifier {sources[0]!r} is not known to the index")
            linked: list[str] = []
            for pid in found:
                linked.extend(self.mpi.linked_patients(conn, pid))
            linked = list(dict.fromkeys(linked))
            persons = list(dict.fromkeys(p for p in (self.mpi.person_of(conn, x) for x in found) if p))
            stored = svc.store.read_many(conn, [("Patient", p) for p in linked])
        ctx = access.patient_only("Patient", "read")
        if ctx and ctx not in linked:
            raise Forbidden("the patient is outside the patient context of this token")
        parts: list[tuple[str, str, object]] = []
        systems_seen: set[str] = set()
        seen_idents = {tuple(sources[0].split("|", 1))}  # the source identifier itself is not repeated
        for s in sorted(stored, key=lambda s: s.res_id):
            res = s.resource()
            for ident in res.get("identifier") or []:
                system = ident.get("system")
                systems_seen.add(system)
                if (system, ident.get("value")) in seen_idents:
                    continue
                seen_idents.add((system, ident.get("value")))
                if targets and system not in targets:
                    continue
                parts.append(("targetIdentifier", "valueIdentifier",
                              {k: ident[k] for k in ("use", "system", "value", "assigner") if k in ident}))
            parts.append(("targetId", "valueReference", {"reference": f"Patient/{s.res_id}"}))
        for person in persons:
            if not targets or PERSON_SYSTEM in targets:
                parts.append(("targetIdentifier", "valueIdentifier", {"system": PERSON_SYSTEM, "value": person}))
        systems_seen.add(PERSON_SYSTEM)
        unknown = [t for t in targets if t not in systems_seen]
        if unknown and len(unknown) == len(targets):
            raise Forbidden(f"targetSystem {', '.join(unknown)} is not a domain of the linked records")
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": [
            {"name": n, k: v} for n, k, v in parts]} if parts else {"resourceType": "Parameters"},
            resources=[f"Patient/{p}" for p in linked], patients=linked)

    # ------------------------------------------------------------------ $merge / $unmerge
    def _patient_param(self, svc, conn, params: dict, name: str) -> str | None:
        ref = (params.get(name) or [{}])[0].get("valueReference")
        idents = [p.get("valueIdentifier") for p in params.get(f"{name}-identifier", [])]
        if ref is not None:
            value = (ref or {}).get("reference") or ""
            if not value.startswith("Patient/") or "/" in value[8:]:
                raise InvalidRequest(f"{name} must reference a Patient (Patient/<id>)")
            return value[8:]
        if idents:
            ids: set[str] | None = None
            for ident in idents:
                if not isinstance(ident, dict) or not ident.get("value"):
                    raise InvalidRequest(f"{name}-identifier must be an Identifier with a value")
                token = f"{ident.get('system', '')}|{ident['value']}" if ident.get("system") else ident["value"]
                got = set(svc._match_ids(conn, "Patient", urlencode({"identifier": token}), limit=3))
                got = {g for g in got if not is_golden_id(g)}
                ids = got if ids is None else ids & got
            if not ids:
                raise NotFound(f"no Patient has the {name}-identifier given")
            if len(ids) > 1:
                raise MultipleMatches(f"the {name}-identifier matches more than one Patient")
            return ids.pop()
        return None

    def merge(self, svc, req: FhirRequest, access, rtype, rid) -> FhirResponse:
        """``source-patient`` (or ``source-patient-identifier``) is merged into ``target-patient``
        (or ``target-patient-identifier``), which survives; ``preview=true`` reports without
        changing anything. ``result-patient`` is not supported (update the target first)."""
        if rid is not None or req.method != "POST":
            raise InvalidRequest("$merge is invoked as POST Patient/$merge with a Parameters body")
        params = _params(req)
        if "result-patient" in params:
            raise InvalidRequest("result-patient is not supported: update the target Patient, then merge",
                                 code="not-supported")
        preview = bool((params.get("preview") or [{}])[0].get("valueBoolean", False))
        access.require("Patient", "update")
        with write_tx(svc.engine) as conn:
            source = self._patient_param(svc, conn, params, "source-patient")
            target = self._patient_param(svc, conn, params, "target-patient")
            if source is None or target is None:
                raise InvalidRequest("$merge needs source-patient and target-patient (reference or identifier)")
            if is_golden_id(source) or is_golden_id(target):
                raise InvalidRequest("golden records (Patient/mpi-…) are not merged; merge source Patients")
            moving = referring_records(conn, source, exclude={("Patient", source), ("Patient", target)})
            for t in sorted({t for t, _ in moving}):
                access.require(t, "update")
            if preview:
                moved = len(moving)
            else:
                moved = move_patient_records(svc, conn, target, source, source="fhir-$merge",
                                             actor=access.principal.subject)
                self.mpi.flush(conn)
            result = svc.store.read_current(conn, "Patient", target)
        verb = "would be" if preview else "were"
        outcome = {"resourceType": "OperationOutcome", "issue": [{
            "severity": "information", "code": "informational",
            "diagnostics": f"Patient/{source} merged into Patient/{target}: {moved} record(s) {verb} re-pointed"}]}
        body = _parameters(("input", "resource", req.body), ("outcome", "resource", outcome),
                           ("result", "resource", result.resource()))
        return FhirResponse(200, body, resources=[f"Patient/{target}", f"Patient/{source}"],
                            patients=[target, source])

    def unmerge(self, svc, req: FhirRequest, access, rtype, rid) -> FhirResponse:
        """``source-patient``: the Patient a ``$merge`` merged away; its records go back to it
        and the index records that the two are different people (a manual decision)."""
        if rid is not None or req.method != "POST":
            raise InvalidRequest("$unmerge is invoked as POST Patient/$unmerge with a Parameters body")
        access.require("Patient", "update")
        params = _params(req)
        with write_tx(svc.engine) as conn:
            source = self._patient_param(svc, conn, params, "source-patient")
            if source is None:
                raise InvalidRequest("$unmerge needs source-patient: the Patient that was merged away")
            survivor, back = undo_merge(svc, conn, source, source="fhir-$unmerge", actor=access.principal.subject)
            self.mpi.flush(conn)
            result = svc.store.read_current(conn, "Patient", source)
        outcome = {"resourceType": "OperationOutcome", "issue": [{
            "severity": "information", "code": "informational",
            "diagnostics": f"Patient/{source} unmerged from Patient/{survivor}: {back} record(s) re-pointed back"}]}
        return FhirResponse(200, _parameters(("outcome", "resource", outcome), ("result", "resource", result.resource())),
                            resources=[f"Patient/{source}", f"Patient/{survivor}"], patients=[source, survivor])
