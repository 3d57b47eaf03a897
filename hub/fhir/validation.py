"""Resource validation with the fhir.resources R4B models (R4 JSON on the wire).

See http.html#create: a body that is not a valid resource is refused with 400/422 and an
OperationOutcome naming the element at fault.
"""

from __future__ import annotations

import datetime
import re
import threading
import types
import typing
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import orjson

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.types import Date, DateTime, Decimal, FhirBase, Instant
from pydantic import BaseModel, TypeAdapter, ValidationError

from hub.errors import InvalidResource, NotSupported
from hub.fhir.search.registry import get_registry


@lru_cache(maxsize=None)
def model_class(resource_type: str):
    if resource_type not in get_registry().resource_types:
        raise NotSupported(f"unknown resource type {resource_type!r}")
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError) as e:
        raise NotSupported(f"unknown resource type {resource_type!r}") from e


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validate_resource(resource: dict, expected_type: str | None = None) -> None:
    """Raise :class:`InvalidResource` listing every invalid element, or return silently.

    A resource whose shape has passed the full model before is checked leaf by leaf
    (:class:`_ShapeCache`); any doubt, and every failure, goes to the full model, which alone
    words the errors."""
    if not isinstance(resource, dict):
        raise InvalidResource("the body is not a JSON object")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise InvalidResource("resourceType is missing", expression=["resourceType"])
    if expected_type and rtype != expected_type:
        raise InvalidResource(
            f"resourceType {rtype!r} does not match the endpoint's type {expected_type!r}",
            expression=["resourceType"],
        )
    if _SHAPES.passes(rtype, resource):  # shapes are cached only for types model_class knows
        return
    cls = model_class(rtype)
    try:
        leaves: list = []
        shape = _shape(resource, leaves)
    except _Unshaped:
        validate_fully(resource, cls)
        return
    known = _SHAPES.get(shape)
    if known is not None and _SHAPES.passes_known(known, resource):
        return  # a known shape beyond the candidates tried first (now tried first)
    validate_fully(resource, cls)
    if known is None:  # valid (it did not raise), and a shape not seen yet
        _SHAPES.put(shape, rtype, resource, _template(cls, resource, leaves))


def validate_fully(resource: dict, cls) -> None:
    """The judge: the fhir.resources model, then the required bindings' codes."""
    rtype = resource["resourceType"]
    try:
        model = cls.model_validate(resource)
    except ValidationError as e:
        issues = []
        paths = []
        for err in e.errors()[:20]:
            path = _location(tuple(p for p in err.get("loc", ()) if p != "__root__"))
            paths.append(f"{rtype}.{path}" if path else rtype)
            issues.append(f"{paths[-1]}: {err.get('msg')}")
        raise InvalidResource("; ".join(issues), expression=paths) from None
    except (ValueError, TypeError) as e:  # raised by some root validators
        raise InvalidResource(f"{rtype}: {e}") from None
    bad = _enum_violations(model, rtype)
    if bad:
        raise InvalidResource("; ".join(f"{p}: {v!r} is not one of the codes the element's required binding "
                                        f"allows ({', '.join(sorted(allowed))})" for p, v, allowed in bad[:10]),
                              expression=[p for p, _, _ in bad[:10]])


# --------------------------------------------------------------------------- the shape cache
#
# Two resources of the same *shape* -- the same keys in the same order at every level, the same
# JSON type at every leaf, the same ``resourceType`` values, list positions collapsed (a list's
# shape is the sequence of its items' distinct shapes) -- pass or fail the models' structural
# checks alike: unknown elements, list or not, required elements, choice types ([x] one of
# many), nulls in lists, which model a contained resource takes. What still differs is the
# leaves' values. So the first valid resource of a shape goes through the full model, and the
# cache remembers for each leaf path the pydantic validator of the element's own annotation
# (the same fhir_core primitive type the model applies: date, dateTime, code, id, uri, decimal,
# integer ranges, ...) and the codes of its required binding. Later resources of that shape are
# checked leaf by leaf; one failing leaf sends the resource to the full model, so the
# OperationOutcome is the model's own. Anything the walk or the class navigation does not
# expect makes the resource "unshaped": full model every time.
#
# The shape key is what defines a shape, but computing it is most of the cost of a known one;
# so each cached shape also has a *template* (_matches: the key made into a tree that holds the
# leaves' checks), compiled into a Python function (_compile_template), and a resource is first
# matched against the templates cached under its type and top-level keys. A match walks the
# resource once, checking its leaves on the way, and accepts exactly the resources of that key;
# only when none matches is the key computed (a new shape, or one beyond the first tried).


