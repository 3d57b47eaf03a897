"""HL7 v2 datatypes -> FHIR R4 datatypes (HL7 V2-to-FHIR IG, "Data Type Maps").

Each mapper takes the :class:`~mappings.context.Context` and one field repetition
(:class:`adapters.hl7v2.Repetition`) and returns a FHIR JSON value, or None when there is nothing
to map. The HL7 null ``""`` (v2.5 section 2.5.3) maps to None: with a full-resource PUT an
absent element is a deleted one. Maps: CX -> Identifier, XPN -> HumanName, XAD -> Address,
XTN -> ContactPoint, CWE/CE/CNE -> CodeableConcept, DTM/TS/DT -> date/dateTime/instant,
XCN -> Reference(Practitioner), EI -> Identifier, NM/CQ -> Quantity.
"""

from __future__ import annotations

import math
import re
from typing import Any

from adapters.hl7v2 import HL7ParseError, Repetition, Segment, parse_dtm
from terminology import urls

from . import identity
from .context import Context
from .errors import DATA_TYPE_ERROR, MappingError

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_V2_TABLE = re.compile(r"^HL7(\d{4})$", re.I)
UCUM = urls.UCUM


class Rep:
    """One field repetition split into components once (the mappers read many leaves of it).

    Same reading rules as :class:`adapters.hl7v2.Repetition` (raw escaped text, unescaped
    leaves), without re-splitting the text for every leaf. Split on the first read: a mapper
    whose result is memoized by the raw text reads no leaf.
    """

    __slots__ = ("raw", "_comps", "_d", "_cs")

    def __init__(self, raw: str, delims, charset: str | None):
        self.raw = raw
        self._comps = None
        self._d = delims
        self._cs = charset

    def get(self, comp: int = 1, sub: int = 1) -> str | None:
        comps = self._comps
        if comps is None:
            raw = self.raw
            comps = self._comps = raw.split(self._d.component) if raw else []
        if comp > len(comps):
            return None
        c = comps[comp - 1]
        if not c:
            return None
        d = self._d
        if d.subcomponent in c:
            parts = c.split(d.subcomponent)
            if sub > len(parts):
                return None
            c = parts[sub - 1]
            if not c:
                return None
        elif sub != 1:
            return None
        if d.escape in c:
            return d.unescape(c, self._cs) or None
        return c


def reps(ctx: Context, seg: Segment, n: int) -> list[Rep]:
    """The repetitions of field ``n`` (none for an empty field or the HL7 null ``""``)."""
    f = seg.fields
    raw = f[n] if 0 < n < len(f) else ""
    if not raw or raw == '""':
        return []
    d = ctx.delims
    cs = ctx.charset
    if d.repetition not in raw:
        return [Rep(raw, d, cs)]
    return [Rep(r, d, cs) for r in raw.split(d.repetition)]


def first(ctx: Context, seg: Segment, n: int) -> Rep:
    """The first repetition of field ``n`` (an empty one when absent)."""
    f = seg.fields
    raw = f[n] if 0 < n < len(f) else ""
    if raw == '""':
        raw = ""
    return first_of(ctx, raw)


def first_of(ctx: Context, raw: str) -> Rep:
    """The first repetition of a field's raw text (not the HL7 null: the caller tells it apart)."""
    d = ctx.delims
    if d.repetition in raw:
        raw = raw.split(d.repetition, 1)[0]
    return Rep(raw, d, ctx.charset)


def leaf_of(ctx: Context, raw: str, comp: int = 1) -> str | None:
    """``leaf(first_of(ctx, raw), comp)``, without building the repetition when the text has no
    delimiter nor escape (a code, a number, a timestamp: the leaf is the text)."""
    if not ctx.delims.is_plain(raw):
        return leaf(first_of(ctx, raw), comp)
    if comp != 1:
        return None
    v = raw.strip()
    return v if v and v != '""' else None


def leaf(rep: Repetition, comp: int = 1, sub: int = 1) -> str | None:
    """Stripped leaf value; None for empty and for the HL7 null ``""``."""
    v = rep.get(comp, sub)
    if v is None:
        return None
    v = v.strip()
    return v if v and v != '""' else None


def has_cjk(text: str | None) -> bool:
    return bool(text) and _CJK.search(text) is not None


