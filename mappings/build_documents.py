"""TXA+OBX -> DocumentReference, SCH/AIS/AIG/AIL/AIP -> Appointment, RXA/RXR -> Immunization.

HL7 V2-to-FHIR IG segment maps TXA -> DocumentReference, SCH -> Appointment, RXA ->
Immunization; HL7 v2.5 chapters 9 (MDM), 10 (SIU) and 4.14 (RXA, VXU).
"""

from __future__ import annotations

import base64
from typing import Any

from adapters.hl7v2 import Segment

from . import datatypes as dt
from . import identity, obx_values
from .build_orders import _attachment
from .build_patient import require_patient
from .context import Context
from .errors import REQUIRED_FIELD_MISSING, MappingError
from .state import State

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


# -- MDM ------------------------------------------------------------------------------------------
def document(ctx: Context, seg: Segment, st: State) -> None:
    subject = require_patient(st, "TXA")
    res: dict[str, Any] = {"resourceType": "DocumentReference"}
    ctx.specs["TXA"].apply(ctx, seg, res)
    number = dt.ei(ctx, dt.first(ctx, seg, 12), "document")
    if number is None:
        number = dt.ei(ctx, dt.first(ctx, seg, 16), "document")     # unique document file name
    if number is not None:
        res["id"] = identity.resource_id("DocumentReference", number["system"], number["value"])
        res["masterIdentifier"] = number
    else:
        # TXA-12 is required (v2.5 9.6.1.12), but senders shift it; the document stays
        # identifiable by its message, and the warning names the gap
        ctx.warn("TXA-12 (unique document number) empty: document id derived from MSH-10")
        res["id"] = identity.resource_id("DocumentReference", identity.org_system(ctx.org, "message", ctx.base),
                                         ctx.msg.control_id or "")
    placer = dt.ei(ctx, dt.first(ctx, seg, 14), "placer")
    if placer:
        res["identifier"] = [placer]
    res["status"] = st.spec.get("document_status", {}).get(st.trigger, "current")
    doc_status = ctx.tables["document_status"].get((seg.get(17) or "").strip().upper())
    if doc_status:
        res["docStatus"] = doc_status
    res["subject"] = {"reference": subject}
    if st.encounter:
        res["context"] = {"encounter": [{"reference": st.encounter}]}
    res["content"] = []
    st.document = res
    ctx.add(res)
    st.finishers.append(_finish_document)


def document_content(ctx: Context, seg: Segment, st: State) -> None:
    """OBX of an MDM: the document body. ED -> the attachment as sent (repetitions joined);
    TX/FT/ST -> text/plain UTF-8."""
    doc = st.document
    if doc is None:
        return
    vtype = (seg.get(2) or "").strip().upper()
    if vtype == "ED":
        att = _attachment(ctx, seg)
    else:
        text = "\n".join(obx_values.text_of(ctx, r) for r in dt.reps(ctx, seg, 5))
        att = {"contentType": "text/plain; charset=utf-8",
               "data": base64.b64encode(text.encode("utf-8")).decode("ascii")} if text.strip() else None
    if att:
        doc["content"].append({"attachment": att})


def _finish_document(ctx: Context, st: State) -> None:
    doc = st.document
    if doc is not None and not doc["content"]:
        # a notification without the content (T01, T03 …): the attachment says what it is
        title = (doc.get("type", {}).get("text") or "document")
        doc["content"].append({"attachment": {"title": title}})


