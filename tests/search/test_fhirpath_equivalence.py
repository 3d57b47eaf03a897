"""The compiled FHIRPath closures (``hub.fhir.search.fhirpath``) select what a plain reading of
the same syntax tree selects, for every R4 search-parameter expression (and composite
component) over corpus resources: Synthea bundles from ``../shared/corpus/fhir``, the HL7
mapping's outputs of the ``../shared/corpus/hl7v2`` messages, and hand-made resources with the
JSON corners the compiler specialises (choice elements, nulls in primitive arrays, absolute and
conditional references, contained resources).

The oracle below walks the parser's tree node by node with the semantics the module docstring
states, one step at a time and without the compiler's fused member chains, specialised loops or
``where(resolve() is T)`` shortcut; results must be equal item for item, in order.
"""

from __future__ import annotations


import orjson
import pytest

from hub.fhir.search import fhirpath
from hub.fhir.search.fhirpath import UnsupportedExpression, compile_expression
from hub.fhir.search.registry import get_registry
from tests.corpus_resources import hl7_resources, needs_corpus, synthea_resources



def _children(node, name):
    if type(node) is not dict:
        return []
    v = node.get(name)
    if v is None:
        if name not in fhirpath.CHOICE_ELEMENTS:
            return []
        out = []
        for k, cv in node.items():
            if k.startswith(name) and k[len(name):] in fhirpath.DATA_TYPE_SUFFIXES:
                out += [x for x in cv if x is not None] if type(cv) is list else [cv]
        return out
    return [x for x in v if x is not None] if type(v) is list else [v]


def _is_context(node, ctx):
    return node in (("root",), ("this",)) or (
        node[0] == "member" and node[1] == ("root",) and node[2] in (ctx, "Resource", "DomainResource"))


def _oftype(base, type_name, nodes, root, ctx):
    if base[0] == "member" and not (base[1] == ("root",) and base[2][:1].isupper()):
        name = base[2]
        key = name + fhirpath._cap(type_name)
        out = []
        for n in _eval(base[1], nodes, root, ctx):
            if type(n) is not dict:
                continue
            if n.get(key) is not None:
                out += _children(n, key)
            elif n.get(name) is not None:
                out += [x for x in _children(n, name) if fhirpath._shape_is(x, type_name)]
        return out
    return [x for x in _eval(base, nodes, root, ctx) if fhirpath._shape_is(x, type_name)]


def _is(base, type_name, nodes, root, ctx):
    if base[0] == "func" and base[2] == "resolve" and not base[3]:
        items = _eval(base[1], nodes, root, ctx)
        return [any(fhirpath.reference_target_type(i) == type_name for i in items)] if items else []
    items = _eval(base, nodes, root, ctx)
    return [any(fhirpath._shape_is(i, type_name) for i in items)] if items else []


def _eval(node, nodes, root, ctx):  # noqa: C901 - one branch per node kind
    kind = node[0]
    if kind in ("root", "this"):
        return nodes
    if kind == "env":
        return [root]
    if kind == "lit":
        return [node[1]]
    if kind == "member":
        base, name = node[1], node[2]
        if base == ("root",) and name[:1].isupper():
            if name in (ctx, "Resource", "DomainResource"):
                return nodes
            return [n for n in nodes if type(n) is dict and n.get("resourceType") == name]
        start = nodes if _is_context(base, ctx) else _eval(base, nodes, root, ctx)
        return [c for n in start for c in _children(n, name)]
    if kind == "index":
        return _eval(node[1], nodes, root, ctx)[node[2]: node[2] + 1]
    if kind == "union":
        return _eval(node[1], nodes, root, ctx) + _eval(node[2], nodes, root, ctx)
    if kind in ("=", "!="):
        a, b = _eval(node[1], nodes, root, ctx), _eval(node[2], nodes, root, ctx)
        if not a or not b:
            return []
        return [(a == b) == (kind == "=")]
    if kind in ("and", "or"):
        a = fhirpath._bool3(_eval(node[1], nodes, root, ctx))
        b = fhirpath._bool3(_eval(node[2], nodes, root, ctx))
        if kind == "and":
            return [False] if False in (a, b) else [True] if a and b else []
        return [True] if True in (a, b) else [False] if a is False and b is False else []
    if kind == "is":
        return _is(node[1], node[2], nodes, root, ctx)
    if kind == "as":
        return _oftype(node[1], node[2], nodes, root, ctx)
    _, base, name, args = node
    if name in ("ofType", "as"):
        return _oftype(base, args[0][1], nodes, root, ctx)
    if name == "is":
        return _is(base, args[0][1], nodes, root, ctx)
    items = _eval(base, nodes, root, ctx)
    if name == "where":
        return [x for x in items if fhirpath._bool3(_eval(args[0], [x], root, None)) is True]
    if name == "exists":
        if args:
            return [any(fhirpath._bool3(_eval(args[0], [x], root, None)) is True for x in items)]
        return [bool(items)]
    if name == "empty":
        return [not items]
    if name == "not":
        b = fhirpath._bool3(items)
        return [] if b is None else [not b]
    if name == "first":
        return items[:1]
    if name == "last":
        return items[-1:]
    if name == "count":
        return [len(items)]
    if name == "hasValue":
        return [any(type(x) is not dict for x in items)]
    if name == "extension":
        url = args[0][1]
        return [e for n in items if type(n) is dict for e in n.get("extension") or ()
                if type(e) is dict and e.get("url") == url]
    raise AssertionError(f"the oracle does not read {name}()")