class _Unshaped(Exception):
    """The resource holds something the shape walk does not reason about (full model)."""


_SCALARS = frozenset((str, int, float, bool, type(None)))


# Tokens of a shape key that are not strings (keys and "=resourceType" are the strings): an
# object is OBJECT (key, value)* END; a list is EMPTY, or OBJECTS then its items' distinct
# shapes then END, or VALUES then its items' distinct JSON types then END; a scalar is its
# type. Every token says what follows it, so two keys are equal exactly when the shapes are.
_OBJECT, _END, _EMPTY, _OBJECTS, _VALUES = dict, None, list, tuple, set


def _shape(resource: dict, leaves: list) -> tuple:
    """The shape key of a resource (one flat tuple: hashed and compared at one level); appends
    ``(path, value)`` of every leaf to ``leaves``. A path is the keys from the resource (list
    positions left out), with ``("rt", type)`` where a nested object names its resourceType
    (contained and entry resources); the key names the resource's own type."""
    tokens: list = []
    _object_shape(resource, None, leaves, tokens)
    return tuple(tokens)


def _object_shape(node: dict, path: tuple | None, leaves: list, tokens: list) -> None:
    """``path`` None: the resource itself, whose leaves' paths start empty."""
    rt = node.get("resourceType")
    if rt is not None:
        if type(rt) is not str:
            raise _Unshaped
        path = () if path is None else path + (("rt", rt),)
    append = tokens.append
    append(_OBJECT)
    for k, v in node.items():
        tv = type(v)
        if tv is str:  # most values
            if k == "resourceType":
                append(k)
                append("=" + v)  # picks the model: part of the shape, not a leaf
            elif k == "resource_type":  # compared with the model's type by fhir_core
                raise _Unshaped
            else:
                leaves.append((path + (k,), v))
                append(k)
                append(str)
        elif tv is dict:
            append(k)
            _object_shape(v, path + (k,), leaves, tokens)
        elif tv is list:
            append(k)
            _list_shape(v, path + (k,), leaves, tokens)
        elif k == "resourceType" or k == "resource_type":
            raise _Unshaped  # e.g. a null resourceType: fhir_core refuses it in its own words
        elif tv in _SCALARS:
            leaves.append((path + (k,), v))
            append(k)
            append(tv)
        else:
            raise _Unshaped
    append(_END)


def _list_shape(items: list, path: tuple, leaves: list, tokens: list) -> None:
    if not items:
        tokens.append(_EMPTY)
        return
    if type(items[0]) is dict:
        tokens.append(_OBJECTS)
        if len(items) == 1:  # most lists: nothing to compare
            _object_shape(items[0], path, leaves, tokens)
            tokens.append(_END)
            return
        seen: set = set()
        for x in items:
            if type(x) is not dict:
                raise _Unshaped  # objects mixed with nulls or values
            start = len(tokens)
            _object_shape(x, path, leaves, tokens)
            item = tuple(tokens[start:])
            if item in seen:
                del tokens[start:]  # a list's shape is the sequence of its items' distinct shapes
            else:
                seen.add(item)
        tokens.append(_END)
        return
    kinds = {type(x) for x in items}
    if not kinds <= _SCALARS:
        raise _Unshaped  # values mixed with objects or lists
    leaves.append((path, items))  # a primitive list is one leaf: its element validates it whole
    tokens.append(_VALUES)
    tokens.extend(dict.fromkeys(type(x) for x in items))
    tokens.append(_END)


_MISSING = object()
#: accepted values remembered per element: strings under themselves, numbers and booleans under
#: (type, value), since 1, 1.0 and True are equal keys of a dict but not the same JSON value.
#: Bounded: a full memo is emptied, so what recurs (codes, systems, units, result values, the
#: references one message repeats) is back after one validation each, while what does not
#: (ids, times) cannot hold the memo for good, as it did when the first ones were kept
_MEMO_SIZE = 512
#: longest string remembered: codes, systems, units, ids and times are short; a base64
#: attachment or a narrative is not, and 512 of them per element would stay in memory for good
_MEMO_VALUE_CHARS = 256


def _remember(memo: dict, key, known) -> None:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = known


class _LeafRefused(Exception):
    """A leaf of a resource fails its cached check (the full model judges it)."""


