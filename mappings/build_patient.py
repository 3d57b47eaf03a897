"""PID, PD1, NK1, PV1/PV2, DG1, AL1 and MRG: who the patient is, the visit, merges."""

from __future__ import annotations

from typing import Any

from adapters.hl7v2 import Segment
from terminology import urls

from . import datatypes as dt
from . import identity
from .context import Context
from .errors import REQUIRED_FIELD_MISSING, MappingError
from .state import State

ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_CODE = urls.V3_ACT_CODE
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


def _own_identifier(ctx: Context, identifiers: list[dict]) -> dict | None:
    """The identifier the Patient's id derives from: an MRN of a member organization (its
    system is org-qualified), preferring type MR, then PI/PT, then any org-qualified one."""
    org_prefix = f"{ctx.base.rstrip('/')}/sid/"
    own = [i for i in identifiers if i["system"].startswith(org_prefix)]
    for wanted in ("MR", "MRN", "PI", "PT", None):
        for i in own:
            code = i.get("type", {}).get("coding", [{}])[0].get("code")
            if wanted is None or code == wanted:
                return i
    return identifiers[0] if identifiers else None


def _dedupe(items: list[dict]) -> list[dict]:
    out, seen = [], set()
    for i in items:
        k = (i.get("system"), i.get("value"))
        if k not in seen:
            seen.add(k)
            out.append(i)
    return out


def patient(ctx: Context, seg: Segment, st: State) -> None:
    res: dict[str, Any] = {"resourceType": "Patient"}
    ctx.specs["PID"].apply(ctx, seg, res)
    sent = res.get("identifier", [])
    idents = _dedupe(sent)
    if len(idents) < len(sent):
        ctx.warn("PID-3 repetitions with different assigning authorities map to one identifier system; "
                 "map the authorities in the facility profile")
    for extra in ctx.profile.extra_identifiers:
        value = seg.get(int(extra.field.split("-")[1])) if extra.field[:3] == "PID" else ctx.msg.get(extra.field)
        if value and value.strip() and value != '""':
            ident = {"system": extra.system or identity.org_system(ctx.org, extra.kind, ctx.base),
                     "value": value.strip()}
            if extra.type:
                ident["type"] = ctx.identifier_type(extra.type)
            idents.append(ident)
    own = _own_identifier(ctx, idents)
    if own is None:
        raise MappingError(REQUIRED_FIELD_MISSING, "no patient identifier in PID-3, PID-2, PID-4, PID-19 or "
                           "PID-20: the patient cannot be linked", "PID", 3)
    res["identifier"] = _dedupe(idents)
    res["id"] = identity.patient_id(own["system"], own["value"])
    res["active"] = True
    names = res.get("name", [])
    if len(names) > 1 and any("text" in n for n in names):
        for n in names:     # a Latin (pinyin) repetition beside a Chinese name is an alternate
            if "text" not in n and "use" not in n:
                n["use"] = "usual"
    if "deceasedDateTime" in res and "deceasedBoolean" in res:
        del res["deceasedBoolean"]
    if "multipleBirthInteger" in res and "multipleBirthBoolean" in res:
        del res["multipleBirthBoolean"]
    res["managingOrganization"] = ctx.organization_ref()
    st.patient = ctx.add(res)
    if ctx.msg.message_type != "ADT":
        # registration (ADT) owns demographics; results, orders, documents and appointments
        # create the patient only when the hub has not heard of them yet
        ctx.create_only.add(st.patient)
    st.patient_id = res["id"]
    st.encounter = None
    st.last = None


def require_patient(st: State, what: str) -> str:
    if st.patient is None:
        raise MappingError(REQUIRED_FIELD_MISSING, f"{what} needs a patient (PID) before it", "PID", 3)
    return st.patient


def _location(ctx: Context, seg: Segment, n: int) -> str | None:
    rep = dt.first(ctx, seg, n)
    parts = [dt.leaf(rep, c) for c in (4, 1, 2, 3)]   # facility, point of care, room, bed
    text = " ".join(p for p in parts if p)
    return text or None


