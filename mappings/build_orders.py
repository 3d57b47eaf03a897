"""ORC/OBR/TQ1/IPC/ZDS -> ServiceRequest, OBR -> DiagnosticReport, OBX -> Observation, SPM -> Specimen.

HL7 V2-to-FHIR IG segment maps ORC/OBR -> ServiceRequest, OBR -> DiagnosticReport, OBX ->
Observation, SPM -> Specimen. Ids (CONVENTIONS.md, "Results, orders"): ServiceRequest from the
placer (else filler) order number qualified by organization, DiagnosticReport from the filler
order (+ OBR-4 code), Observation from the filler order + OBX-3 code + OBX-4 sub-id.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from operator import itemgetter
from typing import Any, Callable

from adapters.hl7v2 import Segment
from terminology import urls

from . import datatypes as dt
from . import identity, obx_values
from .build_patient import require_patient
from .context import Context
from .engine import UNSET, SegmentSpec, fresh_copier
from .errors import DATA_TYPE_ERROR, TABLE_VALUE_NOT_FOUND, MappingError
from .state import Order, State

DATA_ABSENT = urls.DATA_ABSENT_REASON
NOTE_TYPES = frozenset(("Observation", "ServiceRequest", "Specimen", "Immunization", "Condition",
                        "AllergyIntolerance"))


def _ei_of(ctx: Context, segs: list[Segment | None], n_by_name: dict[str, int], kind: str) -> dict | None:
    for seg in segs:
        if seg is None:
            continue
        ident = dt.ei(ctx, dt.first(ctx, seg, n_by_name[seg.name]), kind)
        if ident:
            return ident
    return None


def order_ids(ctx: Context, order: Order, st: State) -> None:
    """Placer/filler identifiers and the key the order's resources derive their ids from.

    Several OBR under one order number (one requisition, several panels) are told apart by their
    set id (OBR-1), with a warning, so no order group overwrites another. ORC-2/ORC-3 come
    first: the IG's OBR[ServiceRequest] map takes OBR-2/OBR-3 only when ORC-2/ORC-3 are empty."""
    segs = [order.orc, order.obr]
    placer = _ei_of(ctx, segs, {"OBR": 2, "ORC": 2}, "placer")
    filler = _ei_of(ctx, segs, {"OBR": 3, "ORC": 3}, "filler")
    idents = []
    if placer:
        placer["type"] = ctx.identifier_type("PLAC")
        idents.append(placer)
    if filler:
        filler["type"] = ctx.identifier_type("FILL")
        idents.append(filler)
    # ORC-33 / OBR-53 (v2.7+, repeating): alternate placer order numbers, more identifiers of the order
    for seg in segs:
        if seg is not None and seg.raw_field(33 if seg.name == "ORC" else 53):
            for rep in dt.reps(ctx, seg, 33 if seg.name == "ORC" else 53):
                alternate = dt.ei(ctx, rep, "placer-alternate")
                if alternate and all(alternate["value"] != i["value"] for i in idents):
                    idents.append(alternate)
    order.request["identifier"] = idents
    own = placer or filler
    if own:
        order.request["id"] = identity.resource_id("ServiceRequest", own["system"], own["value"])
    else:
        set_id = (order.obr.get(1) if order.obr is not None else None) or "0"
        order.request["id"] = identity.resource_id("ServiceRequest", f"urn:yilian:message:{ctx.org}",
                                                   f"{ctx.msg.control_id}|{set_id}")
        ctx.warn("order without placer or filler number: ids derived from the message control id")
    key = filler or placer
    order.key = (key["system"], key["value"]) if key else (f"urn:yilian:message:{ctx.org}",
                                                            order.request["id"])
    def taken() -> bool:
        return any(o is not order and o.request.get("id") == order.request["id"] for o in st.orders)

    if order.obr is not None and taken():
        set_id = order.obr.get(1) or str(st.orders.index(order) + 1)
        ctx.warn(f"OBR {set_id}: its order number is another group's too; ids include OBR-1")
        base_system, base_value = own["system"] if own else order.key[0], own["value"] if own else order.key[1]
        suffix = f"OBR-1:{set_id}"
        order.request["id"] = identity.resource_id("ServiceRequest", base_system, f"{base_value}|{suffix}")
        if taken():
            # OBR-1 repeats too (every group "1", orders without numbers): the group's place in
            # the message tells them apart, so no order overwrites another
            suffix = f"{suffix}|group:{st.orders.index(order) + 1}"
            order.request["id"] = identity.resource_id("ServiceRequest", base_system, f"{base_value}|{suffix}")
        order.key = (order.key[0], f"{order.key[1]}|{suffix}")