# Kinds of the nodes of a template (below): what the JSON value at a key must be.
_LEAF, _RTYPE, _OBJ, _OBJS, _VALS, _NONE = range(6)


def _leaf_ok(check: tuple, value) -> None:
    """Raise :class:`_LeafRefused` unless ``value`` passes the element's validator and, where
    it has a required binding, its codes."""
    validate, codes, memo = check
    try:
        tv = type(value)
        if tv is str:
            known = memo.get(value, _MISSING)
            if known is _MISSING:
                known = validate(value)
                if len(value) <= _MEMO_VALUE_CHARS:
                    _remember(memo, value, known)
            value = known
        elif tv is list:
            # a list of short strings (address lines, given names) is remembered under its items
            if all(type(x) is str for x in value) and sum(map(len, value)) <= _MEMO_VALUE_CHARS:
                key = (list, *value)
                known = memo.get(key, _MISSING)
                if known is _MISSING:
                    known = validate(value)
                    _remember(memo, key, known)
                value = known
            else:
                value = validate(value)
        else:
            key = (tv, value)
            if memo.get(key, _MISSING) is _MISSING:
                _remember(memo, key, validate(value))
            return  # codes are strings: a number or a boolean has none to check
    except (ValidationError, ValueError, TypeError, KeyError):
        raise _LeafRefused from None
    if codes is not None:
        for code in (value if type(value) is list else (value,)):
            if isinstance(code, str) and code not in codes:
                raise _LeafRefused


def _accepted_plain_string(check, memo: dict, value: str) -> bool:
    """Does the Python check of a plain string type accept ``value``? Then it is remembered, as
    :func:`_leaf_ok` would (a code or a system recurs: a dict lookup next time)."""
    if not check(value):
        return False
    if len(value) <= _MEMO_VALUE_CHARS:  # _remember, written out: most misses are new ids and references
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[value] = value
    return True


def _matches(node: dict, keys: tuple, specs: tuple) -> bool:
    """Does the object ``node`` have the shape of the template ``(keys, specs)``? Its leaves are
    checked on the way (:class:`_LeafRefused`). A template is the shape key of a valid resource
    made into a tree that holds each leaf's check: the same keys in the same order, and per key
    ``(_LEAF, JSON type, check)``, ``(_RTYPE, resourceType)``, ``(_OBJ, keys, specs)``,
    ``(_OBJS, item templates)`` (a list of objects: the distinct shapes of its items in the order
    they first occur), ``(_VALS, the distinct JSON types of its items, check)`` (a primitive
    list) or ``(_NONE,)`` (an empty list). Matching it is walking the resource once, without
    building the key or the leaves' paths; it accepts exactly the resources whose shape key is
    the template's (see _object_shape and _list_shape, which say what a shape is)."""
    if tuple(node) != keys:
        return False
    for v, spec in zip(node.values(), specs):
        kind = spec[0]
        tv = type(v)
        if kind is _LEAF:
            if tv is not spec[1]:
                return False
            if tv is str:  # most leaves: a string the element accepted before, no codes
                check = spec[2]
                known = check[2].get(v, _MISSING)
                if known is not _MISSING and (check[1] is None or type(known) is str and known in check[1]):
                    continue
            _leaf_ok(spec[2], v)
        elif kind is _OBJ:
            if tv is not dict or not _matches(v, spec[1], spec[2]):
                return False
        elif kind is _OBJS:
            if tv is not list or not v:
                return False
            items = spec[1]
            if len(v) == 1:
                if len(items) != 1 or type(v[0]) is not dict or not _matches(v[0], *items[0]):
                    return False
                continue
            seen = 0  # items[:seen] have occurred; the next new shape must be items[seen]
            for x in v:
                if type(x) is not dict:
                    return False
                for j in range(seen):
                    if _matches(x, *items[j]):
                        break
                else:
                    if seen == len(items) or not _matches(x, *items[seen]):
                        return False
                    seen += 1
            if seen != len(items):
                return False
        elif kind is _RTYPE:
            if v != spec[1] or tv is not str:
                return False
        elif kind is _VALS:
            if tv is not list or not v or type(v[0]) is dict:
                return False
            if tuple(dict.fromkeys([type(x) for x in v])) != spec[1]:
                return False
            _leaf_ok(spec[2], v)
        else:  # _NONE
            if tv is not list or v:
                return False
    return True