def encounter(ctx: Context, seg: Segment, st: State) -> None:
    subject = require_patient(st, "PV1")
    spec = ctx.specs["PV1"]
    res: dict[str, Any] = {"resourceType": "Encounter"}
    spec.apply(ctx, seg, res)
    ident = (res.get("identifier") or [None])[0]
    if ident is not None:
        res["id"] = identity.resource_id("Encounter", ident["system"], ident["value"])
    else:
        # no number: the visit is the patient's one starting at PV1-44 (or, without it, the
        # patient's unnumbered visit) -- never a new Encounter with every message
        start = seg.get(44)
        start = start.strip() if start and start != '""' else ""
        res["id"] = identity.resource_id("Encounter", f"{subject}/visit-without-number", start)
        ctx.warn("PV1-19 (visit number) empty: encounter id derived from the patient and PV1-44")
    class_code = dt.leaf(dt.first(ctx, seg, 2))
    found = ctx.translate("0004", class_code) if class_code else None
    if found:
        res["class"] = {"system": found[0], "code": found[1], **({"display": found[2]} if found[2] else {})}
    elif class_code:
        res["class"] = {"system": urls.v2_table("0004"), "code": class_code}
    else:
        res["class"] = {"system": urls.V3_NULL_FLAVOR, "code": "UNK", "display": "unknown"}
    status = st.spec.get("encounter_status", {}).get(st.trigger)
    if st.trigger in st.spec.get("cancelled_discharge", ()):
        res.get("period", {}).pop("end", None)         # A13: the discharge did not happen
        if not res.get("period"):
            res.pop("period", None)
    elif res.get("period", {}).get("end") and status in (None, "in-progress", "arrived"):
        status = "finished"
    res["status"] = status or ("in-progress" if res.get("period", {}).get("start") else "unknown")
    res["subject"] = {"reference": subject}
    loc = _location(ctx, seg, 3)
    if loc:
        res["location"] = [{"location": {"display": loc}, "status": "active"}]
    prior = _location(ctx, seg, 6)
    if prior:
        res.setdefault("location", []).append({"location": {"display": prior}, "status": "completed"})
    for n, role in spec.raw.get("participants", {}).items():
        for rep in dt.reps(ctx, seg, int(n)):
            ref = dt.xcn(ctx, rep)
            if ref:
                res.setdefault("participant", []).append(
                    {"type": [{"coding": [{"system": PARTICIPATION, "code": role}]}], "individual": ref})
    res["serviceProvider"] = ctx.organization_ref()
    st.encounter = ctx.add(res)


def visit_extra(ctx: Context, seg: Segment, st: State) -> None:
    if st.encounter is None:
        return
    enc = ctx.get(st.encounter)
    ctx.specs["PV2"].apply(ctx, seg, enc)
    if enc.get("status") == "planned":
        # a pre-admission (A05/A14/A15): PV2-8/PV2-9 (expected admit/discharge) are its planned
        # period when PV1-44/45 are empty. An encounter under way keeps them out: an expected
        # discharge is not an end, and R4 Encounter has no planned-end element.
        start = dt.dtm(ctx, dt.leaf(dt.first(ctx, seg, 8)), where=("PV2", 8))
        end = dt.dtm(ctx, dt.leaf(dt.first(ctx, seg, 9)), where=("PV2", 9))
        period = enc.get("period", {})
        if start and "start" not in period:
            period["start"] = start
        if end and "end" not in period:
            period["end"] = end
        if period:
            enc["period"] = period


def related_person(ctx: Context, seg: Segment, st: State) -> None:
    subject = require_patient(st, "NK1")
    res: dict[str, Any] = {"resourceType": "RelatedPerson"}
    ctx.specs["NK1"].apply(ctx, seg, res)
    if not res.get("name") and not res.get("relationship"):
        return
    rel = res.pop("relationship", None)
    if rel:
        code = rel["coding"][0].get("code") if rel.get("coding") else None
        mapped = ctx.tables["relationship"].get(code or "")
        if mapped:
            rel["coding"].append({"system": ROLE_CODE, "code": mapped})
        res["relationship"] = [rel]
    name = (res.get("name") or [{}])[0]
    key = f"{seg.get(1) or ''}|{name.get('family', '')}|{'|'.join(name.get('given', []))}"
    res["id"] = identity.resource_id("RelatedPerson", subject, key)
    res["patient"] = {"reference": subject}
    res["active"] = True
    ctx.add(res)


def condition(ctx: Context, seg: Segment, st: State) -> None:
    subject = require_patient(st, "DG1")
    res: dict[str, Any] = {"resourceType": "Condition"}
    ctx.specs["DG1"].apply(ctx, seg, res)
    if "code" not in res:
        text = dt.leaf(dt.first(ctx, seg, 4))
        if not text:
            ctx.warn("DG1 without diagnosis code (DG1-3) skipped")
            return
        res["code"] = {"text": text}
    coding = (res["code"].get("coding") or [{}])[0]
    key = f"{coding.get('system', '')}|{coding.get('code', res['code'].get('text'))}"
    res["id"] = identity.resource_id("Condition", st.encounter or subject, key)
    res["subject"] = {"reference": subject}
    res["category"] = [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}]
    if st.encounter:
        res["encounter"] = {"reference": st.encounter}
    ctx.add(res)