def _start_order(ctx: Context, st: State, orc: Segment | None = None) -> Order:
    order = Order(request={"resourceType": "ServiceRequest"}, key=("", ""), orc=orc)
    st.orders.append(order)
    st.order = order
    return order


def order_control(ctx: Context, seg: Segment, st: State) -> None:
    """ORC starts an order group (its OBR, if any, follows)."""
    order = _start_order(ctx, st, seg)
    order_ids(ctx, order, st)
    st.last = order.request


def order_detail(ctx: Context, seg: Segment, st: State) -> None:
    """OBR: joins the group its ORC opened, else opens one."""
    order = st.order
    if order is None or order.obr is not None:
        order = _start_order(ctx, st)
    order.obr = seg
    order_ids(ctx, order, st)
    st.last = order.request


def timing(ctx: Context, seg: Segment, st: State) -> None:
    if st.order is not None:
        start = dt.dtm(ctx, seg.get(7))
        if start:
            st.order.request["occurrenceDateTime"] = start


def _accession(ctx: Context, order: Order, value: str | None) -> None:
    if not value:
        return
    ident = {"type": ctx.identifier_type("ACSN"), "system": identity.org_system(ctx.org, "accession", ctx.base),
             "value": value}
    if all(i.get("value") != value or i.get("system") != ident["system"] for i in order.request["identifier"]):
        order.request["identifier"].append(ident)


def _study_uid(order: Order, uid: str | None) -> None:
    if not uid:
        return
    ident = {"system": identity.DICOM_UID, "value": f"urn:oid:{uid}"}
    if ident not in order.request["identifier"]:
        order.request["identifier"].append(ident)


def imaging_procedure(ctx: Context, seg: Segment, st: State) -> None:
    """IPC (v2.5 chapter 4, 4.5.6): IPC-1 accession, IPC-3 Study Instance UID, IPC-5 modality."""
    if st.order is None:
        return
    _accession(ctx, st.order, seg.get(1))
    _study_uid(st.order, seg.get(3))
    st.order.imaging = True


def study_uid(ctx: Context, seg: Segment, st: State) -> None:
    """ZDS (IHE Scheduled Workflow Z-segment): ZDS-1.1 is the Study Instance UID."""
    if st.order is None:
        return
    _study_uid(st.order, seg.get(1))
    st.order.imaging = True


def _current_key(ctx: Context, st: State) -> tuple[str, str]:
    if st.order is not None:
        return st.order.key
    if st.immunization is not None:
        return ("Immunization", st.immunization["id"])
    return (f"{st.patient}", ctx.msg.control_id or "")


def _attachment(ctx: Context, seg: Segment) -> dict | None:
    """ED (2A.3.23): source ^ type ^ subtype ^ encoding ^ data, possibly in several repetitions
    whose data are parts of one document (decoded and joined)."""
    reps = dt.reps(ctx, seg, 5)
    if not reps:
        return None
    first = reps[0]
    top = ctx.tables["ed_media_type"].get((dt.leaf(first, 2) or "").upper(), "application")
    sub = (dt.leaf(first, 3) or "octet-stream").lower()
    media = sub if "/" in sub else f"{top}/{sub}"
    chunks = []
    for rep in reps:
        data = rep.get(5) or ""
        encoding = (dt.leaf(rep, 4) or "A").upper()
        if encoding in ("BASE64", "B64"):
            try:
                chunks.append(base64.b64decode(data.strip(), validate=True))
            except (binascii.Error, ValueError):
                raise MappingError(DATA_TYPE_ERROR, "OBX-5 ED data is not valid base64", "OBX", 5) from None
        elif encoding == "HEX":
            try:
                chunks.append(bytes.fromhex(data))
            except ValueError:
                raise MappingError(DATA_TYPE_ERROR, "OBX-5 ED data is not valid hex", "OBX", 5) from None
        else:
            chunks.append(data.encode("utf-8"))
    raw = b"".join(chunks)
    att = {"contentType": media, "data": base64.b64encode(raw).decode("ascii")}
    title = dt.leaf(dt.first(ctx, seg, 3), 2)
    if title:
        att["title"] = title
    return att