def number(text: str | None) -> int | float | None:
    """A FHIR decimal from an HL7 NM (None when not a number)."""
    if text is None:
        return None
    t = text.strip()
    m = _NUMBER.match(t)
    if m is None:
        return None
    if m.group(3) is None and "." not in t and len(t) <= 19:   # an integer (longer: past int64 and
        return int(t)                                          # Python's int() digit limit)
    value = float(t)
    return value if math.isfinite(value) else None


# -- date/time ---------------------------------------------------------------------------------
def dtm(ctx: Context, text: str | None, as_: str = "dateTime", *, where: tuple[str, int] | None = None,
        required: bool = False) -> str | None:
    """DTM/TS/DT text -> FHIR ``date``, ``dateTime`` (precision kept, offset from the value or the
    facility's timezone) or ``instant``. An unreadable value is a 102 error when ``required``,
    otherwise a warning and None."""
    if not text or text == '""':
        return None
    key = ("dtm", text, as_, ctx.tz)
    found = ctx.cache.get(key)
    if found is not None:
        return found
    try:
        value = parse_dtm(text.strip())
        if value.year == 0:                      # FHIR dates start at year 1 (datatypes.html#date)
            raise ValueError("year 0000")
        if as_ == "date":
            out = value.to_fhir_date()
        elif as_ == "instant":
            out = value.to_fhir_instant(ctx.tz)
        else:
            out = value.to_fhir_datetime(ctx.tz)
        ctx.cache[key] = out
        return out
    except (HL7ParseError, ValueError):
        label = f"{where[0]}-{where[1]}" if where else "a date/time field"
        if required:
            raise MappingError(DATA_TYPE_ERROR, f"{label} {text!r} is not an HL7 date/time",
                               *(where or (None, None))) from None
        ctx.warn(f"{label}: unreadable date/time ignored")
        return None


def period(ctx: Context, start: str | None, end: str | None) -> dict | None:
    out = {}
    s = dtm(ctx, start)
    e = dtm(ctx, end)
    if s:
        out["start"] = s
    if e:
        out["end"] = e
    return out or None


# -- coded values --------------------------------------------------------------------------------
def coding_system(ctx: Context, name: str | None, table: str | None = None, local_kind: str = "code") -> str | None:
    """FHIR system URI for a table 0396 coding-system name (CWE.3)."""
    if not name:
        return urls.v2_table(table) if table else None
    own = ctx.profile.coding_systems.get(name)
    if own:
        return own
    t = ctx.tables
    system = t["coding_systems"].get(name) or t["coding_systems"].get(name.upper())
    if system:
        return system
    m = _V2_TABLE.match(name)
    if m:
        return urls.v2_table(m.group(1))
    if name.upper() in t["local_coding_systems"] or name.upper().startswith("99"):
        return urls.local_code_system(ctx.org, local_kind, ctx.base)
    if name.startswith(("http://", "https://", "urn:")):
        return name
    if re.fullmatch(r"[0-2](\.\d+)+", name):
        return f"urn:oid:{name}"
    # a named table of the sender's own: keep it apart from its other local codes
    return urls.local_code_system(ctx.org, re.sub(r"[^A-Za-z0-9\-.]", "-", name), ctx.base)


def _coding(ctx: Context, code: str | None, display: str | None, name: str | None, version: str | None,
            table: str | None, local_kind: str) -> dict | None:
    if not code and not display:
        return None
    c: dict[str, Any] = {}
    system = coding_system(ctx, name, table, local_kind)
    if system:
        c["system"] = system
    if version:
        c["version"] = version
    if code:
        c["code"] = code
    if display:
        c["display"] = display
    return c if code else None


def cwe(ctx: Context, rep: Repetition, table: str | None = None, local_kind: str = "code",
        standardize: bool = False, path: str | None = None) -> dict | None:
    """CWE/CE/CNE -> CodeableConcept: the primary and alternate codings as sent (never dropped),
    ``text`` from CWE.9 (original text) or the first display; with ``standardize``, standard
    codings (LOINC, regional catalogue) from the organization's local code map are added.

    Results are memoized per sent text (codes repeat across messages); callers get a copy."""
    key = ("cwe", ctx.org, ctx.profile, ctx.reading, rep.raw, table, local_kind, standardize, path)
    cached = ctx.cache.get(key)
    if cached is None:
        cached = ctx.cache[key] = _cwe(ctx, rep, table, local_kind, standardize, path) or {}
    if not cached:
        return None
    out = dict(cached)
    if "coding" in out:
        out["coding"] = [dict(c) for c in out["coding"]]
    return out