def allergy(ctx: Context, seg: Segment, st: State) -> None:
    subject = require_patient(st, "AL1")
    res: dict[str, Any] = {"resourceType": "AllergyIntolerance"}
    ctx.specs["AL1"].apply(ctx, seg, res)
    coding = (res["code"].get("coding") or [{}])[0]
    res["id"] = identity.resource_id("AllergyIntolerance", subject,
                                     f"{coding.get('system', '')}|{coding.get('code', res['code'].get('text'))}")
    res["patient"] = {"reference": subject}
    res["clinicalStatus"] = {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]}
    if "category" in res:
        res["category"] = sorted(set(res["category"]))
    reactions = [dt.leaf(r) for r in dt.reps(ctx, seg, 5)]
    reactions = [r for r in reactions if r]
    if reactions:
        res["reaction"] = [{"manifestation": [{"text": r}]} for r in reactions]
    ctx.add(res)


def merge(ctx: Context, seg: Segment, st: State) -> None:
    """MRG (A40 merge, A47 identifier change, A18/A34/A35): every identifier in MRG-1 (or MRG-4,
    v2.3's prior patient id) names a Patient now replaced by the PID patient (FHIR
    patient.html#links: the survivor ``replaces``, the merged one is ``replaced-by`` and inactive)."""
    if st.trigger not in st.spec.get("merge_triggers", ()):
        return          # A06/A07 etc.: MRG names the prior account or visit, not a patient merge
    survivor_ref = require_patient(st, "MRG")
    survivor = ctx.get(survivor_ref)
    olds = [dt.cx(ctx, rep, "mrn") for rep in dt.reps(ctx, seg, 1)] or \
           [dt.cx(ctx, rep, "mrn") for rep in dt.reps(ctx, seg, 4)]
    olds = [o for o in olds if o]
    if not olds:
        raise MappingError(REQUIRED_FIELD_MISSING, "MRG-1 holds no prior patient identifier", "MRG", 1)
    prior_names = [n for n in (dt.xpn(ctx, rep) for rep in dt.reps(ctx, seg, 7)) if n]
    for old in olds:
        mid = identity.patient_id(old["system"], old["value"])
        if mid == st.patient_id:
            ctx.warn("MRG-1 names the surviving patient itself: ignored")
            continue
        merged: dict[str, Any] = {"resourceType": "Patient", "id": mid, "identifier": [old], "active": False,
                                  "link": [{"other": {"reference": survivor_ref}, "type": "replaced-by"}]}
        if prior_names:
            merged["name"] = prior_names
        merged_ref = ctx.add(merged)
        # the hub's merge keeps the merged patient's record and marks it (mpi.merge); this
        # stub is for a patient the hub has never seen
        ctx.create_only.add(merged_ref)
        survivor.setdefault("link", []).append({"other": {"reference": merged_ref}, "type": "replaces"})
        ctx.merges.append((st.patient_id, mid))


def coverage(ctx: Context, seg: Segment, st: State) -> None:
    """IN1 -> Coverage: the plan (IN1-2) and company (IN1-3/IN1-4) of the patient's insurance;
    id from the policy number (IN1-36), else the plan, qualified by the patient."""
    subject = require_patient(st, "IN1")
    res: dict[str, Any] = {"resourceType": "Coverage"}
    ctx.specs["IN1"].apply(ctx, seg, res)
    company = dt.leaf(dt.first(ctx, seg, 4)) or dt.leaf(dt.first(ctx, seg, 3))
    plan = dt.leaf(dt.first(ctx, seg, 2)) or dt.leaf(dt.first(ctx, seg, 2), 2)
    if not company and not plan and "subscriberId" not in res:
        ctx.warn("IN1 without plan, company nor policy number skipped")
        return
    key = res.get("subscriberId") or plan or company
    res["id"] = identity.resource_id("Coverage", subject, f"{plan or ''}|{key}")
    if res.get("subscriberId"):
        res["identifier"] = [{"system": identity.org_system(ctx.org, "policy", ctx.base),
                              "value": res["subscriberId"]}]
    res["status"] = "active"
    res["beneficiary"] = {"reference": subject}
    res["payor"] = [{"display": company or plan}]
    if plan:
        res["class"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                              "code": "plan"}]}, "value": plan}]
    ctx.add(res)