def _carries_value(ctx: Context, seg: Segment, vtype: str) -> bool:
    values = dt.reps(ctx, seg, 5)
    if vtype == "ED":
        return any(rep.get(5) for rep in values)
    return bool(values)


class _ResultParts:
    """What an OBX maps to from the fields a lab's results of one test share (code, units, range,
    flags, status: ``_shared_fields``), filled on first use (``UNSET`` until then) and memoized
    by those fields' text, so the next result of the test copies them: the values of the OBX
    spec's lookup rules (:meth:`SegmentSpec.apply`), the status with its warning, and copiers
    of the reference range and interpretation."""

    __slots__ = ("lookups", "code_key", "status", "reference_range", "interpretation")

    def __init__(self, spec: SegmentSpec) -> None:
        self.lookups = [UNSET] * spec.lookup_slots
        self.code_key: Any = UNSET                      # (system, code or text) the id derives from
        self.status: Any = UNSET                        # (OBX-11 code, status, warning or None)
        self.reference_range: Any = UNSET               # copier or None
        self.interpretation: Any = UNSET                # copier or None


#: the fields _ResultParts depends on besides the spec's lookup rules: OBX-2 value type, OBX-6
#: units, OBX-7 range, OBX-8 flags, OBX-11 status
_SHARED_FIELDS = (2, 6, 7, 8, 11)


@lru_cache(maxsize=64)
def _shared_fields(spec: SegmentSpec) -> tuple[Callable[[list], tuple], int]:
    """(the texts of the fields _ResultParts depends on, from a list of fields at least ``size``
    long; ``size``) for this compiled OBX spec (a facility profile may move its fields): those
    of its lookup rules, and whatever the code is read from (the id derives from it)."""
    code = {n for n, _required, _rule, _slot, to in spec.rules if to == "code"}
    fields = tuple(sorted(set(_SHARED_FIELDS) | set(spec.lookup_fields) | code))
    return itemgetter(*fields), fields[-1] + 1


def _result_parts(ctx: Context, seg: Segment, spec: SegmentSpec) -> _ResultParts:
    texts, size = _shared_fields(spec)
    f = seg.fields
    if len(f) < size:
        f = f + [""] * (size - len(f))
    memo = ctx.sender_memo("obx")
    key = (spec, texts(f))
    parts = memo.get(key)
    if parts is None:
        parts = memo[key] = _ResultParts(spec)
    return parts