# -- SIU ------------------------------------------------------------------------------------------
def appointment(ctx: Context, seg: Segment, st: State) -> None:
    res: dict[str, Any] = {"resourceType": "Appointment"}
    ctx.specs["SCH"].apply(ctx, seg, res)
    idents = [i for i in (dt.ei(ctx, dt.first(ctx, seg, 1), "appointment"),
                          dt.ei(ctx, dt.first(ctx, seg, 2), "appointment-filler")) if i]
    if not idents:
        raise MappingError(REQUIRED_FIELD_MISSING, "SCH-1 and SCH-2 (appointment ids) are empty", "SCH", 1)
    res["identifier"] = idents
    res["id"] = identity.resource_id("Appointment", idents[0]["system"], idents[0]["value"])
    status = st.spec.get("appointment_status", {}).get(st.trigger, "booked")
    res["status"] = status
    if status in ("cancelled", "noshow", "entered-in-error"):
        reason = dt.cwe(ctx, dt.first(ctx, seg, 6), local_kind="event-reason")
        if reason:
            res["cancelationReason"] = reason
    tq = dt.first(ctx, seg, 11)
    start = dt.dtm(ctx, dt.leaf(tq, 4), "instant", where=("SCH", 11))
    end = dt.dtm(ctx, dt.leaf(tq, 5), "instant", where=("SCH", 11))
    if start:
        res["start"] = start
    if end:
        res["end"] = end
    res["participant"] = []
    st.appointment = res
    st.last = res
    ctx.add(res)
    st.finishers.append(_finish_appointment)


def appointment_timing(ctx: Context, seg: Segment, st: State) -> None:
    """TQ1 after SCH (v2.6+): TQ1-7/TQ1-8 are the appointment's start/end (IG SIU_S12), in place
    of the deprecated SCH-11 timing quantity; an AIS-4 start still wins (appointment_service)."""
    appt = st.appointment
    if appt is None or st.appointment_start_from_ais:
        return
    start = dt.dtm(ctx, dt.leaf(dt.first(ctx, seg, 7)), "instant", where=("TQ1", 7))
    if not start:
        return
    appt["start"] = start
    end = dt.dtm(ctx, dt.leaf(dt.first(ctx, seg, 8)), "instant", where=("TQ1", 8))
    if end:
        appt["end"] = end
    else:
        appt.pop("end", None)


def appointment_service(ctx: Context, seg: Segment, st: State) -> None:
    if st.appointment is None:
        return
    extra: dict[str, Any] = {}
    ctx.specs["AIS"].apply(ctx, seg, extra)
    appt = st.appointment
    if extra.get("serviceType"):
        appt.setdefault("serviceType", []).extend(extra["serviceType"])
    if "start" in extra and not st.appointment_start_from_ais:
        # IG SIU_S12: the resource's start (AIS-4) is the appointment's; SCH-11 is deprecated
        st.appointment_start_from_ais = True
        appt["start"] = extra["start"]
        appt.pop("end", None)
        minutes = dt.number(seg.get(7))
        if minutes and 0 < minutes < 2**31 and (dt.leaf(dt.first(ctx, seg, 8)) or "MIN").upper() in ("MIN", "M"):
            appt["minutesDuration"] = int(minutes)


def appointment_resource(ctx: Context, seg: Segment, st: State) -> None:
    """AIG-3 (resource id, CWE: a device, a room, a team) -> participant.actor by its text. Read
    as a person (XCN), as it once was, the coding system ended up in the name ("L ABC Cell
    Counter")."""
    if st.appointment is None:
        return
    for rep in dt.reps(ctx, seg, 3):
        text = dt.leaf(rep, 2) or dt.leaf(rep, 1)
        if text:
            st.appointment["participant"].append({"actor": {"display": text}, "status": "accepted"})


def appointment_person(ctx: Context, seg: Segment, st: State) -> None:
    """AIP-3 (personnel resource, XCN) -> participant.actor."""
    if st.appointment is None:
        return
    refs = [dt.xcn(ctx, rep) for rep in dt.reps(ctx, seg, 3)]
    for ref in refs:
        if ref:
            st.appointment["participant"].append({"actor": ref, "status": "accepted", "type": [
                {"coding": [{"system": PARTICIPATION, "code": "PPRF"}]}]})


def appointment_location(ctx: Context, seg: Segment, st: State) -> None:
    """AIL-3 (location resource, PL) -> participant.actor (a Location named by display)."""
    if st.appointment is None:
        return
    rep = dt.first(ctx, seg, 3)
    text = " ".join(p for p in (dt.leaf(rep, c) for c in (4, 1, 2, 3)) if p)
    if text:
        st.appointment["participant"].append({"actor": {"display": text}, "status": "accepted"})


