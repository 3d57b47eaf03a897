"""OBX-5 by value type (OBX-2) -> Observation.value[x]; OBX-7 ranges; OBX-8 flags.

HL7 V2-to-FHIR IG "Segment OBX to Observation" (value[x] by OBX-2) and v2.5 chapter 7,
section 7.4.2. FHIR R4 Observation.value[x] has no Attachment (that is R5): ED values go to
the report's ``presentedForm`` (or the DocumentReference of an MDM) instead.
"""

from __future__ import annotations

import re
from typing import Any

from adapters.hl7v2 import Repetition, Segment
from terminology import urls

from . import datatypes as dt
from .context import Context

_COMPARATOR = re.compile(r"^\s*(<=|>=|<|>)\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")
_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:-|–|~|—)\s*([+-]?\d+(?:\.\d+)?)\s*$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.\d+)?(?:[+-]\d{4})?$")


def text_of(ctx: Context, rep: Repetition) -> str:
    """A text value as sent: the whole repetition unescaped (an unescaped ``^`` is kept)."""
    return ctx.msg.delimiters.unescape(rep.raw, ctx.msg.charset)


def _texts(ctx: Context, seg: Segment) -> str | None:
    parts = [text_of(ctx, r) for r in dt.reps(ctx, seg, 5)]
    text = "\n".join(parts).strip()
    return text if text and text != '""' else None


def _quantity(ctx: Context, seg: Segment, value) -> dict:
    unit = seg.raw_field(6)
    return dt.quantity(ctx, value, dt.first(ctx, seg, 6) if unit and unit != '""' else None)


def structured_numeric(ctx: Context, seg: Segment, rep: Repetition) -> tuple[str, Any] | None:
    """SN (section 2A.3.72): comparator ^ num1 ^ separator/suffix ^ num2."""
    comp, n1, sep, n2 = (dt.leaf(rep, i) for i in (1, 2, 3, 4))
    v1, v2 = dt.number(n1), dt.number(n2)
    if sep in (":", "/") and v1 is not None and v2 is not None:
        return "valueRatio", {"numerator": {"value": v1}, "denominator": {"value": v2}}
    if sep == "-" and v1 is not None and v2 is not None:
        return "valueRange", {"low": _quantity(ctx, seg, v1), "high": _quantity(ctx, seg, v2)}
    if v1 is not None and not sep and v2 is None:
        q = _quantity(ctx, seg, v1)
        if comp in ("<", ">", "<=", ">="):
            q = {"value": v1, "comparator": comp, **{k: v for k, v in q.items() if k != "value"}}
        elif comp not in (None, "="):
            return "valueString", f"{comp}{n1}"
        return "valueQuantity", q
    text = "".join(p for p in (comp, n1, sep, n2) if p)
    return ("valueString", text) if text else None