def _compile_template(template: tuple):
    """A template (see _matches) made into a Python function ``match(node) -> bool`` that does
    what _matches does with the template's keys, types and checks written into straight code:
    the shape is fixed, so the walk needs no loop over specs nor dispatch on their kinds."""
    consts: dict = {"L": _leaf_ok, "A": _accepted_plain_string, "MISSING": _MISSING, "distinct": _distinct_items}
    defs: list[str] = []
    counter = [0]

    named: dict = {}  # one name per constant: keys tuples by value, checks and memos by identity

    def const(value) -> str:
        key = value if type(value) is tuple and type(value[0] if value else "") is str else id(value)
        name = named.get(key)
        if name is None:
            counter[0] += 1
            name = named[key] = f"k{counter[0]}"
            consts[name] = value
        return name

    def var() -> str:
        counter[0] += 1
        return f"v{counter[0]}"

    def function(keys: tuple, specs: tuple) -> str:
        counter[0] += 1
        name = f"f{counter[0]}"
        body: list[str] = []
        obj("n", keys, specs, body)
        defs.append(f"def {name}(n):\n" + "".join(f"    {line}\n" for line in body) + "    return True\n")
        return name

    def obj(node: str, keys: tuple, specs: tuple, out: list, depth: int = 0) -> None:
        out.append(f"if tuple({node}) != {const(keys)}: return False")
        if not keys:
            return
        names = [var() for _ in keys]
        out.append(f"({', '.join(names)},) = {node}.values()")
        for v, spec in zip(names, specs):
            kind = spec[0]
            if kind is _LEAF:
                tv, check = spec[1], spec[2]
                if tv is type(None):
                    out.append(f"if {v} is not None: return False")
                else:
                    out.append(f"if type({v}) is not {const(tv)}: return False")
                if tv is str:
                    validate, codes, memo = check
                    fast = getattr(validate, "plain_string", None)
                    if codes is None and fast is not None:  # a string new to the memo: L only if refused
                        out.append(f"if {v} not in {const(memo)} and not "
                                   f"A({const(fast)}, {const(memo)}, {v}): L({const(check)}, {v})")
                    elif codes is None:
                        out.append(f"if {v} not in {const(memo)}: L({const(check)}, {v})")
                    else:
                        k = var()
                        out.append(f"{k} = {const(memo)}.get({v}, MISSING)")
                        out.append(f"if {k} is MISSING or type({k}) is not str or {k} not in {const(codes)}: "
                                   f"L({const(check)}, {v})")
                elif tv is type(None):
                    out.append(f"L({const(check)}, {v})")
                else:  # a number or a boolean, remembered under (type, value) (see _MEMO_SIZE)
                    out.append(f"if {const(check[2])}.get(({const(tv)}, {v}), MISSING) is MISSING: "
                               f"L({const(check)}, {v})")
            elif kind is _RTYPE:
                out.append(f"if type({v}) is not str or {v} != {const(spec[1])}: return False")
            elif kind is _OBJ:
                out.append(f"if type({v}) is not dict: return False")
                obj(v, spec[1], spec[2], out, depth)
            elif kind is _OBJS:
                out.append(f"if type({v}) is not list or not {v}: return False")
                x = var()
                if len(spec[1]) == 1 and depth < _INLINE_DEPTH:
                    # most lists hold objects of one shape (codings, references, ranges): each
                    # checked in the loop, without a call
                    out.append(f"for {x} in {v}:")
                    out.append(f"    if type({x}) is not dict: return False")
                    inline: list = []
                    obj(x, *spec[1][0], inline, depth + 1)
                    out.extend(f"    {line}" for line in inline)
                elif len(spec[1]) == 1:
                    f = function(*spec[1][0])
                    out.append(f"for {x} in {v}:")
                    out.append(f"    if type({x}) is not dict or not {f}({x}): return False")
                else:
                    fns = [function(*item) for item in spec[1]]
                    out.append(f"if not distinct({v}, ({', '.join(fns)},)): return False")
            elif kind is _VALS:
                y = var()
                if spec[1] == (str,):  # most primitive lists (given names, address lines): strings only
                    out.append(f"if type({v}) is not list or not {v}: return False")
                    out.append(f"for {y} in {v}:")
                    out.append(f"    if type({y}) is not str: return False")
                else:
                    out.append(f"if type({v}) is not list or not {v} or "
                               f"tuple(dict.fromkeys([type({y}) for {y} in {v}])) != {const(spec[1])}: return False")
                fast = getattr(spec[2][0], "plain_string", None)
                if spec[2][1] is None and fast is not None:
                    out.append(f"if not {const(fast)}({v}): L({const(spec[2])}, {v})")
                else:
                    out.append(f"L({const(spec[2])}, {v})")
            else:  # _NONE
                out.append(f"if type({v}) is not list or {v}: return False")

    top = function(*template)
    exec("".join(defs), consts)  # noqa: S102 - source made here from keys, never from values
    return consts[top]


