"""The small engine: segment specs (``specs/segments/*.yaml``) compiled once into closures.

A segment spec lists field rules::

    segment: PID
    resource: Patient
    fields:
      - {field: 5, type: XPN, to: name, repeat: true}
      - {field: 7, type: DTM, to: birthDate, as: date}
      - {field: 8, type: CODE, to: gender, map: gender}

``type`` names a datatype mapper (:mod:`mappings.datatypes`), ``to`` the FHIR element
(``a.b`` nests, ``a[].b`` appends an object to list ``a``), ``repeat`` maps every repetition
(into a list), ``comp`` reads one component as the value. Rules are compiled per facility profile
(whose ``fields`` moves a field: ``"PID-19" = "PID-2"``) and cached, so a message only runs
closures. Resource-level logic (ids, references, statuses) lives in :mod:`mappings.builders`.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Callable

from adapters.hl7v2 import Repetition, Segment

from terminology.urls import code_system

from . import datatypes as dt
from .context import Context
from .errors import REQUIRED_FIELD_MISSING, MappingError
from .profiles import FacilityProfile
from .tables import SPEC_DIR, load_yaml, tables

Rule = Callable[[Context, Segment, dict], None]

#: rule types whose value depends only on the field's text and the sender (codes looked up in the
#: terminology, no warning, no resource added): a memo of their values may stand in for running
#: them (:meth:`SegmentSpec.apply`)
_LOOKUP_TYPES = frozenset(("CWE", "CODE", "CONCEPT"))
#: a memo slot not filled yet
UNSET = object()


def fresh_copier(value: Any) -> Callable[[], Any]:
    """A function returning a new copy of the JSON value ``value`` (new dicts and lists, the same
    strings and numbers) each call: a memo hands out copies, since the resources it fills are
    changed later (notes, specimens, the store's meta). The copy is one expression compiled per
    shape of value (few: a CodeableConcept, a reference range ...), faster than a walk."""
    leaves: list = []
    return partial(_copier(_shape_expr(value, leaves)), tuple(leaves))


def _shape_expr(value: Any, leaves: list) -> str:
    """The expression building ``value`` from ``c`` (its keys and scalars, in order, appended to
    ``leaves``): the same text for every value of one shape."""
    kind = type(value)
    if kind is dict:
        items = []
        for k, v in value.items():
            leaves.append(k)
            items.append(f"c[{len(leaves) - 1}]: {_shape_expr(v, leaves)}")
        return "{" + ", ".join(items) + "}"
    if kind is list:
        return "[" + ", ".join(_shape_expr(v, leaves) for v in value) + "]"
    leaves.append(value)
    return f"c[{len(leaves) - 1}]"


@lru_cache(maxsize=1024)
def _copier(expr: str) -> Callable[[tuple], Any]:
    return eval(f"lambda c: {expr}")  # noqa: S307 - made by _shape_expr from the shape, never from values


def _setter(path: str, repeat: bool) -> Callable[[dict, Any], None]:
    """A function storing a value at ``path`` (``a``, ``a.b``, ``a[].b``) in a resource."""
    parts = path.split(".")
    if len(parts) == 1:
        key = parts[0]
        if repeat:
            return lambda res, v: res.setdefault(key, []).append(v)
        return lambda res, v: res.__setitem__(key, v)
    head, rest = parts[0], ".".join(parts[1:])
    inner = _setter(rest, repeat and not head.endswith("[]"))
    if head.endswith("[]"):
        name = head[:-2]

        def append(res: dict, v: Any) -> None:
            obj: dict = {}
            inner(obj, v)
            res.setdefault(name, []).append(obj)
        return append

    def nested(res: dict, v: Any) -> None:
        inner(res.setdefault(head, {}), v)
    return nested


def _mapper(rule: dict, path: str) -> Callable[[Context, Repetition], Any]:
    """The value function of one rule: (ctx, repetition) -> FHIR value or None."""
    kind = rule["type"]
    of_leaf = _leaf_mapper(rule, path)
    if of_leaf is not None:
        comp = int(rule.get("comp", 1))
        return lambda ctx, rep: of_leaf(ctx, dt.leaf(rep, comp))
    if kind == "CX":
        k = rule.get("kind", "mrn")
        return lambda ctx, rep: dt.cx(ctx, rep, k)
    if kind == "EI":
        k, t = rule.get("kind", "id"), rule.get("identifier_type")
        return lambda ctx, rep: dt.ei(ctx, rep, k, t)
    if kind == "XPN":
        return lambda ctx, rep: dt.xpn(ctx, rep)
    if kind == "XAD":
        return lambda ctx, rep: dt.xad(ctx, rep)
    if kind == "XTN":
        use = rule.get("use")
        return lambda ctx, rep: dt.xtn(ctx, rep, use)
    if kind == "XCN":
        return lambda ctx, rep: dt.xcn(ctx, rep)
    if kind == "CWE":
        table, local, std = rule.get("table"), rule.get("local", "code"), bool(rule.get("standardize"))
        return lambda ctx, rep: dt.cwe(ctx, rep, table, local, std, path)
    raise ValueError(f"unknown datatype {kind!r} in mapping rule {rule}")


def _leaf_mapper(rule: dict, path: str) -> Callable[[Context, str | None], Any] | None:
    """For the datatypes that read one leaf (component ``comp``): (ctx, leaf text) -> FHIR value
    or None; None for the composite ones, which read the repetition."""
    kind = rule["type"]
    if kind == "IDENT":                   # a bare id (ST, DLN.1) qualified by the sender's organization
        k, t = rule["kind"], rule.get("identifier_type")
        return lambda ctx, v: dt.plain_identifier(ctx, v, k, t)
    if kind == "CONCEPT":                 # a bare ID/IS value as a coding of its v2 table
        table = str(rule["table"])
        return lambda ctx, v: dt.v2_concept(ctx, dt.local_value(ctx, v, path), table)
    if kind == "CODE":                    # an ID/IS value -> a FHIR code (ConceptMaps, then tables.yaml)
        fmap, table = rule["map"], rule.get("table")
        systems = tuple(code_system(s) if "/" not in s else s for s in rule.get("systems", ()))
        tables()[fmap]                    # fail at compile time when the map is missing
        return lambda ctx, v: dt.coded(ctx, v, fmap, table, systems, path)
    if kind == "DTM":
        as_ = rule.get("as", "dateTime")
        seg, fld = path.split("-")
        where = (seg, int(fld))
        req = bool(rule.get("required"))
        return lambda ctx, v: dt.dtm(ctx, v, as_, where=where, required=req)
    if kind == "ST":
        return lambda ctx, v: v
    if kind == "NM":
        return _number_of
    if kind == "INT":                     # an NM that FHIR wants as an integer, 32-bit (else left out)
        return lambda ctx, v: (lambda n: n if isinstance(n, int) and -2**31 <= n < 2**31 else None)(dt.number(v))
    if kind == "BOOL":
        return lambda ctx, v: {"Y": True, "N": False}.get((v or "").upper())
    return None


def _number_of(ctx: Context, v: str | None) -> int | float | None:
    return dt.number(v)


def _read_field(segment: str, rule: dict, profile: FacilityProfile) -> int:
    """The field a rule reads: its own, or where the facility profile moved it."""
    std_path = f"{segment}-{rule['field']}"
    return int(profile.fields.get(std_path, std_path).split("-")[1])


def _compile_rule(segment: str, rule: dict, profile: FacilityProfile) -> Rule:
    std_path = f"{segment}-{rule['field']}"
    n = _read_field(segment, rule, profile)
    repeat = bool(rule.get("repeat"))
    value_of = _mapper(rule, std_path)
    store = _setter(rule["to"], repeat)
    required = bool(rule.get("required"))
    extra = rule.get("set")

    def missing() -> MappingError:
        return MappingError(REQUIRED_FIELD_MISSING, f"{std_path} is required", segment, int(rule["field"]))

    if repeat:
        def run(ctx: Context, seg: Segment, res: dict) -> None:
            found = False
            for rep in dt.reps(ctx, seg, n):
                v = value_of(ctx, rep)
                if v is None:
                    continue
                if extra and isinstance(v, dict):
                    v = {**extra, **v}
                store(res, v)
                found = True
            if required and not found:
                raise missing()
        return run

    # one value, from the first repetition (most rules): no list of repetitions to build, and
    # for a one-leaf datatype no repetition either when the field has no delimiter
    of_leaf = _leaf_mapper(rule, std_path)
    comp = int(rule.get("comp", 1))

    def run_first(ctx: Context, seg: Segment, res: dict) -> None:
        f = seg.fields
        raw = f[n] if 0 < n < len(f) else ""
        if not raw or raw == '""':
            v = None
        elif of_leaf is not None:
            v = of_leaf(ctx, dt.leaf_of(ctx, raw, comp))
        else:
            v = value_of(ctx, dt.first_of(ctx, raw))
        if v is not None:
            if extra and isinstance(v, dict):
                v = {**extra, **v}
            store(res, v)
        elif required:
            raise missing()
    return run_first


class SegmentSpec:
    """A compiled segment spec: ``apply(ctx, seg, res)`` runs every rule.

    ``lookup_fields`` are the fields its lookup rules read (``_LOOKUP_TYPES`` storing into an
    element no other rule stores into): a caller that memoizes by their text passes ``apply`` a
    list of ``lookup_slots`` slots (``UNSET`` at first), which the rules fill on the first run
    and copy from on the next."""

    __slots__ = ("segment", "resource", "rules", "raw", "lookup_fields", "lookup_slots")

    def __init__(self, raw: dict, profile: FacilityProfile):
        self.raw = raw
        self.segment = raw["segment"]
        self.resource = raw.get("resource")
        fields = raw.get("fields", ())
        targets = [r["to"] for r in fields]
        slots = 0
        rules = []
        for r in fields:
            # (field read, required, rule, memo slot or None, element): a rule whose field is
            # empty only runs when required
            slot = None
            if r["type"] in _LOOKUP_TYPES and "." not in r["to"] and targets.count(r["to"]) == 1:
                slot, slots = slots, slots + 1
            rules.append((_read_field(self.segment, r, profile), bool(r.get("required")),
                          _compile_rule(self.segment, r, profile), slot, r["to"]))
        self.rules = tuple(rules)
        self.lookup_slots = slots
        self.lookup_fields = tuple(sorted({n for n, _, _, slot, _ in rules if slot is not None}))

    def apply(self, ctx: Context, seg: Segment, res: dict, memo: list | None = None) -> dict:
        fields = seg.fields
        count = len(fields)
        for n, required, rule, slot, to in self.rules:
            if required or (n < count and fields[n]):
                if slot is None or memo is None:
                    rule(ctx, seg, res)
                    continue
                copy = memo[slot]
                if copy is UNSET:
                    found: dict = {}
                    rule(ctx, seg, found)
                    copy = memo[slot] = fresh_copier(found[to]) if to in found else None
                if copy is not None:
                    res[to] = copy()
        return res


@lru_cache(maxsize=1)
def _raw_segment_specs() -> dict[str, dict]:
    out = {}
    for path in sorted((SPEC_DIR / "segments").glob("*.yaml")):
        spec = load_yaml(path)
        out[path.stem] = spec
    return out


@lru_cache(maxsize=64)
def _compiled(profile_key: tuple, profile: FacilityProfile) -> dict[str, SegmentSpec]:
    return {name: SegmentSpec(raw, profile) for name, raw in _raw_segment_specs().items()}


def compiled_specs(profile: FacilityProfile) -> dict[str, SegmentSpec]:
    """Every segment spec compiled for this profile (compiled once per profile)."""
    return _compiled(profile.key, profile)


def segment_spec(name: str, profile: FacilityProfile) -> SegmentSpec:
    """The compiled spec ``specs/segments/<name>.yaml`` for this profile (compiled once)."""
    return _compiled(profile.key, profile)[name]


@lru_cache(maxsize=1)
def message_specs() -> dict[str, dict]:
    """``specs/messages/*.yaml`` indexed by ``TYPE^TRIGGER``."""
    out: dict[str, dict] = {}
    for path in sorted((SPEC_DIR / "messages").glob("*.yaml")):
        spec = load_yaml(path)
        spec["name"] = path.stem
        for mtype, trig in spec["events"].items():
            for t in trig:
                out[f"{mtype}^{t}"] = spec
    return out


__all__ = ["SegmentSpec", "compiled_specs", "segment_spec", "message_specs", "fresh_copier", "UNSET"]