def value(ctx: Context, seg: Segment, vtype: str | None) -> tuple[str, Any] | None:
    """(element name, FHIR value) of OBX-5, or None when OBX-5 is empty."""
    vt = (vtype or "").upper()
    if vt == "NM":
        # most results: one number, no delimiter nor escape in the field, so the leaf is the field
        f = seg.fields
        raw = f[5] if len(f) > 5 else ""
        if raw and ctx.delims.is_plain(raw):
            text = raw.strip()
            n = dt.number(text) if text != '""' else None
            if n is not None:
                return "valueQuantity", _quantity(ctx, seg, n)
    values = dt.reps(ctx, seg, 5)
    if not values:
        return None
    rep = values[0]
    if vt in ("NM", "SN") and len(values) > 1:
        ctx.warn(f"OBX {seg.get(1) or ''}: OBX-5 of type {vt} repeats; only the first value is mapped")
    if vt == "NM":
        n = dt.number(dt.leaf(rep))
        if n is not None:
            return "valueQuantity", _quantity(ctx, seg, n)
        m = _COMPARATOR.match(dt.leaf(rep) or "")
        if m:
            q = _quantity(ctx, seg, dt.number(m.group(2)))
            return "valueQuantity", {"value": q.pop("value"), "comparator": m.group(1), **q}
        ctx.warn(f"OBX-5 of type NM is not a number: kept as text")
        t = _texts(ctx, seg)
        return ("valueString", t) if t else None
    if vt == "SN":
        return structured_numeric(ctx, seg, rep)
    if vt in ("CE", "CWE", "CNE", "CF"):
        cc = dt.cwe(ctx, rep, local_kind="result")
        return ("valueCodeableConcept", cc) if cc else None
    if vt in ("IS", "ID"):
        code = dt.leaf(rep)
        return ("valueCodeableConcept", {"coding": [{"code": code}], "text": code}) if code else None
    if vt == "DT":
        d = dt.dtm(ctx, dt.leaf(rep), "date", where=("OBX", 5))
        return ("valueDateTime", d) if d else None
    if vt in ("TS", "DTM"):
        d = dt.dtm(ctx, dt.leaf(rep), "dateTime", where=("OBX", 5))
        return ("valueDateTime", d) if d else None
    if vt == "TM":
        m = _TIME.match(dt.leaf(rep) or "")
        if m and int(m.group(1)) < 24:
            return "valueTime", f"{m.group(1)}:{m.group(2) or '00'}:{m.group(3) or '00'}"
        ctx.warn("OBX-5 of type TM is not a time: kept as text")
    if vt not in ("ST", "TX", "FT", "TM", ""):
        ctx.warn(f"OBX-5 of type {vt} mapped as text")
    t = _texts(ctx, seg)
    if t and vt not in ("ST", "TX", "FT"):
        t = t.replace(ctx.msg.delimiters.component, " ").strip()
    return ("valueString", t) if t else None


def reference_range(ctx: Context, seg: Segment) -> list[dict] | None:
    """OBX-7 -> referenceRange: ``a-b`` -> low/high, ``<b``/``<=b`` -> high, ``>a``/``>=a`` -> low,
    with the OBX-6 unit; the text as sent is always kept."""
    raw = seg.get(7)
    if not raw or raw == '""' or not raw.strip():
        return None
    key = ("range", ctx.org, ctx.profile, ctx.reading, raw, seg.raw_field(6))
    found = ctx.cache.get(key)
    if found is None:
        found = ctx.cache[key] = _range(ctx, seg, raw)
    return [{k: (dict(v) if isinstance(v, dict) else v) for k, v in found.items()}]


def _range(ctx: Context, seg: Segment, raw: str) -> dict:
    text = raw.strip()
    rng: dict[str, Any] = {}
    m = _RANGE.match(text)
    if m:
        rng["low"] = _quantity(ctx, seg, dt.number(m.group(1)))
        rng["high"] = _quantity(ctx, seg, dt.number(m.group(2)))
    else:
        m = _COMPARATOR.match(text)
        if m:
            rng["high" if m.group(1).startswith("<") else "low"] = _quantity(ctx, seg, dt.number(m.group(2)))
    rng["text"] = text
    return rng


def interpretation(ctx: Context, seg: Segment) -> list[dict] | None:
    """OBX-8 (repeating, table 0078) -> interpretation, in v3 ObservationInterpretation.

    The codings are memoized per sent text (a few flags recur); callers get fresh dicts."""
    raw = seg.raw_field(8)
    if not raw or raw == '""':
        return None
    key = ("interpretation", ctx.reading, raw)
    codings = ctx.cache.get(key)
    if codings is None:
        codings = ctx.cache[key] = tuple(_interpretation_codings(ctx, seg))
    return [{"coding": [dict(c)]} for c in codings] or None


def _interpretation_codings(ctx: Context, seg: Segment):
    for rep in dt.reps(ctx, seg, 8):
        code = dt.leaf(rep)
        if not code:
            continue
        found = ctx.translate("0078", code)
        if found:
            coding = {"system": found[0], "code": found[1]}
            if found[2]:
                coding["display"] = found[2]
        else:                       # a flag the ConceptMap v2-0078 does not know: kept as sent
            coding = {"system": urls.v2_table("0078"), "code": code}
        yield coding
