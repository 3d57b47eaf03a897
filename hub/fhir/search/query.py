"""FHIR search: query string → intermediate form → SQLAlchemy Core (search.html).

Parsing produces a :class:`SearchQuery` (filters with parameter, modifier, prefix and OR-ed
values; result parameters). :func:`compile_filter` turns each filter into a condition on the
``resources`` table using one small predicate builder per parameter type, against the index
tables of ``hub.storage.schema``. Nothing is built by string concatenation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select, true, union_all
from sqlalchemy.sql import Select

from hub.errors import InvalidRequest, NotSupported
from hub.fhir.search.extract import normalize_string, parse_date_range
from hub.fhir.search.registry import Registry, SearchParam
from hub.storage.schema import (
    resources,
    sp_composite,
    sp_date,
    sp_number,
    sp_quantity,
    sp_reference,
    sp_string,
    sp_token,
    sp_uri,
)

R = resources.c

#: parameters about the result set, not the match (search.html#return)
RESULT_PARAMS = frozenset({
    "_count", "_offset", "_sort", "_total", "_summary", "_elements", "_include", "_revinclude",
    "_format", "_pretty", "_contained", "_containedType",
})
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
STR_TOP = "\U0010ffff"

_MODIFIERS = {
    "string": {"exact", "contains", "missing", "not"},
    "token": {"missing", "not", "text", "of-type", "below", "above", "in", "not-in"},
    "reference": {"missing", "identifier", "below", "above", "not"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "below", "above", "contains", "not"},
    "composite": {"missing"},
}


@dataclass
class Filter:
    """One search parameter occurrence: ``name[:modifier][.chain]=v1,v2`` (values are OR-ed)."""

    name: str
    param: SearchParam | None  # None for _id, _lastUpdated, _has
    modifier: str | None
    values: list[str]
    chain: str | None = None  # the rest after the first '.' (chained search)
    has: tuple[str, str, str] | None = None  # (_has type, reference param, rest)


@dataclass
class Include:
    source_type: str
    param: str  # "*" for every reference parameter
    target_type: str | None
    iterate: bool


@dataclass
class SearchQuery:
    res_type: str | None
    filters: list[Filter] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param name, descending)
    count: int = 50
    offset: int = 0
    total: str | None = None
    summary: str | None = None
    elements: list[str] | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    types: list[str] | None = None  # _type on system-level search
    warnings: list[str] = field(default_factory=list)
    raw: list[tuple[str, str]] = field(default_factory=list)  # the matching params, for paging links


def split_values(value: str) -> list[str]:
    """Split a parameter value on unescaped commas; escapes (``\\,`` ``\\$`` ``\\|``) are kept for
    the value parsers, which unescape after splitting on ``|`` or ``$`` (search.html#escaping)."""
    return _split_unescaped(value, ",")


def _split_unescaped(value: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            cur.append(value[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(v: str) -> str:
    return re.sub(r"\\([,$|\\])", r"\1", v)


class QueryParser:
    """Parses query items into a :class:`SearchQuery`; unknown parameters raise (strict) or are
    recorded as warnings (lenient, ``Prefer: handling=lenient``)."""

    def __init__(self, registry: Registry, *, default_count: int = 50, max_count: int = 1000):
        self.registry = registry
        self.default_count = default_count
        self.max_count = max_count

    def parse(self, res_type: str | None, items: list[tuple[str, str]], *, strict: bool = True) -> SearchQuery:
        q = SearchQuery(res_type, count=self.default_count)
        for key, value in items:
            try:
                self._item(q, key, value)
            except (InvalidRequest, NotSupported) as e:
                if strict or key in ("_count", "_offset"):
                    raise
                q.warnings.append(e.diagnostics)
        return q

    def _item(self, q: SearchQuery, key: str, value: str) -> None:
        if key in ("_format", "_pretty"):
            return
        if key == "_count":
            q.count = min(_int(key, value), self.max_count)
            return
        if key == "_offset":
            q.offset = _int(key, value)
            return
        if key == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise InvalidRequest(f"_total must be none, estimate or accurate, not {value!r}")
            q.total = value
            return
        if key == "_summary":
            if value not in ("true", "false", "text", "data", "count"):
                raise InvalidRequest(f"_summary must be true, false, text, data or count, not {value!r}")
            q.summary = value
            return
        if key == "_elements":
            q.elements = [e.strip() for e in value.split(",") if e.strip()]
            return
        if key == "_sort":
            for part in value.split(","):
                part = part.strip()
                if not part:
                    continue
                desc = part.startswith("-")
                name = part[1:] if desc else part
                if name not in ("_id", "_lastUpdated"):
                    types = [q.res_type] if q.res_type else (q.types or [])
                    if not types or any(self.registry.get(t, name) is None for t in types):
                        raise InvalidRequest(f"unknown sort parameter {name!r}")
                q.sort.append((name, desc))
            return
        if key.startswith("_include") or key.startswith("_revinclude"):
            base, _, mod = key.partition(":")
            if mod not in ("", "iterate", "recurse"):
                raise InvalidRequest(f"unknown modifier {mod!r} on {base}")
            inc = self._include(value, iterate=bool(mod))
            (q.includes if base == "_include" else q.revincludes).append(inc)
            return
        if key == "_type":
            q.types = [t for t in value.split(",") if t]
            for t in q.types:
                if t not in self.registry.resource_types:
                    raise InvalidRequest(f"unknown resource type {t!r} in _type")
            return
        if key in ("_contained", "_containedType", "_text", "_content", "_list", "_query", "_filter"):
            raise NotSupported(f"search parameter {key} is not supported by this server")
        q.raw.append((key, value))
        q.filters.append(self.parse_filter(q.res_type, key, value, types=q.types))

    def _include(self, value: str, *, iterate: bool) -> Include:
        parts = value.split(":")
        if len(parts) < 2 or len(parts) > 3:
            raise InvalidRequest(f"_include/_revinclude value {value!r} is not Type:param[:target]")
        src, param = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if src not in self.registry.resource_types:
            raise InvalidRequest(f"unknown resource type {src!r} in {value!r}")
        if param != "*":
            sp = self.registry.get(src, param)
            if sp is None or sp.type != "reference":
                raise InvalidRequest(f"{src}:{param} is not a reference search parameter")
        if target and target not in self.registry.resource_types:
            raise InvalidRequest(f"unknown target type {target!r} in {value!r}")
        return Include(src, param, target, iterate)

    def parse_filter(self, res_type: str | None, key: str, value: str, *, types=None) -> Filter:
        if key.startswith("_has:"):
            parts = key.split(":", 3)
            if len(parts) < 4:
                raise InvalidRequest(f"_has must be _has:Type:reference:parameter, not {key!r}")
            _, htype, href, rest = parts
            if htype not in self.registry.resource_types:
                raise InvalidRequest(f"unknown resource type {htype!r} in {key}")
            sp = self.registry.get(htype, href)
            if sp is None or sp.type != "reference":
                raise InvalidRequest(f"{htype}:{href} is not a reference search parameter")
            # validate the inner filter now so errors surface as 400s
            self.parse_filter(htype, rest, value)
            return Filter(key, None, None, [value], has=(htype, href, rest))
        name, _, chain = key.partition(".")
        name, _, modifier = name.partition(":")
        modifier = modifier or None
        values = split_values(value)
        if name in ("_id", "_lastUpdated"):
            if chain or (modifier and modifier not in ("missing", "not")):
                raise InvalidRequest(f"modifier or chain not allowed on {name}")
            return Filter(name, None, modifier, values)
        check_types = [res_type] if res_type else (types or [])
        if not check_types:
            # system-level search without _type: only the common parameters
            sp = self.registry.get("Resource", name) or self.registry.get("DomainResource", name)
        else:
            sp = None
            for t in check_types:
                sp_t = self.registry.get(t, name)
                if sp_t is None:
                    raise InvalidRequest(f"unknown search parameter {name!r} for {t}")
                sp = sp or sp_t
        if sp is None:
            raise InvalidRequest(f"unknown search parameter {name!r}")
        if sp.type == "special":
            raise NotSupported(f"search parameter {name!r} (special) is not supported")
        if chain and sp.type != "reference":
            raise InvalidRequest(f"{name} is not a reference parameter; it cannot be chained")
        if modifier and sp.type == "reference" and modifier in self.registry.resource_types:
            pass  # type modifier: subject:Patient
        elif modifier and modifier not in _MODIFIERS.get(sp.type, set()):
            raise InvalidRequest(f"modifier :{modifier} is not valid on {sp.type} parameter {name!r}")
        if modifier in ("in", "not-in", "above", "below") and sp.type in ("token", "reference"):
            raise NotSupported(f"modifier :{modifier} on {sp.type} parameters is not supported yet")
        if modifier == "missing" and value not in ("true", "false"):
            raise InvalidRequest(f":missing takes true or false, not {value!r}")
        if chain:
            targets = [modifier] if modifier else list(sp.targets)
            if not any(self._chain_ok(t, chain) for t in targets):
                raise InvalidRequest(f"chain {key!r}: no target of {name} has parameter {chain.split('.')[0]!r}")
        f = Filter(name, sp, modifier, values, chain=chain or None)
        if not chain and modifier != "missing":
            for v in values:  # check value syntax up front (400 instead of a 500 later)
                _check_value(sp, v)
        return f

    def _chain_ok(self, target: str, chain: str) -> bool:
        first = chain.split(".")[0].split(":")[0]
        return target in self.registry.resource_types and (
            self.registry.get(target, first) is not None or first in ("_id", "_lastUpdated"))


def _int(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"{key} must be a whole number, not {value!r}") from None
    if n < 0:
        raise InvalidRequest(f"{key} must not be negative")
    return n


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def _check_value(sp: SearchParam, v: str) -> None:
    if sp.type == "date":
        _, d = split_prefix(v)
        try:
            parse_date_range(d)
        except (ValueError, TypeError):
            raise InvalidRequest(f"{sp.code}: {v!r} is not a valid date") from None
    elif sp.type in ("number", "quantity"):
        _, num = split_prefix(v)
        num = num.split("|")[0]
        try:
            Decimal(num)
        except InvalidOperation:
            raise InvalidRequest(f"{sp.code}: {v!r} is not a valid number") from None


# ---------------------------------------------------------------------------- compiling


class Compiler:
    """Compiles filters into SQL conditions on ``resources`` (aliased by the caller as R)."""

    def __init__(self, registry: Registry, parser: QueryParser, base_url: str = ""):
        self.registry = registry
        self.parser = parser
        self.base_url = base_url.rstrip("/")

    # ------------------------------------------------------------ entry points
    def ids_matching(self, res_type: str, filters: list[Filter], column=R.res_id) -> Select:
        """SELECT res_id (or ``column``) FROM resources WHERE type and every filter holds (for
        chains and _has)."""
        conds = [R.res_type == res_type, R.deleted.is_(False)]
        conds += [self.condition(res_type, f) for f in filters]
        return select(column).where(*conds)

    def can_probe(self, res_type: str, f: Filter) -> int | None:
        """For a filter that is a plain lookup in one index table: how selective its kind
        usually is (lower is more selective), used to pick the filter a search starts from;
        None for every other filter (chains, ``_has``, ``:missing``, ``:not``, ``_id`` …)."""
        if f.has or f.chain or f.name in ("_id", "_lastUpdated") or f.modifier in ("missing", "not"):
            return None
        sp = self.registry.get(res_type, f.name)
        if sp is None:
            return None
        if sp.type == "reference":
            return 0 if f.modifier != "identifier" else 1
        if sp.type == "token":
            return 1 if f.name == "identifier" else 2
        return {"string": 2, "uri": 2, "composite": 2}.get(sp.type, 3)

    def condition(self, res_type: str, f: Filter, *, probe: bool = False) -> ColumnElement:
        """The filter as a condition on ``resources``. By default an ``IN`` over the matching
        index rows (the planner may start from it); with ``probe`` (only for filters that
        :meth:`can_probe`), a correlated ``EXISTS`` that looks at the index rows of the one
        resource at hand, for the filters a search does not start from: materializing every
        Observation with a common LOINC code to intersect it with one patient's ten costs
        far more than checking those ten."""
        if f.has:
            return self._has(res_type, f)
        if f.name == "_id":
            ids = [_unescape(v) for v in f.values]
            if f.modifier == "missing":
                return false() if f.values[0] == "true" else true()
            cond = R.res_id.in_(ids)
            return not_(cond) if f.modifier == "not" else cond
        if f.name == "_lastUpdated":
            return or_(*[self._date_point(R.last_updated, v) for v in f.values])
        sp = self.registry.get(res_type, f.name)
        if sp is None:  # system search over several types: parameter missing on this type
            return false()
        if f.chain:
            return self._chain(res_type, sp, f)
        table = _TABLES[sp.type]
        if f.modifier == "missing":
            sub = rows_of(table, sp, table.c.res_id, table.c.res_type == res_type)
            present = R.res_id.in_(sub)
            return not_(present) if f.values[0] == "true" else present
        negate = f.modifier == "not"
        builder = getattr(self, "_v_" + sp.type)
        ors = [builder(sp, f.modifier, v) for v in f.values]
        if probe and not negate:
            return exists().where(table.c.res_pk == R.res_pk, param_is(table.c.param, sp), or_(*ors))
        if negate:  # correlated: looks at the rows of the resources at hand, not at every resource matching
            return ~exists().where(table.c.res_pk == R.res_pk, param_is(table.c.param, sp), or_(*ors))
        sub = rows_of(table, sp, table.c.res_id, table.c.res_type == res_type, or_(*ors))
        return R.res_id.in_(sub)

    # ------------------------------------------------------------ chains and _has
    def _chain(self, res_type: str, sp: SearchParam, f: Filter) -> ColumnElement:
        t = sp_reference.c
        targets = [f.modifier] if f.modifier and f.modifier in self.registry.resource_types else list(sp.targets)
        first = f.chain.split(".")[0].split(":")[0]
        ors = []
        for target in targets:
            if target not in self.registry.resource_types:
                continue
            if first not in ("_id", "_lastUpdated") and self.registry.get(target, first) is None:
                continue
            inner = self.parser.parse_filter(target, f.chain, ",".join(_escape_commas(v) for v in f.values))
            ors.append(and_(t.target_type == target, t.target_id.in_(self.ids_matching(target, [inner]))))
        if not ors:
            return false()
        sub = rows_of(sp_reference, sp, t.res_id, t.res_type == res_type, or_(*ors))
        return R.res_id.in_(sub)

    def _has(self, res_type: str, f: Filter) -> ColumnElement:
        htype, href, rest = f.has
        inner = self.parser.parse_filter(htype, rest, f.values[0])
        t = sp_reference.c
        sub = rows_of(sp_reference, self.registry.get(htype, href), t.target_id,
                      t.target_type == res_type, t.res_pk.in_(self.ids_matching(htype, [inner], R.res_pk)))
        return R.res_id.in_(sub)

    # ------------------------------------------------------------ value builders, one per type
    def _v_string(self, sp, modifier, value):
        c = sp_string.c
        v = _unescape(value)
        norm = normalize_string(v)
        if modifier == "exact":
            # value_norm is bound too, as the stored one is made from the same value (and clipped
            # to its column alike), so that the search is a lookup in ix_sp_string_value
            return and_(c.value_norm == norm[:c.value_norm.type.length], c.value_exact == v)
        if modifier == "contains":
            return c.value_norm.like("%" + _like_escape(norm) + "%", escape="\\")
        return and_(c.value_norm >= norm, c.value_norm < norm + STR_TOP)

    def _v_token(self, sp, modifier, value):
        c = sp_token.c
        if modifier == "text":
            norm = normalize_string(_unescape(value))
            return c.text_norm.like("%" + _like_escape(norm) + "%", escape="\\")
        if modifier == "of-type":
            parts = [_unescape(p) for p in _split_unescaped(value, "|")]
            if len(parts) != 3:
                raise InvalidRequest(f"{sp.code}:of-type takes system|code|value, not {value!r}")
            return and_(c.type_system == parts[0], c.type_code == parts[1], c.code == parts[2])
        return _token_match(c.system, c.code, value)

    def _v_reference(self, sp, modifier, value):
        c = sp_reference.c
        v = _unescape(value)
        if modifier == "identifier":
            parts = [_unescape(p) for p in _split_unescaped(value, "|")]
            if len(parts) == 1:
                return c.id_value == parts[0]
            sys_, val = parts[0], parts[1]
            conds = []
            if sys_:
                conds.append(c.id_system == sys_)
            if val:
                conds.append(c.id_value == val)
            return and_(*conds) if conds else true()
        if self.base_url and v.startswith(self.base_url + "/"):
            v = v[len(self.base_url) + 1:]
        if "://" in v or v.startswith("urn:"):
            return c.url == v.split("|")[0]
        parts = v.split("/")
        if len(parts) >= 2 and parts[-2] in self.registry.resource_types:
            rtype, rid = parts[-2], parts[-1]
            if modifier and modifier in self.registry.resource_types and modifier != rtype:
                return false()
            return and_(c.target_type == rtype, c.target_id == rid)
        if modifier and modifier in self.registry.resource_types:
            return and_(c.target_type == modifier, c.target_id == v)
        if len(sp.targets) == 1:
            return and_(c.target_type == sp.targets[0], c.target_id == v)
        return c.target_id == v

    def _v_date(self, sp, modifier, value):
        c = sp_date.c
        prefix, d = split_prefix(value)
        lo, hi = parse_date_range(d)
        return _range_predicate(prefix, c.low, c.high, lo, hi)

    def _date_point(self, col, value):
        prefix, d = split_prefix(value)
        try:
            lo, hi = parse_date_range(d)
        except (ValueError, TypeError):
            raise InvalidRequest(f"_lastUpdated: {value!r} is not a valid date") from None
        return _range_predicate(prefix, col, col, lo, hi)

    def _v_number(self, sp, modifier, value):
        prefix, num = split_prefix(value)
        return _number_predicate(prefix, sp_number.c.value, num)

    def _v_quantity(self, sp, modifier, value):
        c = sp_quantity.c
        prefix, rest = split_prefix(value)
        parts = [_unescape(p) for p in _split_unescaped(rest, "|")]
        conds = [_number_predicate(prefix, c.value, parts[0])]
        if len(parts) >= 3:
            sys_, code = parts[1], parts[2]
            if sys_:
                conds.append(c.system == sys_)
            if code:
                conds.append(or_(c.code == code, c.unit == code) if not sys_ else c.code == code)
        return and_(*conds)

    def _v_uri(self, sp, modifier, value):
        c = sp_uri.c
        v = _unescape(value)
        if modifier == "below":
            return and_(c.uri >= v, c.uri < v + STR_TOP)
        if modifier == "contains":
            return c.uri.like("%" + _like_escape(v) + "%", escape="\\")
        if modifier == "above":
            prefixes = {v}
            parts = v.split("/")
            for i in range(3, len(parts)):
                prefixes.add("/".join(parts[:i]))
            return c.uri.in_(sorted(prefixes))
        return c.uri == v

    def _v_composite(self, sp, modifier, value):
        c = sp_composite.c
        parts = _split_unescaped(value, "$")
        if len(parts) != len(sp.components) or len(parts) != 2:
            raise InvalidRequest(f"{sp.code} takes {len(sp.components)} values separated by '$'")
        first = _token_match(c.c1_system, c.c1_code, parts[0])
        second_sp = self.registry.get(sp.resource_type, sp.components[1][0])
        kind = second_sp.type if second_sp else "token"
        p2 = parts[1]
        if kind == "quantity":
            prefix, rest = split_prefix(p2)
            qp = [_unescape(p) for p in _split_unescaped(rest, "|")]
            conds = [_number_predicate(prefix, c.c2_number, qp[0])]
            if len(qp) >= 3:
                if qp[1]:
                    conds.append(c.c2_system == qp[1])
                if qp[2]:
                    conds.append(c.c2_code == qp[2])
            second = and_(*conds)
        elif kind == "date":
            prefix, d = split_prefix(p2)
            lo, hi = parse_date_range(d)
            second = _range_predicate(prefix, c.c2_low, c.c2_high, lo, hi)
        elif kind == "string":
            norm = normalize_string(_unescape(p2))
            second = and_(c.c2_code >= norm, c.c2_code < norm + STR_TOP)
        else:
            second = _token_match(c.c2_system, c.c2_code, p2)
        return and_(first, second)

    # ------------------------------------------------------------ sorting
    def sort_column(self, res_type: str, name: str, desc: bool):
        if name == "_id":
            return R.res_id
        if name == "_lastUpdated":
            return R.last_updated
        sp = self.registry.get(res_type, name)
        if sp is None:
            return None
        table = _TABLES.get(sp.type)
        col = {
            "string": "value_norm", "token": "code", "reference": "target_id", "number": "value",
            "quantity": "value", "uri": "uri", "composite": "c1_code",
        }.get(sp.type)
        if sp.type == "date":
            agg = func.max(table.c.high) if desc else func.min(table.c.low)
        else:
            agg = (func.max if desc else func.min)(table.c[col])
        return (select(agg).where(table.c.res_pk == R.res_pk, param_is(table.c.param, sp)).scalar_subquery())


_TABLES = {
    "string": sp_string, "token": sp_token, "reference": sp_reference, "date": sp_date,
    "number": sp_number, "quantity": sp_quantity, "uri": sp_uri, "composite": sp_composite,
}


def _source_conds(table, code: str, target: str | None) -> tuple:
    return (table.c.param == code,) if target is None else (table.c.param == code, table.c.target_type == target)


def rows_of(table, sp: SearchParam, col, *conds):
    """SELECT ``col`` of ``sp``'s index rows in ``table`` that meet ``conds``. For a parameter
    stored with or derived from others (``SearchParam.stored_as``), one SELECT per stored code
    (and target type, for a type-filtered one), UNION ALL: each is then the lookup by
    ``param = code`` a plain parameter gets, where ``param IN (…)`` left SQLite without
    statistics to prefer reading all the type's rows by the index by resource."""
    sources = sp.stored_as
    if len(sources) == 1:
        return select(col).where(*_source_conds(table, *sources[0]), *conds)
    return union_all(*[select(col).where(*_source_conds(table, code, target), *conds) for code, target in sources])


def param_is(col, sp: SearchParam) -> ColumnElement:
    """``col`` (an index table's ``param``) holds a row of ``sp``: its own code, or one of the
    parameters whose rows it shares or is derived from (``SearchParam.stored_as``; for a
    type-filtered one, with the ``target_type`` of ``col``'s table)."""
    sources = sp.stored_as
    if all(target is None for _, target in sources):
        return col.in_([code for code, _ in sources]) if len(sources) > 1 else col == sources[0][0]
    table = col.table
    return or_(*[and_(*_source_conds(table, code, target)) for code, target in sources])


def stored_codes(registry: Registry, res_type: str, codes, *, target_type: str) -> list[str]:
    """The ``param`` values that hold the reference rows of target type ``target_type`` of the
    parameters ``codes`` of ``res_type`` (the caller requires that target type of the rows)."""
    out: list[str] = []
    for code in codes:
        sp = registry.get(res_type, code)
        sources = sp.stored_as if sp is not None else ((code, None),)
        out.extend(c for c, target in sources if target is None or target == target_type)
    return list(dict.fromkeys(out))


def _escape_commas(v: str) -> str:
    return v.replace(",", "\\,") if "\\," not in v else v


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _token_match(sys_col, code_col, value: str):
    """``[system]|[code]`` forms of token search (search.html#token)."""
    parts = _split_unescaped(value, "|")
    if len(parts) == 1:
        return code_col == _unescape(parts[0])
    sys_, code = _unescape(parts[0]), _unescape("|".join(parts[1:]))
    if sys_ == "":
        return and_(sys_col.is_(None), code_col == code)
    if code == "":
        return sys_col == sys_
    return and_(sys_col == sys_, code_col == code)


def _range_predicate(prefix: str, low_col, high_col, lo: int, hi: int):
    """Date ranges (search.html#prefix): the target [low, high] against the search [lo, hi]."""
    if prefix == "eq":
        return and_(low_col >= lo, high_col <= hi)
    if prefix == "ne":
        return or_(low_col < lo, high_col > hi)
    if prefix == "gt":
        return high_col > hi
    if prefix == "lt":
        return low_col < lo
    if prefix == "ge":
        return high_col >= lo
    if prefix == "le":
        return low_col <= hi
    if prefix == "sa":
        return low_col > hi
    if prefix == "eb":
        return high_col < lo
    if prefix == "ap":
        import time

        now = time.time_ns() // 1000
        gap = max(abs(now - lo) // 10, 86_400_000_000)
        return and_(high_col >= lo - gap, low_col <= hi + gap)
    raise InvalidRequest(f"unknown prefix {prefix!r}")


def _number_predicate(prefix: str, col, num: str):
    """Numbers with implied precision (search.html#number): ``eq100`` matches [99.5, 100.5)."""
    try:
        d = Decimal(num)
    except InvalidOperation:
        raise InvalidRequest(f"{num!r} is not a number") from None
    v = float(d)
    exp = d.as_tuple().exponent
    half = 0.5 * math.pow(10, exp if isinstance(exp, int) else 0)
    if prefix == "eq":
        return and_(col >= v - half, col < v + half)
    if prefix == "ne":
        return or_(col < v - half, col >= v + half)
    if prefix in ("gt", "sa"):
        return col > v
    if prefix in ("lt", "eb"):
        return col < v
    if prefix == "ge":
        return col >= v
    if prefix == "le":
        return col <= v
    if prefix == "ap":
        gap = abs(v) * 0.1
        return and_(col >= v - gap, col <= v + gap)
    raise InvalidRequest(f"unknown prefix {prefix!r}")