def _cwe(ctx: Context, rep: Repetition, table: str | None, local_kind: str, standardize: bool,
         path: str | None) -> dict | None:
    code1, disp1, name1 = leaf(rep, 1), leaf(rep, 2), leaf(rep, 3)
    if path and code1 and path in ctx.profile.code_tables:
        code1 = ctx.profile.code_tables[path].get(code1, code1)
    codings = []
    c1 = _coding(ctx, code1, disp1, name1, leaf(rep, 7), table, local_kind)
    if c1:
        codings.append(c1)
    c2 = _coding(ctx, leaf(rep, 4), leaf(rep, 5), leaf(rep, 6), leaf(rep, 8), None, local_kind)
    if c2 and c2 != c1:
        codings.append(c2)
    if table and c1 is not None and c1.get("system") == urls.v2_table(table):
        # the standard coding beside the v2 one (terminology ConceptMap v2-<table>-to-…)
        found = ctx.translate(table, c1["code"])
        if found and found[0] != c1["system"]:
            codings.append({"system": found[0], "code": found[1], **({"display": found[2]} if found[2] else {})})
    text = leaf(rep, 9) or disp1 or (leaf(rep, 5) if not c1 else None)
    if not codings and not text:
        return None
    cc: dict[str, Any] = {}
    if codings:
        cc["coding"] = codings
    if text:
        cc["text"] = text
    if standardize and codings:
        key = ("std", ctx.org, tuple((c.get("system"), c.get("code")) for c in codings))
        added = ctx.cache.get(key)
        if added is None:
            added = ctx.cache[key] = ctx.term.standardize(cc, ctx.org)["coding"][len(codings):]
        if added:
            cc["coding"] = codings + [dict(c) for c in added]
    return cc


def coded(ctx: Context, value: str | None, fhir_map: str, table: str | None = None,
          systems: tuple[str, ...] = (), path: str | None = None) -> str | None:
    """An ID/IS value -> a FHIR code: through the profile's local table for ``path``, then the
    terminology's ConceptMap of v2 ``table``, then those of ``systems`` (e.g. GB/T 2261.1 for
    sex codes 1/2 that Chinese HIS send), then the ``tables.yaml`` map ``fhir_map``."""
    if value is None:
        return None
    if path and path in ctx.profile.code_tables:
        value = ctx.profile.code_tables[path].get(value, value)
    if table:
        found = ctx.translate(table, value)
        if found:
            return found[1]
    for system in systems:
        found = ctx.translate_system(system, value)
        if found:
            return found
    fallback = ctx.tables[fhir_map]
    return fallback.get(value) or fallback.get(value.upper())


def local_value(ctx: Context, value: str | None, path: str | None) -> str | None:
    """A value through the facility profile's local code table for ``path`` (if any)."""
    if value is not None and path and path in ctx.profile.code_tables:
        return ctx.profile.code_tables[path].get(value, value)
    return value


def v2_concept(ctx: Context, value: str | None, table: str) -> dict | None:
    """A bare table value as a CodeableConcept in the v2 table's code system."""
    if not value:
        return None
    system = urls.v2_table(table)
    c = {"system": system, "code": value}
    d = ctx.display(system, value)
    if d:
        c["display"] = d
    return {"coding": [c]}


# -- identifiers ----------------------------------------------------------------------------------
def cx(ctx: Context, rep: Repetition, default_kind: str = "mrn") -> dict | None:
    """CX -> Identifier (system: :meth:`Context.identifier_system`; type: CX.5; period CX.7/8)."""
    value = leaf(rep, 1)
    if not value:
        return None
    type_code = leaf(rep, 5)
    ident: dict[str, Any] = {"system": ctx.identifier_system(leaf(rep, 4, 1), leaf(rep, 4, 2), type_code,
                                                             default_kind), "value": value}
    if type_code:
        ident["type"] = ctx.identifier_type(type_code)
    p = period(ctx, leaf(rep, 7), leaf(rep, 8))
    if p:
        ident["period"] = p
    return ident