def observation(ctx: Context, seg: Segment, st: State) -> None:
    vtype = (seg.get(2) or "").strip().upper()
    if not seg.get(3) and not _carries_value(ctx, seg, vtype):
        ctx.warn("OBX without observation code (OBX-3) nor value skipped")
        return
    if vtype and vtype not in ctx.tables["value_types"] and _carries_value(ctx, seg, vtype):
        raise MappingError(TABLE_VALUE_NOT_FOUND, f"OBX-2 value type {vtype!r} is not in table 0125", "OBX", 2)
    res: dict[str, Any] = {"resourceType": "Observation"}
    spec = ctx.specs["OBX"]
    parts = _result_parts(ctx, seg, spec)
    spec.apply(ctx, seg, res, parts.lookups)     # 101 when OBX-3 is missing
    if vtype in ("ED", "RP") and st.spec.get("report") and st.order is not None:
        att = _attachment(ctx, seg) if vtype == "ED" else None
        if att:
            st.order.attachments.append(att)
            return
    if parts.status is UNSET:
        status_code = (seg.get(11) or "").strip().upper()
        status = ctx.v2_code("0085", status_code, "observation_status")
        warning = None
        if status is None:
            status = "unknown"
            warning = (f"OBX-11 {status_code!r} is not a result status: Observation.status unknown" if status_code
                       else "OBX-11 empty: Observation.status unknown")
        parts.status = (status_code, status, warning)
    status_code, status, warning = parts.status
    if warning:
        ctx.warn(warning)
    res["status"] = status
    if vtype == "ED":
        # R4 Observation has no Attachment value: outside a report the document is its own
        # DocumentReference, related to the order it came with
        _attached_document(ctx, seg, st, res)
        return
    found = obx_values.value(ctx, seg, vtype)
    if found:
        res[found[0]] = found[1]
    elif status_code == "X":
        res["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-performed"}]}
    if parts.reference_range is UNSET:
        rr = obx_values.reference_range(ctx, seg)
        parts.reference_range = fresh_copier(rr) if rr else None
    if parts.reference_range is not None:
        res["referenceRange"] = parts.reference_range()
    if parts.interpretation is UNSET:
        interp = obx_values.interpretation(ctx, seg)
        parts.interpretation = fresh_copier(interp) if interp else None
    if parts.interpretation is not None:
        res["interpretation"] = parts.interpretation()
    if parts.code_key is UNSET:
        coding = (res["code"].get("coding") or [{}])[0]
        parts.code_key = (coding.get("system", ""), coding.get("code", res["code"].get("text", "")))
    order = st.order
    system, value = order.key if order is not None else _current_key(ctx, st)
    id_parts = (value, *parts.code_key, seg.get(4) or "")
    res["id"] = identity.resource_id("Observation", system, "|".join(id_parts))
    if f"Observation/{res['id']}" in ctx.resources:
        # OBX-4 should tell two results with one code apart; when it does not, OBX-1 does
        ctx.warn(f"OBX {seg.get(1) or ''}: code and sub-id (OBX-3/OBX-4) repeat in one order; id uses OBX-1")
        res["id"] = identity.resource_id("Observation", system, "|".join(id_parts + (seg.get(1) or "",)))
    if st.patient:
        res["subject"] = {"reference": st.patient}
    if st.encounter:
        res["encounter"] = {"reference": st.encounter}
    in_specimen_group = order is not None and order.specimen_group is not None
    if in_specimen_group:
        # an OBX after SPM (SPECIMEN group of ORU_R01/OML_O21: age at collection, specimen
        # condition …) observes the specimen; it is not one of the report's results
        res["specimen"] = {"reference": order.specimen_group}
    if order is not None:
        res["basedOn"] = [{"reference": f"ServiceRequest/{order.request['id']}"}]
        if "effectiveDateTime" not in res and order.obr is not None:
            if order.effective is None:
                order.effective = dt.dtm(ctx, order.obr.get(7)) or ""
            if order.effective:
                res["effectiveDateTime"] = order.effective
    elif st.immunization is not None:
        res["partOf"] = [{"reference": f"Immunization/{st.immunization['id']}"}]
    ref = ctx.add(res)
    if order is not None and not in_specimen_group and ref not in order.results:
        order.results.append(ref)
    st.last = res


def _attached_document(ctx: Context, seg: Segment, st: State, obs: dict) -> None:
    att = _attachment(ctx, seg)
    if att is None:
        return
    coding = (obs["code"].get("coding") or [{}])[0]
    system, value = _current_key(ctx, st)
    doc: dict[str, Any] = {"resourceType": "DocumentReference", "id": identity.resource_id(
        "DocumentReference", system, "|".join((value, coding.get("system", ""), coding.get("code", ""),
                                               seg.get(4) or "", seg.get(1) or "")))}
    doc["status"] = "entered-in-error" if obs.get("status") == "entered-in-error" else "current"
    doc["type"] = obs["code"]
    if st.patient:
        doc["subject"] = {"reference": st.patient}
    if "issued" in obs:
        doc["date"] = obs["issued"]
    related = [{"reference": f"ServiceRequest/{st.order.request['id']}"}] if st.order is not None else []
    if st.encounter or related:
        doc["context"] = {}
        if st.encounter:
            doc["context"]["encounter"] = [{"reference": st.encounter}]
        if related:
            doc["context"]["related"] = related
    doc["content"] = [{"attachment": att}]
    ctx.add(doc)