def _expressions(rtype: str) -> list[tuple[str, str]]:
    out = []
    for code, sp in get_registry().view(rtype).items():
        if sp.expression:
            out.append((code, sp.expression))
        for ccode, cexpr in sp.components or ():
            out.append((f"{code}${ccode}", cexpr))
    return out


def _assert_same_selections(resources: list[dict]) -> int:
    """Every expression of each resource's type, compiled and read by the oracle; returns how
    many non-empty selections were compared."""
    reg = get_registry()
    compiled: dict[tuple[str, str], tuple] = {}
    selected = 0
    for resource in resources:
        rtype = resource.get("resourceType")
        if rtype not in reg.resource_types:
            continue
        for code, expr in _expressions(rtype):
            key = (rtype, expr)
            if key not in compiled:
                try:
                    compiled[key] = (compile_expression(expr, rtype), fhirpath._Parser(expr).parse())
                except UnsupportedExpression:
                    compiled[key] = None
            if compiled[key] is None:
                continue
            fn, tree = compiled[key]
            got = fn([resource], resource)
            want = _eval(tree, [resource], resource, rtype)
            assert got == want and [type(x) for x in got] == [type(x) for x in want], (
                rtype, code, expr, orjson.dumps(resource).decode()[:1500])
            assert all(a is b for a, b in zip(got, want) if type(a) in (dict, list)), (rtype, code, expr)
            selected += bool(got)
    return selected


HANDMADE = [
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "张", "given": ["三", None, "丰"],
                                                      "_given": [None, {"id": "x"}, None]}],
     "deceasedDateTime": "2020-01-01", "multipleBirthInteger": 2, "active": True,
     "managingOrganization": {"reference": "http://example.org/fhir/Organization/o1/_history/2"},
     "generalPractitioner": [{"reference": "Practitioner?identifier=http://x|1"},
                             {"reference": "urn:uuid:0d9b5a4e-8a9d-4d5b-9a55-6d7a7f1c2b3e", "type": "Practitioner"},
                             {"reference": "#c1"}, {"display": "only a name"}, None]},
    {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"coding": [
        {"system": "http://loinc.org", "code": "2345-7"}], "text": "glucose"},
     "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2020-01-01"},
     "valueCodeableConcept": {"coding": [{"code": "pos"}]}, "valueString": "two choices at once",
     "component": [{"code": {"text": "a"}, "valueQuantity": {"value": 1, "unit": "mg"}},
                   {"code": {"text": "b"}, "valueRange": {"low": {"value": 1}}},
                   {"code": {"text": "c"}, "value": {"value": 3}}],
     "contained": [{"resourceType": "Patient", "id": "c1", "gender": "other"}],
     "hasMember": [{"reference": "Observation/o2"}, {"reference": "MolecularSequence/m1"}],
     "focus": [{"type": "Patient", "identifier": {"system": "s", "value": "v"}}]},
    {"resourceType": "Bundle", "id": "b1", "type": "document", "identifier": {"value": "1"},
     "entry": [{"resource": {"resourceType": "Composition", "id": "c", "status": "final"}},
               {"resource": {"resourceType": "MessageHeader", "id": "m"}}]},
]


def test_compiled_expressions_select_what_the_tree_reads_on_hand_made_corners():
    assert _assert_same_selections(HANDMADE) > 30


@pytest.mark.slow
@needs_corpus
def test_compiled_expressions_select_what_the_tree_reads_on_corpus_resources():
    resources = synthea_resources(12) + hl7_resources()
    assert len({r["resourceType"] for r in resources}) > 20
    assert _assert_same_selections(resources) > 50_000