def ei(ctx: Context, rep: Repetition, kind: str, type_code: str | None = None) -> dict | None:
    """EI -> Identifier qualified by the organization EI.2/EI.3 names (default: the sender)."""
    value = leaf(rep, 1)
    if not value:
        return None
    org = ctx.organization_of(leaf(rep, 2), leaf(rep, 3))
    system = identity.org_system(org, kind, ctx.base) if org else f"urn:oid:{leaf(rep, 3)}"
    ident: dict[str, Any] = {"system": system, "value": value}
    if type_code:
        ident["type"] = ctx.identifier_type(type_code)
    return ident


def plain_identifier(ctx: Context, value: str | None, kind: str, type_code: str | None) -> dict | None:
    """A bare identifier value (PID-19 SSN, PID-20 DLN.1) in ``org_system(sender, kind)``."""
    if not value:
        return None
    ident: dict[str, Any] = {"system": identity.org_system(ctx.org, kind, ctx.base), "value": value}
    if type_code:
        ident["type"] = ctx.identifier_type(type_code)
    return ident


# -- people ----------------------------------------------------------------------------------------
def split_chinese(name: str) -> tuple[str, str | None]:
    """(family, given) of a Chinese name written as one string: the first character, or two for
    a compound surname (欧阳, 司马 …) when the name has at least three characters."""
    name = name.replace(" ", "").replace("\u3000", "")
    if len(name) >= 3 and name[:2] in _compound():
        return name[:2], name[2:]
    if len(name) >= 2:
        return name[:1], name[1:]
    return name, None


def _compound() -> frozenset[str]:
    global _COMPOUND
    if _COMPOUND is None:
        from .tables import tables
        _COMPOUND = frozenset(tables()["compound_surnames"])
    return _COMPOUND


_COMPOUND: frozenset[str] | None = None


def xpn(ctx: Context, rep: Repetition, family_comp: int = 1, offset: int = 0) -> dict | None:
    """XPN -> HumanName. Chinese names keep ``text`` as written (family + given, no space); a
    name sent whole in XPN.1 is split into family/given (compound surnames kept together).
    ``offset`` shifts the components for XCN (whose name starts at component 2)."""
    family = leaf(rep, 1 + offset, 1) if offset == 0 else leaf(rep, 2)
    given1 = leaf(rep, 2 + offset)
    middle = leaf(rep, 3 + offset)
    suffix = leaf(rep, 4 + offset)
    prefix = leaf(rep, 5 + offset)
    degree = leaf(rep, 6 + offset)
    use_code = leaf(rep, 7) if offset == 0 else None
    if not family and not given1:
        return None
    name: dict[str, Any] = {}
    chinese = has_cjk(family) or has_cjk(given1)
    if chinese:
        if family and not given1:
            family, given1 = split_chinese(family)
        name["text"] = (family or "") + (given1 or "") + (middle or "")
    if use_code:
        use = ctx.tables["name_use"].get(use_code)
        if use:
            name["use"] = use
    if family:
        name["family"] = family
    given = [g for g in (given1, middle) if g]
    if given:
        name["given"] = given
    if prefix:
        name["prefix"] = [prefix]
    suffixes = [s for s in (suffix, degree) if s]
    if suffixes:
        name["suffix"] = suffixes
    return name


def xad(ctx: Context, rep: Repetition) -> dict | None:
    """XAD -> Address (line from XAD.1.1 and XAD.2, district from XAD.9, use/type from XAD.7)."""
    line = [v for v in (leaf(rep, 1, 1), leaf(rep, 2)) if v]
    addr: dict[str, Any] = {}
    kind = leaf(rep, 7)
    if kind:
        use = ctx.tables["address_use"].get(kind)
        typ = ctx.tables["address_type"].get(kind)
        if use:
            addr["use"] = use
        if typ:
            addr["type"] = typ
    if line:
        addr["line"] = line
    for comp, key in ((3, "city"), (9, "district"), (4, "state"), (5, "postalCode"), (6, "country")):
        v = leaf(rep, comp)
        if v:
            addr[key] = v
    if not any(k in addr for k in ("line", "city", "district", "state", "postalCode", "country")):
        return None
    return addr


