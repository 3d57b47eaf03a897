"""Search index extraction: R4 JSON resource -> rows per search parameter type.

For every search parameter of the resource's type (``hub.fhir.search.registry``)
the FHIRPath expression is compiled once (``hub.fhir.search.fhirpath``; fhirpathpy
only as a fallback) and the selected JSON values are turned into index rows
following the matching rules of the FHIR R4 search page
(http://hl7.org/fhir/R4/search.html):

=============  ===========================================================================
``string``     ``(param, value_norm, value_exact)`` -- search.html#string.  HumanName: one
               row per family/given/prefix/suffix/text; Address: line, city, district,
               state, postalCode, country, text.  ``value_norm`` = :func:`normalize_string`.
``token``      ``(param, system, code, text_norm, type_system, type_code)`` --
               search.html#token.  Coding -> (system, code, display); CodeableConcept ->
               each coding + ``(None, None, text)``; Identifier -> (system, value,
               type.text [else type.coding[0].display], type.coding[0].system,
               type.coding[0].code); ContactPoint -> (None, value); code/string/uri/id ->
               (None, value); boolean -> (None, "true"/"false").
``reference``  ``(param, target_type, target_id, url, identifier_system, identifier_value)``
               -- search.html#reference, references.html.  See :func:`reference_rows`.
``date``       ``(param, low_us, high_us)`` inclusive microsecond range -- search.html#date.
               date/dateTime/instant at their precision (:func:`parse_date_range`);
               Period start..end with :data:`DATE_MIN_US`/:data:`DATE_MAX_US` for open
               ends; Timing: each event plus ``repeat.boundsPeriod``; other values skipped.
``number``     ``(param, value)`` -- search.html#number.
``quantity``   ``(param, value, system, code, unit)`` -- search.html#quantity.  Quantity,
               Age, Duration, Distance, Count, SimpleQuantity; Money ->
               (value, "urn:iso:std:iso:4217", currency, currency).  Range and SampledData
               are skipped (a range needs low/high columns, SampledData has no value).
``uri``        ``(param, uri)`` -- search.html#uri.
``composite``  ``(param, c1_system, c1_code, c2_system, c2_code, c2_number, c2_low_us,
               c2_high_us)`` -- search.html#composite; see :func:`_composite_rows`.
=============  ===========================================================================

Strings are clipped to the index columns' :data:`hub.storage.schema.INDEX_STR_MAX` characters
here, where they are made (a longer value is indexed, and found, by its beginning): slicing
the few strings that need it costs less than the ``substr()`` the INSERTs used to apply to
every string column of every row inside the write transaction.

Rows are de-duplicated (first-occurrence order is kept).  No rows are produced for
``_id`` and ``_lastUpdated`` (kept on the resource row), for ``special`` parameters
(``near``) or for parameters without an expression (``_text``, ``_content``,
``_query``).  Literal references must already be resolved by the caller
(transaction processing rewrites ``urn:uuid:`` references); ``resolve() is T``
filters are decided from the reference text (``Patient/1``) or ``Reference.type``.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date as _date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from hub.fhir.search.fhirpath import (
    REMEMBERED_TEXT_MAX,
    UnsupportedExpression,
    compile_expression,
    parse_literal_reference,
    required_paths,
)
from hub.fhir.search.registry import SearchParam, get_registry
from hub.storage.schema import INDEX_STR_MAX as _M

__all__ = [
    "DATE_MAX_US",
    "DATE_MIN_US",
    "IndexRows",
    "compile_all",
    "extract_index",
    "fallback_expressions",
    "normalize_string",
    "parse_date_range",
    "reference_rows",
    "rows_of_param",
    "stored_rows",
]

log = logging.getLogger(__name__)

DATE_MIN_US = -(2**63)
"""Low bound stored for a Period without ``start`` (open start)."""
DATE_MAX_US = 2**63 - 1
"""High bound stored for a Period without ``end`` (open/ongoing end)."""

ISO4217 = "urn:iso:std:iso:4217"
SKIPPED_PARAMS = frozenset({"_id", "_lastUpdated", "_text", "_content", "_query"})


@dataclass
class IndexRows:
    """The search index rows of one resource (the caller adds resource type and id)."""

    string: list[tuple[str, str, str]] = field(default_factory=list)
    token: list[tuple[str, str | None, str | None, str | None, str | None, str | None]] = field(default_factory=list)
    reference: list[tuple[str, str | None, str | None, str | None, str | None, str | None]] = field(default_factory=list)
    date: list[tuple[str, int, int]] = field(default_factory=list)
    number: list[tuple[str, float]] = field(default_factory=list)
    quantity: list[tuple[str, float, str | None, str | None, str | None]] = field(default_factory=list)
    uri: list[tuple[str, str]] = field(default_factory=list)
    composite: list[
        tuple[str, str | None, str | None, str | None, str | None, float | None, int | None, int | None]
    ] = field(default_factory=list)


# --------------------------------------------------------------------------- strings


@lru_cache(maxsize=65536)
def normalize_string(s: str) -> str:
    """Normalise text for string search (search.html#string: case- and accent-insensitive).

    Unicode NFKD, combining marks removed, then case-folded: ``"Ärztin Ｍüller"`` ->
    ``"arztin muller"``.  CJK text is unchanged apart from compatibility forms.
    """
    if s.isascii():
        return s.casefold()
    decomposed = unicodedata.normalize("NFKD", s)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


# --------------------------------------------------------------------------- dates

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_ONE_US = timedelta(microseconds=1)
_DAY_US = 86_400_000_000
_SEP_OK = frozenset(".Z+-")


def _day_start(y: str, m: str = "01", d: str = "01") -> int:
    if not (y.isdigit() and m.isdigit() and d.isdigit() and len(y) == 4 and len(m) == 2 and len(d) == 2):
        raise ValueError("bad date digits")
    return (_date(int(y), int(m), int(d)).toordinal() - _EPOCH_ORDINAL) * _DAY_US


@lru_cache(maxsize=65536)
def parse_date_range(value: str) -> tuple[int, int]:
    """Inclusive ``(low_us, high_us)`` range, in microseconds since 1970-01-01T00:00:00Z,
    covered by a FHIR date/dateTime/instant at its precision (search.html#date,
    datatypes.html#dateTime).

    ``"2020"`` -> 2020-01-01T00:00:00.000000Z .. 2020-12-31T23:59:59.999999Z;
    ``"2020-03-04T10:00:00+01:00"`` -> 09:00:00.000000Z .. 09:00:00.999999Z;
    ``"2020-03-04T10:00:00.5Z"`` covers 10:00:00.500000 .. 10:00:00.599999.
    Values without a time zone are taken as UTC.  A time without seconds
    (``2020-03-04T10:00``, allowed in search values) covers the minute.  Search
    prefixes (``ge``...) must be removed by the caller.  Raises ``ValueError`` for
    anything else (including ``24:00`` and the leap second ``:60``).
    """
    n = len(value)
    try:
        if n == 4:
            lo = _day_start(value)
            hi_days = _date(int(value), 12, 31).toordinal() + 1 - _EPOCH_ORDINAL
            return lo, hi_days * _DAY_US - 1
        if n == 7 and value[4] == "-":
            lo = _day_start(value[:4], value[5:7])
            y, m = int(value[:4]), int(value[5:7])
            last = (_date(y, 12, 31) if m == 12 else _date(y, m + 1, 1) - timedelta(days=1))
            return lo, (last.toordinal() + 1 - _EPOCH_ORDINAL) * _DAY_US - 1
        if n == 10 and value[4] == "-" and value[7] == "-":
            lo = _day_start(value[:4], value[5:7], value[8:10])
            return lo, lo + _DAY_US - 1
        if n >= 16 and value[10] == "T" and value[4] == "-" and value[7] == "-" and value[13] == ":":
            if n == 16 or value[16] != ":":
                width = 60_000_000  # minutes precision (search values only)
                rest = value[16:]
            else:
                rest = value[19:]
                width = 1_000_000
                if rest[:1] == ".":
                    digits = 0
                    for ch in rest[1:]:
                        if not ch.isdigit():
                            break
                        digits += 1
                    if digits == 0:
                        raise ValueError("empty fraction")
                    width = 10 ** (6 - digits) if digits < 6 else 1
                    rest = rest[1 + digits:]
            if rest and (rest[0] not in _SEP_OK or rest != "Z" and len(rest) != 6):
                raise ValueError("bad time zone")
            dt = datetime.fromisoformat(value)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            lo = (dt - _EPOCH) // _ONE_US
            return lo, lo + width - 1
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a FHIR date/dateTime: {value!r}") from exc
    raise ValueError(f"not a FHIR date/dateTime: {value!r}")


def _date_rows(code: str, values: list, out: list) -> None:
    for v in values:
        if type(v) is str:
            try:
                lo, hi = parse_date_range(v)
            except ValueError:
                continue  # a string/time value in a choice, or an invalid date
            out.append((code, lo, hi))
        elif type(v) is dict:
            if "event" in v or "repeat" in v:
                # Timing: each event, plus the outer bounds (search.html#date)
                _date_rows(code, [e for e in v.get("event") or () if type(e) is str], out)
                rep = v.get("repeat")
                if type(rep) is dict and type(rep.get("boundsPeriod")) is dict:
                    _date_rows(code, [rep["boundsPeriod"]], out)
                continue
            start, end = v.get("start"), v.get("end")
            if start is None and end is None:
                continue  # Age, Range, Duration ...: not a date
            try:
                lo = parse_date_range(start)[0] if type(start) is str else DATE_MIN_US
                hi = parse_date_range(end)[1] if type(end) is str else DATE_MAX_US
            except ValueError:
                continue
            out.append((code, lo, hi))


# --------------------------------------------------------------------------- strings/tokens

_STRING_PARTS = ("text", "family", "given", "prefix", "suffix",  # HumanName
                 "line", "city", "district", "state", "postalCode", "country")  # Address


def _string_rows(code: str, values: list, out: list) -> None:
    for v in values:
        if type(v) is str:
            out.append((code, normalize_string(v)[:_M], v[:_M]))
        elif type(v) is dict:
            for part in _STRING_PARTS:
                p = v.get(part)
                if p is None:
                    continue
                if type(p) is str:
                    out.append((code, normalize_string(p)[:_M], p[:_M]))
                elif type(p) is list:
                    for s in p:
                        if type(s) is str:
                            out.append((code, normalize_string(s)[:_M], s[:_M]))


# ContactPoint.system codes (valueset-contact-point-system); Identifier.system is a URI.
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def _norm_opt(s: Any) -> str | None:
    return normalize_string(s)[:_M] if type(s) is str else None


def _str_opt(s: Any) -> str | None:
    return s[:_M] if type(s) is str else None


def _coding_row(code: str, c: dict) -> tuple | None:
    system, value, display = _str_opt(c.get("system")), _str_opt(c.get("code")), c.get("display")
    if system is None and value is None and display is None:
        return None
    return (code, system, value, _norm_opt(display), None, None)


def _token_rows(code: str, values: list, out: list) -> None:
    for v in values:
        tv = type(v)
        if tv is str:
            out.append((code, None, v[:_M], None, None, None))
        elif tv is bool:
            out.append((code, None, "true" if v else "false", None, None, None))
        elif tv is int or tv is float:
            out.append((code, None, str(v), None, None, None))
        elif tv is dict:
            coding = v.get("coding")
            if coding is not None or ("text" in v and "value" not in v and "code" not in v):
                # CodeableConcept
                for c in coding or ():
                    if type(c) is dict:
                        system, value, display = c.get("system"), c.get("code"), c.get("display")
                        if type(system) is str and type(value) is str:  # the usual case
                            out.append((code, system[:_M], value[:_M],
                                        normalize_string(display)[:_M] if type(display) is str else None,
                                        None, None))
                        else:
                            row = _coding_row(code, c)
                            if row:
                                out.append(row)
                text = v.get("text")
                if type(text) is str:
                    out.append((code, None, None, normalize_string(text)[:_M], None, None))
            elif "value" in v:
                value = v["value"]
                if type(value) is not str:
                    continue
                system = v.get("system")
                if system in _CONTACT_SYSTEMS or "rank" in v:  # ContactPoint
                    out.append((code, None, value[:_M], None, None, None))
                    continue
                # Identifier (search.html#token: system|value; :of-type on type)
                itype = v.get("type")
                t_text = t_sys = t_code = None
                if type(itype) is dict:
                    t_text = _norm_opt(itype.get("text"))
                    tc = itype.get("coding")
                    if tc and type(tc[0]) is dict:
                        t_sys, t_code = _str_opt(tc[0].get("system")), _str_opt(tc[0].get("code"))
                        if t_text is None:
                            t_text = _norm_opt(tc[0].get("display"))
                out.append((code, _str_opt(system), value[:_M], t_text, t_sys, t_code))
            elif "code" in v or "system" in v or "display" in v:  # Coding
                row = _coding_row(code, v)
                if row:
                    out.append(row)


# --------------------------------------------------------------------------- references

def reference_rows(code: str, value: Any, targets: tuple[str, ...], resource_types: frozenset[str]) -> tuple | None:
    """One reference row ``(code, target_type, target_id, url, ident_system, ident_value)``.

    * ``"Patient/123"`` (``/_history/2`` dropped) -> ``("Patient", "123", None, ...)``;
    * ``"http://x/fhir/Patient/1"`` -> type and id parsed and ``url`` kept (history dropped);
    * ``"urn:uuid:..."``, ``"#contained"`` and other URIs -> ``url`` only;
    * bare ``"123"`` -> type inferred when the parameter has exactly one target type,
      else taken from ``Reference.type``;
    * conditional ``"Practitioner?identifier=s|v"`` (transaction bundles) -> type, ``url``
      = the whole text, identifier parsed from the query;
    * ``Reference.identifier`` -> ``identifier_system``/``identifier_value``
      (search.html#reference ``:identifier``); ``Reference.type`` fills a missing type;
    * a canonical/uri string (``instantiatesCanonical``) -> ``url`` without ``|version``;
    * an embedded resource (``Bundle.entry[0].resource``) -> its type and id, only if
      that type is one of ``targets``.
    """
    if type(value) is str:
        url = value.split("|", 1)[0]
        return (code, None, None, url[:_M], None, None) if url else None
    if type(value) is not dict:
        return None
    rt = value.get("resourceType")
    if rt is not None:  # an embedded resource: Bundle.entry[0].resource
        if targets and rt not in targets:
            return None  # e.g. Bundle "composition" when entry[0] is not a Composition
        rid = value.get("id")
        return (code, rt, rid if type(rid) is str else None, None, None, None)
    ref = value.get("reference")
    rtype = value.get("type")
    if type(rtype) is str and "/" in rtype:
        rtype = rtype.rsplit("/", 1)[-1]
    if type(rtype) is not str:
        rtype = None
    ttype = tid = url = isys = ival = None
    ident = value.get("identifier")
    if type(ident) is dict:
        isys, ival = _str_opt(ident.get("system")), _str_opt(ident.get("value"))
    if type(ref) is str and ref:
        ttype, tid, url, qsys, qval, bare = parse_literal_reference(ref, resource_types)
        if bare and len(targets) == 1:
            ttype = targets[0]
        if qval is not None and ival is None:
            isys, ival = qsys, qval
    if ttype is None and rtype is not None and rtype in resource_types:
        ttype = rtype
    if tid is None and url is None and ival is None:
        return None  # display-only reference
    return (code, ttype, tid, url[:_M] if url else url, isys[:_M] if isys else isys, ival[:_M] if ival else ival)


_TAILS: dict[tuple, tuple | None] = {}
#: plain references remembered (:func:`_reference_tail`); forgotten all at once when full
_TAILS_SIZE = 8192


def _reference_tail(value: Any, targets: tuple[str, ...], resource_types: frozenset[str]) -> tuple | None:
    """``reference_rows(code, value, ...)`` without its first column. A plain Reference
    (``reference`` and at most a ``display``, which no column holds) is a function of its text
    and the parameter's targets, and the resources of one bundle point at the same few
    (an ORU's ten Observations at one Patient and one Encounter): remembered."""
    if type(value) is dict and 0 < len(value) <= 2:
        ref = value.get("reference")
        if type(ref) is str and (len(value) == 1 or "display" in value) and len(ref) <= REMEMBERED_TEXT_MAX:
            key = (ref, targets, resource_types)
            tail = _TAILS.get(key, _MISSING)
            if tail is _MISSING:
                row = reference_rows("", value, targets, resource_types)
                tail = row[1:] if row else None
                if len(_TAILS) >= _TAILS_SIZE:
                    _TAILS.clear()
                _TAILS[key] = tail
            return tail
    row = reference_rows("", value, targets, resource_types)
    return row[1:] if row else None


_MISSING = object()


# --------------------------------------------------------------------------- numbers & quantities


def _number_rows(code: str, values: list, out: list) -> None:
    for v in values:
        if (type(v) is int or type(v) is float):
            out.append((code, float(v)))


def _quantity_row(code: str, v: Any) -> tuple | None:
    if type(v) is not dict:
        return None
    value = v.get("value")
    if type(value) not in (int, float):
        return None  # Range, SampledData, Ratio, value-less Quantity
    if "currency" in v:  # Money
        cur = _str_opt(v.get("currency"))
        return (code, float(value), ISO4217, cur, cur)
    return (code, float(value), _str_opt(v.get("system")), _str_opt(v.get("code")), _str_opt(v.get("unit")))


def _quantity_rows(code: str, values: list, out: list) -> None:
    for v in values:
        row = _quantity_row(code, v)
        if row:
            out.append(row)


def _uri_rows(code: str, values: list, out: list) -> None:
    for v in values:
        if type(v) is str:
            out.append((code, v[:_M]))


# --------------------------------------------------------------------------- compilation


_fallbacks: list[tuple[str, str, str]] = []


def _compile(expr: str, rtype: str, code: str) -> Callable[[list, Any], list]:
    """Compile ``expr``; fall back to fhirpathpy (counted in :func:`fallback_expressions`)."""
    try:
        return compile_expression(expr, rtype)
    except UnsupportedExpression:
        import fhirpathpy  # imported lazily: not needed for any R4 core expression

        _fallbacks.append((rtype, code, expr))
        log.warning("search parameter %s.%s uses fhirpathpy fallback: %s", rtype, code, expr)
        fn = fhirpathpy.compile(expr)

        def fallback(nodes, root):
            out: list = []
            for n in nodes:
                out.extend(fn(n))
            return out
        return fallback


def fallback_expressions() -> list[tuple[str, str, str]]:
    """``(resource_type, code, expression)`` compiled so far that needed fhirpathpy."""
    return list(_fallbacks)


_Emit = Callable[[str, list, list], None]
_EMITTERS: dict[str, tuple[str, _Emit]] = {
    "string": ("string", _string_rows),
    "token": ("token", _token_rows),
    "date": ("date", _date_rows),
    "number": ("number", _number_rows),
    "quantity": ("quantity", _quantity_rows),
    "uri": ("uri", _uri_rows),
}


#: a guard: JSON paths of which one must be present (:func:`hub.fhir.search.fhirpath.required_paths`)
_Guard = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _Plan:
    """Compiled extraction plan for one resource type.

    Each entry starts with a *guard*: JSON paths, a top-level key (``("code",)``) or a child of
    a top-level object (``("meta", "tag")``), of which one must be present for the expression
    to select anything (``()`` = always evaluate), so that the many parameters whose element is
    absent are never looked at: ``by_key`` lists, for each top-level key, the entries (positions
    in the plan's order) it can enable, and ``by_child`` those its children can (all of them
    when its value is not an object, whose children are not looked into).
    """

    simple: tuple[tuple[_Guard, str, str, Callable, _Emit], ...]  # (guard, code, table, fn, emit)
    references: tuple[tuple[_Guard, str, Callable, tuple[str, ...]], ...]  # (guard, code, fn, targets)
    composites: tuple[tuple[_Guard, str, Callable, tuple[tuple[str, Callable], ...]], ...]
    by_key: dict[str, tuple[int, ...]] = field(default_factory=dict)
    by_child: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    any_child: dict[str, tuple[int, ...]] = field(default_factory=dict)
    always: tuple[int, ...] = ()
    _steps: dict[tuple, tuple] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def build(simple: tuple, references: tuple, composites: tuple) -> "_Plan":
        """Number the entries simple, then references, then composites; index them by guard path."""
        by_key: dict[str, list[int]] = {}
        by_child: dict[str, dict[str, list[int]]] = {}
        always = []
        for i, entry in enumerate(simple + references + composites):
            if not entry[0]:
                always.append(i)
            for path in entry[0]:
                if len(path) == 1:
                    by_key.setdefault(path[0], []).append(i)
                else:
                    by_child.setdefault(path[0], {}).setdefault(path[1], []).append(i)
        return _Plan(simple, references, composites, {k: tuple(v) for k, v in by_key.items()},
                     {k: {c: tuple(v) for c, v in children.items()} for k, children in by_child.items()},
                     {k: tuple(sorted({i for v in children.values() for i in v})) for k, children in by_child.items()},
                     tuple(always))

    def applicable(self, resource: dict) -> list[int]:
        """Positions of the entries whose guard the resource meets, in the plan's order."""
        found = set(self.always)
        by_key, by_child = self.by_key, self.by_child
        for k, v in resource.items():
            hit = by_key.get(k)
            if hit is not None:
                found.update(hit)
            children = by_child.get(k)
            if children is not None:
                if type(v) is dict:
                    for c in v:
                        hit = children.get(c)
                        if hit is not None:
                            found.update(hit)
                else:
                    found.update(self.any_child[k])
        return sorted(found)

    def _key(self, resource: dict) -> tuple:
        """What :meth:`applicable` depends on: the top-level keys, and the keys of the top-level
        objects whose children guard entries (a few per type: ``meta``, ``component`` ...)."""
        keys = tuple(resource)
        inner = []
        for k in self.by_child:
            v = resource.get(k)
            if v is not None:
                inner.append(tuple(v) if type(v) is dict else 0)
        return (keys, tuple(inner)) if inner else keys

    def steps(self, resource: dict) -> tuple:
        """The applicable entries (:meth:`applicable`) as ``(kind, code, fn, arg, table)``: kind
        0 a simple parameter (``arg`` its emitter, ``table`` its row kind), 1 a reference (``arg``
        its targets), 2 a composite (``arg`` its parts). Remembered per :meth:`_key` (the top-level
        keys, and those of the objects whose children matter), which the resources of one source
        repeat (bounded: forgotten all at once when full)."""
        keys = self._key(resource)
        found = self._steps.get(keys)
        if found is None:
            n_simple, n_refs = len(self.simple), len(self.references)
            out = []
            for i in self.applicable(resource):
                if i < n_simple:
                    _g, code, table, fn, emit = self.simple[i]
                    out.append((0, code, fn, emit, table))
                elif i < n_simple + n_refs:
                    _g, code, fn, targets = self.references[i - n_simple]
                    out.append((1, code, fn, targets, "reference"))
                else:
                    _g, code, fn, parts = self.composites[i - n_simple - n_refs]
                    out.append((2, code, fn, parts, "composite"))
            found = tuple(out)
            if len(self._steps) >= _STEPS_SIZE:
                self._steps.clear()
            self._steps[keys] = found
        return found


#: keys remembered per plan (:meth:`_Plan.steps`)
_STEPS_SIZE = 1024


def _guard(expr: str, rtype: str) -> _Guard:
    try:
        paths = required_paths(expr, rtype)
    except UnsupportedExpression:
        return ()
    return tuple(sorted(paths)) if paths else ()


@lru_cache(maxsize=None)
def _plan(resource_type: str, every_parameter: bool = False) -> _Plan:
    reg = get_registry()
    simple, refs, comps = [], [], []
    for code, sp in reg.view(resource_type).items():
        if code in SKIPPED_PARAMS or sp.type == "special" or not sp.expression:
            continue
        if sp.derived_from and not every_parameter:
            continue  # no rows of its own: read from the parameters it is derived from
        fn = _compile(sp.expression, resource_type, code)
        guard = _guard(sp.expression, resource_type)
        if sp.type == "reference":
            refs.append((guard, code, fn, sp.targets))
        elif sp.type == "composite":
            parts = _composite_parts(reg, sp)
            if parts is not None:
                if sp.expression == resource_type:
                    # composite rooted at the resource: the 2nd component must be there
                    guard = _guard(sp.components[1][1], resource_type)
                comps.append((guard, code, fn, parts))
        else:
            table, emit = _EMITTERS[sp.type]
            simple.append((guard, code, table, fn, emit))
    return _Plan.build(tuple(simple), tuple(refs), tuple(comps))


def _composite_parts(reg, sp: SearchParam) -> tuple[tuple[str, Callable], ...] | None:
    """(component type, compiled component expression) for two-component composites.

    The row layout holds a token first component and one second component; the R4
    three-component composites (MolecularSequence coordinates) are not indexed.
    """
    if len(sp.components) != 2:
        return None
    parts = []
    for ccode, cexpr in sp.components:
        cparam = reg.get(sp.resource_type, ccode)
        ctype = cparam.type if cparam is not None else "token"
        parts.append((ctype, _compile(cexpr, sp.resource_type, f"{sp.code}${ccode}")))
    if parts[0][0] != "token":
        return None
    return tuple(parts)


def _first_pairs(values: list) -> list[tuple[str | None, str]]:
    """(system, code) pairs of a token composite component (text-only rows excluded)."""
    pairs = []
    for v in values:
        if type(v) is dict and "coding" in v:
            for c in v["coding"] or ():
                if type(c) is dict:
                    code = c.get("code")
                    if type(code) is str:
                        system = c.get("system")
                        pairs.append((system[:_M] if type(system) is str else None, code[:_M]))
        else:
            tmp: list = []
            _token_rows("", [v], tmp)
            pairs.extend((r[1], r[2]) for r in tmp if r[2] is not None)
    return pairs


def _composite_rows(code: str, root: dict, nodes: list, parts, rtypes, out: list) -> None:
    """One row per (first-component coding x second-component value), search.html#composite.

    Second component: token -> (c2_system, c2_code); quantity -> (c2_system, c2_code,
    c2_number) = (system, code, value); date -> (c2_low_us, c2_high_us); string ->
    normalised string in c2_code; number -> c2_number; reference -> (c2_system,
    c2_code) = (target type, id), or (None, url) when not a literal ``Type/id``.
    """
    (_, f1), (t2, f2) = parts
    for node in nodes:
        vals = f2([node], root)
        if not vals:
            continue
        second: list[tuple] = []
        if t2 == "quantity":
            for v in vals:
                row = _quantity_row(code, v)
                if row:
                    second.append((row[2], row[3], row[1], None, None))
        elif t2 == "token":
            tmp: list = []
            _token_rows(code, vals, tmp)
            second = [(r[1], r[2], None, None, None) for r in tmp if r[2] is not None]
        elif t2 == "date":
            tmp = []
            _date_rows(code, vals, tmp)
            second = [(None, None, None, r[1], r[2]) for r in tmp]
        elif t2 == "string":
            tmp = []
            _string_rows(code, vals, tmp)
            second = [(None, r[1], None, None, None) for r in tmp]
        elif t2 == "number":
            second = [(None, None, float(v), None, None) for v in vals if type(v) in (int, float)]
        elif t2 == "reference":
            for v in vals:
                row = reference_rows(code, v, (), rtypes)
                if row is None:
                    continue
                if row[2] is not None:
                    second.append((row[1], row[2], None, None, None))
                elif row[3] is not None:
                    second.append((None, row[3], None, None, None))
        if not second:
            continue
        for s1, c1 in _first_pairs(f1([node], root)):
            for s2 in second:
                out.append((code, s1, c1) + s2)


# --------------------------------------------------------------------------- entry point


_ROW_KINDS = ("string", "token", "reference", "date", "number", "quantity", "uri", "composite")


def extract_index(resource: dict, *, every_parameter: bool = False) -> IndexRows:
    """Compute the search index rows of an R4 JSON resource (see module docstring).

    Parameters derived from others (``SearchParam.derived_from``: Observation ``patient`` is
    read from ``subject``) have no rows of their own and are left out, unless
    ``every_parameter`` (what their rows would be, for tests of the derivation); match rows in
    memory with :func:`rows_of_param`, which reads a derived parameter's rows as searches do.
    Unknown resource types yield empty rows.  Values that cannot be indexed (an
    invalid date, a Range for a quantity parameter ...) are skipped, never fatal.
    """
    rtype = resource.get("resourceType")
    if type(rtype) is not str:
        raise ValueError("resource without resourceType")
    reg = get_registry()
    if rtype not in reg.resource_types:
        return IndexRows()
    nodes = [resource]
    tables = {kind: [] for kind in _ROW_KINDS}
    resource_types = reg.resource_types
    for kind, code, fn, arg, table in _plan(rtype, every_parameter).steps(resource):
        vals = fn(nodes, resource)
        if not vals:
            continue
        if kind == 0:
            arg(code, vals, tables[table])
        elif kind == 1:
            # (no memo of the Reference objects selected twice in one resource: the parameter
            # that selected subject again, patient, is derived from it now and not extracted)
            out = tables[table]
            for v in vals:
                tail = _reference_tail(v, arg, resource_types)
                if tail is not None:
                    out.append((code,) + tail)
        else:
            _composite_rows(code, resource, vals, arg, resource_types, tables[table])
    # de-duplicate, keeping first-occurrence order
    return IndexRows(**{kind: list(dict.fromkeys(found)) if len(found) > 1 else found
                        for kind, found in tables.items()})


@lru_cache(maxsize=None)
def _covered(resource_type: str) -> tuple[tuple[str, tuple[tuple[str, frozenset[str]], ...]], ...]:
    """Per row kind, the parameters of ``resource_type`` that store only the rows their
    covering parameters lack (``SearchParam.stored_with``), with those parameters."""
    by_kind: dict[str, list[tuple[str, frozenset[str]]]] = {}
    for code, sp in get_registry().view(resource_type).items():
        if sp.stored_with:
            by_kind.setdefault(sp.type, []).append((code, frozenset(sp.stored_with)))
    return tuple((kind, tuple(entries)) for kind, entries in by_kind.items())


def rows_of_param(rows: list[tuple], sp: SearchParam) -> list[tuple]:
    """The rows of parameter ``sp`` among ``rows`` (one kind of :func:`extract_index`'s rows),
    read as a search reads them (``SearchParam.stored_as``): its own, those of the parameters it
    shares rows with or is derived from, of the target type named (reference rows: column 1)."""
    sources = sp.stored_as
    if len(sources) == 1 and sources[0][1] is None:
        code = sources[0][0]
        return [r for r in rows if r[0] == code]
    return [r for r in rows if (r[0], None) in sources or (r[0], r[1]) in sources]


def stored_rows(resource_type: str, rows: IndexRows) -> IndexRows:
    """The rows of ``rows`` the index tables keep: a parameter whose rows are partly rows of
    other parameters (``Observation`` ``combo-code`` holds every ``code`` row) keeps only the
    others, and a search on it reads its own rows and theirs (``hub.fhir.search.query``).
    ``rows`` is left as it is: it may be used again for matching in memory."""
    covered = _covered(resource_type)
    if not covered:
        return rows
    out = IndexRows(**{kind: getattr(rows, kind) for kind in _ROW_KINDS})
    for kind, entries in covered:
        found = getattr(rows, kind)
        if not found:
            continue
        for code, bases in entries:
            theirs = {r[1:] for r in found if r[0] in bases}
            if theirs:
                found = [r for r in found if r[0] != code or r[1:] not in theirs]
        setattr(out, kind, found)
    return out


def compile_all() -> int:
    """Compile the plans of every resource type; returns the number of fallback expressions."""
    for rtype in sorted(get_registry().resource_types):
        _plan(rtype)
    return len(_fallbacks)