def _finish_appointment(ctx: Context, st: State) -> None:
    appt = st.appointment
    if appt is None:
        return
    if st.patient:
        appt["participant"].insert(0, {"actor": {"reference": st.patient}, "status": "accepted"})
    if not appt["participant"]:
        raise MappingError(REQUIRED_FIELD_MISSING, "appointment without patient nor resources", "PID", 3)
    if "end" in appt and "start" not in appt:
        del appt["end"]
    if "minutesDuration" in appt:
        appt["minutesDuration"] = int(appt["minutesDuration"])
        if appt["minutesDuration"] <= 0:
            del appt["minutesDuration"]


# -- VXU ------------------------------------------------------------------------------------------
def vaccination_order(ctx: Context, seg: Segment, st: State) -> None:
    """ORC of a VXU: its filler number (ORC-3) identifies the RXA that follows."""
    st.vaccination_orc = seg
    st.immunization = None


def immunization(ctx: Context, seg: Segment, st: State) -> None:
    subject = require_patient(st, "RXA")
    res: dict[str, Any] = {"resourceType": "Immunization"}
    ctx.specs["RXA"].apply(ctx, seg, res)
    filler = placer = None
    if st.vaccination_orc is not None:
        # IG ORC[Immunization]: ORC-2 placer and ORC-3 filler numbers are the Immunization's
        placer = dt.ei(ctx, dt.first(ctx, st.vaccination_orc, 2), "placer")
        filler = dt.ei(ctx, dt.first(ctx, st.vaccination_orc, 3), "immunization")
    if placer:
        placer["type"] = ctx.identifier_type("PLAC")
        res["identifier"] = [placer]
    vaccine = (res["vaccineCode"].get("coding") or [{}])[0]
    if filler:
        filler["type"] = ctx.identifier_type("FILL")
        res.setdefault("identifier", []).append(filler)
        res["id"] = identity.resource_id("Immunization", filler["system"], f"{filler['value']}|{vaccine.get('code', '')}")
        if f"Immunization/{res['id']}" in ctx.resources:
            # one order number for several administrations of one vaccine: the date tells them apart
            ctx.warn("RXA: ORC-3 and vaccine repeat in one message; immunization id uses RXA-3")
            res["id"] = identity.resource_id("Immunization", filler["system"],
                                             f"{filler['value']}|{vaccine.get('code', '')}|{res['occurrenceDateTime']}")
    else:
        res["id"] = identity.resource_id("Immunization", subject,
                                         f"{res['occurrenceDateTime']}|{vaccine.get('system', '')}|{vaccine.get('code', '')}")
    action = (seg.get(21) or "").strip().upper()
    completion = (seg.get(20) or "").strip().upper()
    res["status"] = "entered-in-error" if action == "D" else ctx.tables["immunization_status"].get(completion, "completed")
    if res["status"] != "not-done":
        res.pop("statusReason", None)
    dose = dt.number(seg.get(6))
    if dose is not None and dose != 999:
        res["doseQuantity"] = dt.quantity(ctx, dose, dt.first(ctx, seg, 7) if seg.get(7) else None)
    source = seg.get(9)
    if source in ("00", "01"):
        res["primarySource"] = source == "00"
    manufacturer = dt.leaf(dt.first(ctx, seg, 17), 2) or dt.leaf(dt.first(ctx, seg, 17), 1)
    if manufacturer:
        res["manufacturer"] = {"display": manufacturer}
    for rep in dt.reps(ctx, seg, 10):
        ref = dt.xcn(ctx, rep)
        if ref:
            res.setdefault("performer", []).append({"actor": ref, "function": {"coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v2-0443", "code": "AP"}]}})
    res["patient"] = {"reference": subject}
    if st.encounter:
        res["encounter"] = {"reference": st.encounter}
    st.immunization = res
    st.last = res
    ctx.add(res)


def immunization_route(ctx: Context, seg: Segment, st: State) -> None:
    if st.immunization is not None:
        ctx.specs["RXR"].apply(ctx, seg, st.immunization)