#: lists nested in lists checked in place (deeper ones call a function: CPython allows 20 nested
#: blocks, and a Questionnaire's items nest deeper)
_INLINE_DEPTH = 6


def _distinct_items(items: list, matchers: tuple) -> bool:
    """A list of objects whose distinct item shapes, in the order they first occur, are those
    of ``matchers`` (see _matches)."""
    seen = 0
    for x in items:
        if type(x) is not dict:
            return False
        for j in range(seen):
            if matchers[j](x):
                break
        else:
            if seen == len(matchers) or not matchers[seen](x):
                return False
            seen += 1
    return seen == len(matchers)


def _template(cls, resource: dict, leaves: list):
    """The template (see _matches) of a resource the full model accepted, or None (never take
    the fast path for this shape) where the navigation from the model class along a leaf's path
    does not end at a primitive element as expected. ``leaves`` are its ``(path, value)`` as
    _shape gave them, in the order the template walk meets them."""
    checks: dict = {}
    try:
        for path, value in leaves:
            key = (path, type(value) is list)
            if key not in checks:
                checks[key] = _leaf_check(cls, path, key[1])
    except _Unshaped:
        return None
    return _object_template(resource, None, checks)


def _object_template(node: dict, path: tuple | None, checks: dict) -> tuple:
    rt = node.get("resourceType")
    if rt is not None:
        path = () if path is None else path + (("rt", rt),)
    specs = []
    for k, v in node.items():
        tv = type(v)
        if k == "resourceType":
            specs.append((_RTYPE, v))
        elif tv is dict:
            specs.append((_OBJ,) + _object_template(v, path + (k,), checks))
        elif tv is list:
            if not v:
                specs.append((_NONE,))
            elif type(v[0]) is dict:
                items: dict = {}  # item shape -> its template, in the order they first occur
                for x in v:
                    tokens: list = []
                    _object_shape(x, path + (k,), [], tokens)
                    shape = tuple(tokens)
                    if shape not in items:
                        items[shape] = _object_template(x, path + (k,), checks)
                specs.append((_OBJS, tuple(items.values())))
            else:
                specs.append((_VALS, tuple(dict.fromkeys(type(x) for x in v)), checks[(path + (k,), True)]))
        else:
            specs.append((_LEAF, tv, checks[(path + (k,), False)]))
    return tuple(node), tuple(specs)


def _leaf_check(root_cls, path: tuple, is_list: bool):
    cls = root_cls
    visited = True  # does _enum_violations reach this element?
    for i, step in enumerate(path):
        if type(step) is tuple:  # ("rt", resource type)
            rt = step[1]
            if cls.get_resource_type() != rt:
                cls = model_class(rt)
            continue
        name = _field_names(cls).get(step)
        if name is None:
            raise _Unshaped
        f = cls.model_fields[name]
        fields = {attr: codes for attr, _alias, codes in _fields(cls)}
        visited = visited and name in fields
        element = _element_class(f.annotation)
        if i == len(path) - 1:
            if element is not None or _is_list(f.annotation) != is_list:
                raise _Unshaped  # a value where the model has an object (fhir_core parses strings)
            return _primitive_validator(cls, name), (fields.get(name) if visited else None), _accepted(cls, name)
        if element is None:
            raise _Unshaped
        cls = element
    raise _Unshaped


@lru_cache(maxsize=None)
def _field_names(cls) -> dict[str, str]:
    """JSON key -> attribute (aliases, and the attribute names, which the models also accept)."""
    out = {name: name for name in cls.model_fields}
    out.update({f.alias: name for name, f in cls.model_fields.items() if f.alias})
    return out


def _element_class(annotation):
    """The model class of a complex element (through Optional/List), or None for a primitive."""
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        return annotation.get_model_klass()
    for arg in typing.get_args(annotation):
        found = _element_class(arg)
        if found is not None:
            return found
    return None


def _is_list(annotation) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        _is_list(a) for a in typing.get_args(annotation))