def xtn(ctx: Context, rep: Repetition, default_use: str | None = None) -> dict | None:
    """XTN -> ContactPoint: value from XTN.1, else the e-mail (XTN.4), else +country area local
    (XTN.5-7) with extension XTN.8; system from XTN.3, use from XTN.2."""
    use_code, equip = leaf(rep, 2), leaf(rep, 3)
    email = leaf(rep, 4)
    t = ctx.tables
    system = t["telecom_system"].get(equip or "") or t["telecom_use_system"].get(use_code or "")
    value = leaf(rep, 1)
    if email and (system == "email" or not value):
        value, system = email, "email"
    if not value:
        parts = [("+" + leaf(rep, 5)) if leaf(rep, 5) else None, leaf(rep, 6), leaf(rep, 7)]
        value = " ".join(p for p in parts if p) or None
        if value and leaf(rep, 8):
            value += f" ext. {leaf(rep, 8)}"
    if not value:
        return None
    cp: dict[str, Any] = {"system": system or "phone", "value": value}
    use = t["telecom_equipment_use"].get(equip or "") or t["telecom_use"].get(use_code or "") or default_use
    if use:
        cp["use"] = use
    return cp


def xcn(ctx: Context, rep: Repetition) -> dict | None:
    """XCN -> Reference(Practitioner); the Practitioner (id from XCN.1 qualified by XCN.9's
    organization, else from the name) is added to the bundle."""
    pid = leaf(rep, 1)
    name = xpn(ctx, rep, offset=1)
    if not pid and not name:
        return None
    org = ctx.organization_of(leaf(rep, 9, 1), leaf(rep, 9, 2)) or ctx.org
    system = identity.org_system(org, "practitioner", ctx.base)
    res: dict[str, Any] = {"resourceType": "Practitioner"}
    if pid:
        res["id"] = identity.resource_id("Practitioner", system, pid)
        res["identifier"] = [{"system": system, "value": pid}]
    else:
        key = "|".join([name.get("family", "")] + name.get("given", []))
        res["id"] = identity.resource_id("Practitioner", system + "#name", key)
    if name:
        res["name"] = [name]
    ref = {"reference": ctx.add(res)}
    if name:
        ref["display"] = name.get("text") or " ".join(name.get("given", []) + [name.get("family", "")]).strip()
    return ref


# -- quantities -----------------------------------------------------------------------------------
def quantity(ctx: Context, value: int | float, unit_rep: Rep | None) -> dict:
    """A Quantity with the unit of a CWE (UCUM system when the unit is valid UCUM)."""
    if unit_rep is None:
        return {"value": value}
    memo = ctx.sender_memo("unit")   # local unit systems are the sender's
    unit = memo.get(unit_rep.raw)
    if unit is None:
        unit = memo[unit_rep.raw] = _unit(ctx, unit_rep)
    return {"value": value, **unit}


def _unit(ctx: Context, unit_rep: Rep) -> dict:
    q: dict[str, Any] = {}
    code, text, name = leaf(unit_rep, 1), leaf(unit_rep, 2), leaf(unit_rep, 3)
    if code or text:
        q["unit"] = text if (text and not code) else code
        ucum_code = ucum_of(ctx, code)
        if ucum_code is not None and (not name or coding_system(ctx, name) == UCUM):
            q["system"] = UCUM
            q["code"] = ucum_code
        elif code and name:
            system = coding_system(ctx, name, local_kind="unit")
            if system:
                q["system"] = system
                q["code"] = code
    return q


def ucum_of(ctx: Context, code: str | None) -> str | None:
    """The UCUM spelling of a unit (``10^9/L`` -> ``10*9/L``), or None when it is not UCUM."""
    if not code:
        return None
    key = ("ucum", code)
    if key not in ctx.cache:
        from terminology import ucum
        out = None
        try:
            if ucum.is_valid(code):
                out = code
            else:
                local = ucum.from_local(code)
                out = local if local and ucum.is_valid(local) else None
        except Exception:  # noqa: BLE001 - from_local raises for units it cannot read
            out = None
        ctx.cache[key] = out
    return ctx.cache[key]