def specimen(ctx: Context, seg: Segment, st: State) -> None:
    res: dict[str, Any] = {"resourceType": "Specimen"}
    ctx.specs["SPM"].apply(ctx, seg, res)
    rep = dt.first(ctx, seg, 2)
    idents = []
    for comp, kind in ((1, "specimen"), (2, "specimen")):
        v = dt.leaf(rep, comp, 1)
        if v:
            org = ctx.organization_of(dt.leaf(rep, comp, 2), dt.leaf(rep, comp, 3)) or ctx.org
            ident = {"system": identity.org_system(org, kind, ctx.base), "value": v}
            if ident not in idents:
                idents.append(ident)
    if idents:
        res["identifier"] = idents
        own = idents[-1]
        res["id"] = identity.resource_id("Specimen", own["system"], own["value"])
    else:
        system, value = _current_key(ctx, st)
        res["id"] = identity.resource_id("Specimen", system, f"{value}|SPM|{seg.get(1) or ''}")
    if st.patient:
        res["subject"] = {"reference": st.patient}
    if st.order is not None:
        res["request"] = [{"reference": f"ServiceRequest/{st.order.request['id']}"}]
        ref = ctx.add(res)
        st.order.specimens.append(ref)
        st.order.specimen_group = ref
    else:
        ctx.add(res)
    st.last = res


def _obr_specimen(ctx: Context, st: State, order: Order) -> None:
    """OBR-15 specimen source (v2.3-2.4, SPS; withdrawn for SPM in 2.5): SPS.1 is the type."""
    kind = dt.cwe(ctx, dt.first(ctx, order.obr, 15), local_kind="specimen-type")
    if kind is None:
        return
    system, value = order.key
    res: dict[str, Any] = {"resourceType": "Specimen",
                           "id": identity.resource_id("Specimen", system, f"{value}|OBR-15"), "type": kind}
    collected = dt.dtm(ctx, order.obr.get(7))
    if collected:
        res["collection"] = {"collectedDateTime": collected}
    if st.patient:
        res["subject"] = {"reference": st.patient}
    res["request"] = [{"reference": f"ServiceRequest/{order.request['id']}"}]
    order.specimens.append(ctx.add(res))


def note(ctx: Context, seg: Segment, st: State) -> None:
    """NTE -> ``note`` of the resource it follows (Annotation.text; v2.5 section 2.16.10)."""
    target = st.last
    if target is None:
        return
    text = "\n".join(obx_values.text_of(ctx, r) for r in dt.reps(ctx, seg, 3)).strip()
    if not text or text == '""':
        return
    if target["resourceType"] in NOTE_TYPES:
        target.setdefault("note", []).append({"text": text})
    elif target["resourceType"] == "Appointment":
        target["comment"] = (target["comment"] + "\n" + text) if target.get("comment") else text


def _request_status(ctx: Context, order: Order) -> str:
    orc = order.orc
    if orc is not None:
        s = ctx.tables["order_status"].get((orc.get(5) or "").strip().upper())
        if s:
            return s
        s = ctx.tables["order_control_status"].get((orc.get(1) or "").strip().upper())
        if s:
            return s
    obr = order.obr
    if obr is not None and obr.get(25):
        rs = ctx.v2_code("0123", obr.get(25).strip().upper(), "report_status")
        if rs in ("final", "corrected", "amended"):
            return "completed"
        if rs == "cancelled":
            return "revoked"
        if rs:
            return "active"
    return "unknown"


def _is_imaging(st: State, order: Order) -> bool:
    if order.imaging:
        return True
    section = order.obr.get(24) if order.obr is not None else None
    return bool(section) and section.upper() in set(st.spec.get("imaging_sections", ()))


