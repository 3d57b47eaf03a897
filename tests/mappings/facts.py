"""Clinical facts of a FHIR bundle, for comparing Yilian's output with other converters' expected
bundles field by field while ignoring ids, metadata, references' targets and identifier systems
(each converter mints its own)."""

from __future__ import annotations

from datetime import datetime, timezone

Fact = tuple


def _when(text: str | None) -> str | None:
    """Dates as sent; date-times as UTC instants to the minute when they carry an offset, else
    their wall-clock time (converters differ in how they render the same moment)."""
    if not text:
        return None
    if len(text) <= 10:
        return text
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M")


def _code(cc: dict | None) -> str | None:
    if not cc:
        return None
    for c in cc.get("coding", []):
        if c.get("code"):
            return c["code"]
    return cc.get("text")


def _num(v) -> str | None:
    if v is None:
        return None
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return str(v)


def _qty(q: dict | None) -> tuple | None:
    if not q:
        return None
    return (_num(q.get("value")), q.get("comparator"))


def _unit(q: dict | None) -> str | None:
    """The unit's code, else its text; "µ" and "u" are one spelling (UCUM writes "u")."""
    if not q:
        return None
    unit = q.get("code") or q.get("unit")
    return unit.replace("µ", "u").replace("μ", "u") if unit else None


def _value(obs: dict) -> tuple | None:
    if "valueQuantity" in obs:
        return ("quantity", _qty(obs["valueQuantity"]))
    if "valueString" in obs:
        return ("string", " ".join(obs["valueString"].split()))
    if "valueCodeableConcept" in obs:
        return ("coded", _code(obs["valueCodeableConcept"]))
    if "valueDateTime" in obs:
        return ("datetime", _when(obs["valueDateTime"]))
    if "valueRatio" in obs:
        r = obs["valueRatio"]
        return ("ratio", _qty(r.get("numerator")), _qty(r.get("denominator")))
    if "valueRange" in obs:
        r = obs["valueRange"]
        return ("range", _qty(r.get("low")), _qty(r.get("high")))
    if "valueTime" in obs:
        return ("time", obs["valueTime"])
    return None


def facts(bundle: dict) -> set[Fact]:
    """The comparable facts: patient identifiers, names, birth date, sex; encounter class and
    period; observation codes, values, units, ranges, flags, statuses; report codes, statuses and
    result counts; order identifiers and codes; immunization, appointment and document basics."""
    out: set[Fact] = set()
    for entry in bundle.get("entry", []):
        r = entry.get("resource") or {}
        t = r.get("resourceType")
        if t == "Patient":
            if r.get("active") is False:
                continue
            for i in r.get("identifier", []):
                if i.get("value"):
                    out.add(("Patient.identifier", i["value"]))
            for n in r.get("name", []):
                if n.get("family") or n.get("given"):
                    out.add(("Patient.name", n.get("family"), tuple(n.get("given", []))))
            for k in ("birthDate", "gender"):
                if r.get(k):
                    out.add((f"Patient.{k}", r[k][:10]))
        elif t == "Encounter":
            if r.get("class", {}).get("code"):
                out.add(("Encounter.class", r["class"]["code"]))
            p = r.get("period", {})
            for k in ("start", "end"):
                if p.get(k):
                    out.add((f"Encounter.period.{k}", _when(p[k])))
        elif t == "Observation":
            code = _code(r.get("code"))
            out.add(("Observation.code", code))
            out.add(("Observation.status", code, r.get("status")))
            v = _value(r)
            if v:
                out.add(("Observation.value", code, v))
            if "valueQuantity" in r and _unit(r["valueQuantity"]):
                out.add(("Observation.unit", code, _unit(r["valueQuantity"])))
            for rr in r.get("referenceRange", []):
                if rr.get("low") or rr.get("high"):
                    out.add(("Observation.range", code, _qty(rr.get("low")), _qty(rr.get("high"))))
            for i in r.get("interpretation", []):
                out.add(("Observation.interpretation", code, _code(i)))
        elif t == "DiagnosticReport":
            code = _code(r.get("code"))
            out.add(("DiagnosticReport.code", code))
            out.add(("DiagnosticReport.status", code, r.get("status")))
            out.add(("DiagnosticReport.results", code, len(r.get("result", []))))
        elif t == "ServiceRequest":
            for i in r.get("identifier", []):
                if i.get("value"):
                    out.add(("ServiceRequest.identifier", i["value"]))
            if _code(r.get("code")):
                out.add(("ServiceRequest.code", _code(r.get("code"))))
        elif t == "Immunization":
            code = _code(r.get("vaccineCode"))
            out.add(("Immunization.vaccine", code))
            out.add(("Immunization.status", code, r.get("status")))
            if r.get("occurrenceDateTime"):
                out.add(("Immunization.occurrence", code, _when(r["occurrenceDateTime"])))
        elif t == "Appointment":
            out.add(("Appointment.status", r.get("status")))
            if r.get("start"):
                out.add(("Appointment.start", _when(r["start"])))
        elif t == "DocumentReference":
            out.add(("DocumentReference.type", _code(r.get("type"))))
            out.add(("DocumentReference.status", r.get("status")))
    return out