@lru_cache(maxsize=None)
def _primitive_validator(cls, name: str):
    """The validator of the element's own annotation: the fhir_core primitive type the model
    applies to it (regexes, ranges, date parsing), through pydantic with the model's config;
    for the plain string types (id, string, uri, code ...), a string is first tried against a
    Python check of the same constraints (:func:`_plain_string_check`), for date, dateTime
    and instant against one that accepts only what they surely accept (:func:`_temporal_check`),
    and a number for a decimal against fhir_core's own test (:func:`_decimal_check`)."""
    annotation = cls.model_fields[name].annotation
    adapter = TypeAdapter(annotation)
    validate = adapter.validator.validate_python
    fast = _plain_string_check(adapter.core_schema) or _temporal_check(annotation) or _decimal_check(annotation)
    if fast is None:
        return validate

    def checked(value):
        return value if fast(value) else validate(value)
    checked.plain_string = fast  # the compiled templates call it before the memo's slower path
    return checked


# What pydantic-core's (Rust) regex engine accepts of the patterns the fhir_core string types use:
# Rust's \s is Unicode White_Space (_RUST_SPACE; Python's \s differs: it takes \x1c-\x1f), a
# pattern is searched (is_match), and $ is the end of the text only (Python's also matches before
# a final newline: fullmatch instead of the anchors). Other patterns have no Python check.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_RUST_SPACE, _NOT_RUST_SPACE = f"[{_WHITE_SPACE}]", f"[^{_WHITE_SPACE}]"
_RUST_PATTERNS = {
    # string: some character that is not White_Space, or one of the four the class names
    "[ \r\n\t\\S]+": re.compile("[^\x0b\x0c\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]").search,
    r"\S*": None,                                                               # uri: any text
    r"^[A-Za-z0-9\-.]+$": re.compile(r"[A-Za-z0-9\-.]+").fullmatch,             # id
    r"^[^\s]+(\s[^\s]+)*$": re.compile(f"{_NOT_RUST_SPACE}+(?:{_RUST_SPACE}{_NOT_RUST_SPACE}+)*").fullmatch,  # code
}
#: a lone surrogate, which a Python string may hold and Rust's may not (pydantic refuses it)
_SURROGATE = re.compile("[\ud800-\udfff]").search


def _plain_string_check(schema: dict):
    """``check(value) -> bool``, True exactly for the strings (or lists of them) a plain ``str``
    schema (optionally nullable, or a list of such) accepts unchanged: its pattern and lengths;
    False means "ask pydantic" (also for text with a lone surrogate). None when the schema is
    anything else (dates, decimals, functions, unknown patterns)."""
    if schema.get("type") == "nullable" and set(schema) <= {"type", "schema"}:
        schema = schema["schema"]
    if schema.get("type") == "list" and set(schema) <= {"type", "items_schema"}:
        item = _plain_string_check(schema["items_schema"])
        if item is None:
            return None
        return lambda value: type(value) is list and all(item(x) for x in value)
    if schema.get("type") != "str" or not set(schema) <= {"type", "pattern", "min_length", "max_length"}:
        return None
    pattern = schema.get("pattern")
    if pattern is not None and pattern not in _RUST_PATTERNS:
        return None
    search = _RUST_PATTERNS.get(pattern)
    shortest, longest = schema.get("min_length", 0), schema.get("max_length")

    def check(value) -> bool:
        return (type(value) is str and shortest <= len(value) and (longest is None or len(value) <= longest)
                and (value.isascii() or _SURROGATE(value) is None) and (search is None or search(value) is not None))
    return check


def _fhir_type(annotation, kinds: tuple):
    """The fhir_core type (one of ``kinds``) an element's annotation (Optional[Annotated[...]])
    carries, or None."""
    found = [m for a in typing.get_args(annotation) for m in getattr(a, "__metadata__", ()) if type(m) in kinds]
    return type(found[0]) if len(found) == 1 else None


def _decimal_check(annotation):
    """For an element of fhir_core's decimal type: ``check(value) -> bool``, True for an int or a
    float whose text matches the type's pattern, which is all its validator asks of a number
    before making it a Decimal (a bool, NaN and the infinities do not match). Strings and
    anything else are pydantic's. None for any other type."""
    if _fhir_type(annotation, (Decimal,)) is None:
        return None
    fullmatch = Decimal.pattern.fullmatch

    def check(value) -> bool:
        return (type(value) is int or type(value) is float) and fullmatch(str(value)) is not None
    return check