def finish_orders(ctx: Context, st: State) -> None:
    """Build each group's ServiceRequest and (ORU) DiagnosticReport once all segments are seen."""
    for order in st.orders:
        if order.obr is None and not st.spec.get("orders_without_obr", True):
            continue
        sr = order.request
        if order.obr is not None:
            ctx.specs["OBR"].apply(ctx, order.obr, sr)
        if order.orc is not None:
            ctx.specs["ORC"].apply(ctx, order.orc, sr)
            if "occurrenceDateTime" not in sr:
                start = dt.dtm(ctx, order.orc.get(7, comp=4))
                if start:
                    sr["occurrenceDateTime"] = start
        if order.obr is not None and "occurrenceDateTime" not in sr:
            start = dt.dtm(ctx, order.obr.get(27, comp=4))
            if start:
                sr["occurrenceDateTime"] = start
        if _is_imaging(st, order) and not any(
                i.get("type", {}).get("coding", [{}])[0].get("code") == "ACSN" for i in sr["identifier"]):
            # IHE RAD TF-2 4.4: accession in OBR-18; RIS that leave it empty use the filler
            # order number as the accession number
            accession = order.obr.get(18) if order.obr is not None else None
            filler = [i["value"] for i in sr["identifier"]
                      if i.get("type", {}).get("coding", [{}])[0].get("code") == "FILL"]
            _accession(ctx, order, accession or (filler[0] if filler else None))
        sr["status"] = _request_status(ctx, order)
        sr["intent"] = "order"
        sr["subject"] = {"reference": require_patient(st, "ORC/OBR")}
        if st.encounter:
            sr["encounter"] = {"reference": st.encounter}
        if not sr["identifier"]:
            del sr["identifier"]
        ctx.add(sr)
        if not order.specimens and order.obr is not None and order.obr.get(15):
            _obr_specimen(ctx, st, order)
        if st.spec.get("report") and order.obr is not None:
            _report(ctx, st, order)
    for order in st.orders:
        if order.specimens:
            for ref in order.results:
                obs = ctx.get(ref)
                if obs is not None and "specimen" not in obs:
                    obs["specimen"] = {"reference": order.specimens[0]}


def _report(ctx: Context, st: State, order: Order) -> None:
    obr = order.obr
    sr = order.request
    code = sr.get("code") or {"text": "report"}
    coding = (code.get("coding") or [{}])[0]
    system, value = order.key
    rep: dict[str, Any] = {"resourceType": "DiagnosticReport",
                           "id": identity.resource_id("DiagnosticReport", system,
                                                      f"{value}|{coding.get('system', '')}|{coding.get('code', '')}")}
    filler = [i for i in sr.get("identifier", []) if i.get("type", {}).get("coding", [{}])[0].get("code") == "FILL"]
    if filler:
        rep["identifier"] = filler
    rep["basedOn"] = [{"reference": f"ServiceRequest/{sr['id']}"}]
    status = ctx.v2_code("0123", (obr.get(25) or "").strip().upper(), "report_status")
    if status is None:
        status = "unknown"
        ctx.warn("OBR-25 empty or unknown: DiagnosticReport.status unknown")
    rep["status"] = status
    section = dt.v2_concept(ctx, (obr.get(24) or "").strip() or None, "0074")
    if section:
        rep["category"] = [section]
    rep["code"] = code
    rep["subject"] = {"reference": st.patient}
    if st.encounter:
        rep["encounter"] = {"reference": st.encounter}
    eff = dt.dtm(ctx, obr.get(7))
    if eff:
        rep["effectiveDateTime"] = eff
    issued = dt.dtm(ctx, obr.get(22), "instant", where=("OBR", 22))
    if issued:
        rep["issued"] = issued
    if order.specimens:
        rep["specimen"] = [{"reference": r} for r in order.specimens]
    if order.results:
        rep["result"] = [{"reference": r} for r in order.results]
    if order.attachments:
        rep["presentedForm"] = order.attachments
    performer = dt.xcn(ctx, dt.first(ctx, obr, 32)) if obr.get(32) else None
    if performer:
        rep["resultsInterpreter"] = [performer]
    ctx.add(rep)