def _temporal_check(annotation):
    """For an element of a fhir_core date, dateTime or instant type (Optional[Annotated[...]]):
    ``check(value) -> bool``, True only for strings the type's validator accepts: its own
    pattern (fhir_core matches it first), then a year or a year and month (kept as text, the
    pattern bounds the month), or a calendar date with, for dateTime and instant, a time whose
    fraction has at most 6 digits (what a datetime holds). False means "ask pydantic", as for a
    leap second, which fhir_core reads its own way. None for any other type."""
    kind = _fhir_type(annotation, (Date, DateTime, Instant))
    if kind is None:
        return None
    pattern = kind.pattern

    def check(value) -> bool:
        if type(value) is not str or pattern.fullmatch(value) is None:
            return False
        if len(value) < 10:
            return True
        if len(value) > 10:  # a time: the pattern wants its zone; a leap second or a long fraction is pydantic's
            fraction = value.find(".")
            if ":60" in value or (fraction > 0 and len(value) - fraction - 1 - _zone_length(value) > 6):
                return False
        try:
            datetime.date(int(value[:4]), int(value[5:7]), int(value[8:10]))
        except ValueError:  # 30 February, 31 April ...
            return False
        return True
    return check


def _zone_length(value: str) -> int:
    """Characters of the zone ending a dateTime the pattern matched (``Z`` or ``+hh:mm``)."""
    return 1 if value.endswith("Z") else 6


@lru_cache(maxsize=None)
def _accepted(cls, name: str) -> dict:
    """Values the element's validator accepted, with what it made of them (see _MEMO_SIZE)."""
    return {}


class _Shape:
    """A cached shape: its key, the resource type and top-level keys it is found under, and
    ``match(resource)``: its template walked (_matches) for the first uses, then compiled
    (_compile_template; several times the memory of the template: only shapes that recur)."""

    __slots__ = ("key", "top", "template", "uses", "match")

    def __init__(self, key: tuple, top: tuple, template: tuple) -> None:
        self.key, self.top = key, top
        self.template, self.uses = template, 0
        self.match = self._walk

    def _walk(self, node: dict) -> bool:
        template = self.template
        if template is None:  # compiled meanwhile by another thread
            return self.match(node)
        self.uses += 1
        if self.uses >= _COMPILE_AFTER:  # >=: two threads may count past it together
            try:
                self.match = _compile_template(template)
                self.template = None
            except (SyntaxError, RecursionError, MemoryError, ValueError):
                # a shape too large or deep for CPython's compiler stays walked (and is not tried again)
                self.uses = -(1 << 62)
        return _matches(node, *template)


#: uses of a shape after which its template is compiled
_COMPILE_AFTER = 4


#: candidates tried per (resource type, top-level keys) before the shape key is computed; the
#: one that matched last is tried first
_TRIED = 8


class _ShapeCache:
    """Shape -> template, least recently used evicted; shared by the threads of a process.

    A resource is first matched against the templates of the shapes cached under its type and
    top-level keys (most recently matched first), which walks it once and builds nothing; only
    when none matches is its shape key computed (a new shape, or one beyond the first tried).
    The recency order is kept by the shapes' ids: a shape key is a long tuple, whose hash
    CPython does not cache, and a hit should not hash it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[tuple, _Shape] = {}
        self._recency: OrderedDict[int, _Shape] = OrderedDict()  # id(shape) -> shape, oldest first
        # (resource type, top-level keys) -> shapes, a tuple replaced whole (read without the lock)
        self._by_top: dict[tuple, tuple[_Shape, ...]] = {}
        self._lock = threading.Lock()
        self.hits = 0

    def passes(self, rtype: str, resource: dict) -> bool:
        """Does a cached shape match ``resource`` with all its leaves passing their checks?"""
        candidates = self._by_top.get((rtype, tuple(resource)))
        if not candidates:
            return False
        try:
            for i, shape in enumerate(candidates):
                if i == _TRIED:
                    break
                if shape.match(resource):
                    self._hit(shape, i)
                    return True
        except _LeafRefused:
            return False
        return False

    def passes_known(self, shape: _Shape, resource: dict) -> bool:
        """``resource`` has the key of ``shape`` (computed): do its leaves pass? Counted as a
        hit either way (the shape was known: the cached checks judged it)."""
        try:
            ok = shape.match(resource)
        except _LeafRefused:
            ok = False
        if ok:
            self._hit(shape, -1)
        else:
            with self._lock:
                self.hits += 1
        return ok

    def _hit(self, shape: _Shape, position: int) -> None:
        if position == 0:
            # most hits: the first candidate, already first under its top-level keys; its recency
            # is one OrderedDict call, atomic under the GIL, so no lock (a count may be lost
            # between threads: hits is a statistic)
            self.hits += 1
            try:
                self._recency.move_to_end(id(shape))
            except KeyError:
                pass  # evicted meanwhile (the shape is alive here, so its id is nobody else's)
            return
        with self._lock:
            self.hits += 1
            if self._recency.get(id(shape)) is not shape:
                return  # evicted meanwhile
            self._recency.move_to_end(id(shape))
            if position != 0:
                others = tuple(s for s in self._by_top.get(shape.top, ()) if s is not shape)
                self._by_top[shape.top] = (shape,) + others

    def get(self, key: tuple) -> _Shape | None:
        """The cached shape of ``key`` (counted as a hit when its leaves pass: passes_known)."""
        return self._items.get(key)

    def put(self, key: tuple, rtype: str, resource: dict, template: tuple | None) -> None:
        if template is None:
            return
        shape = _Shape(key, (rtype, tuple(resource)), template)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._unindex(old)
            self._items[key] = shape
            self._recency[id(shape)] = shape
            self._by_top[shape.top] = (shape,) + self._by_top.get(shape.top, ())
            if len(self._items) > self.size:
                self._unindex(self._recency.popitem(last=False)[1])

    def _unindex(self, shape: _Shape) -> None:
        self._recency.pop(id(shape), None)
        if self._items.get(shape.key) is shape:
            del self._items[shape.key]
        rest = tuple(s for s in self._by_top.get(shape.top, ()) if s is not shape)
        if rest:
            self._by_top[shape.top] = rest
        else:
            self._by_top.pop(shape.top, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._recency.clear()
            self._by_top.clear()
            self.hits = 0


_SHAPES = _ShapeCache(4096)


@lru_cache(maxsize=None)
def _fields(cls) -> tuple[tuple[str, str, frozenset[str] | None], ...]:
    """(attribute, JSON name, allowed codes or None) of the elements worth visiting: those with
    a required binding's codes (the R4B models record them as ``enum_values`` but do not
    enforce them) and those holding nested elements. Primitive elements without codes are
    skipped, which is most of them."""
    out = []
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        enums = _complete_codes(tuple(extra["enum_values"])) if extra.get("enum_values") else None
        # primitives have a sibling "<name>__ext" field for their extensions; complex ones do not
        if enums or f"{name}__ext" not in cls.model_fields:
            out.append((name, f.alias or name, enums))
    return tuple(out)


@lru_cache(maxsize=1)
def _fhir_code_systems() -> tuple[frozenset[str], ...]:
    path = Path(__file__).resolve().parent / "spec" / "fhir-code-systems.json"
    return tuple(frozenset(codes) for codes in orjson.loads(path.read_bytes()).values())


@lru_cache(maxsize=None)
def _complete_codes(enums: tuple[str, ...]) -> frozenset[str]:
    """The codes a required binding allows. The R4B models list them only up to a "+" where the
    value set is longer (Observation.status stops at ``amended``, leaving out ``corrected``,
    ``cancelled``, ``entered-in-error`` and ``unknown``); such a list is completed with the
    smallest FHIR code system containing every listed code (``spec/fhir-code-systems.json``)."""
    listed = frozenset(c for c in enums if c != "+")
    if "+" not in enums:
        return listed
    supersets = [cs for cs in _fhir_code_systems() if listed <= cs]
    if not supersets:
        return listed
    return listed | min(supersets, key=len)


def _enum_violations(model: BaseModel, path: str) -> list[tuple[str, str, frozenset[str]]]:
    out: list[tuple[str, str, frozenset[str]]] = []
    for name, alias, enums in _fields(type(model)):
        value = getattr(model, name, None)
        if value is None:
            continue
        items = value if isinstance(value, list) else (value,)
        for i, item in enumerate(items):
            if enums is not None and isinstance(item, str):
                if item not in enums:
                    where = f"{path}.{alias}" + (f"[{i}]" if isinstance(value, list) else "")
                    out.append((where, item, enums))
            elif isinstance(item, BaseModel):
                out.extend(_enum_violations(item, f"{path}.{alias}" + (f"[{i}]" if isinstance(value, list) else "")))
    return out
