"""The shape cache of ``hub.fhir.validation`` gives the full model's verdict, error for error.

Corpus resources (Synthea from ``../shared/corpus/fhir``, the HL7 mapping's outputs of the
``../shared/corpus/hl7v2`` messages, and a few hand-made ones with contained resources,
primitive extensions and primitive lists) seed the cache; then systematic mutations of each
(bad dates, codes, ids, uris, numbers out of range, empty strings, wrong JSON types, unknown
elements, list/non-list, nulls, missing or doubled elements) go through
``validate_resource`` (the cached leaf checks where the shape is known) and through the full
model (``validate_fully``), and must end alike: both accept, or both refuse with the same
diagnostics and the same expressions.
"""

from __future__ import annotations

import copy
import itertools

import orjson
import pytest

from hub.errors import HubError
from hub.fhir import validation
from hub.fhir.validation import model_class, validate_fully, validate_resource
from tests.corpus_resources import hl7_resources, needs_corpus, synthea_resources


STRING_VALUES = ["", " ", "bogus", "final", "male", "a  b", " lead", "trail ", "x" * 70, "2020-13-45",
                 "2020-02-30", "2020", "2020-01-01", "20200101", "2020-01-01T10:00:00", "2020-01-01T10:00:00Z",
                 "2020-01-01T24:00:00Z", "2020-01-01T10:00:00.123+08:00", "2016-12-31T23:59:60Z", "10:00",
                 "urn:oid:1.2.3", "a b", "not a date", "1.5", "-0", "007", "true", "aGVsbG8=", "abc=",
                 "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>", "é中文", "\t", "a\nb", "Patient/1"]
INT_VALUES = [0, 1, -1, 2**31 - 1, 2**31, -(2**31) - 1, 10**20]
FLOAT_VALUES = [0.0, -0.5, 1.5, 1e300, 123456789.123]


def _verdict(fn, resource):
    try:
        fn(resource)
    except HubError as e:
        return (type(e).__name__, e.diagnostics, tuple(getattr(e, "expression", None) or ()))
    return None


def _full(resource):
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return validate_resource(resource)
    return validate_fully(resource, model_class(resource["resourceType"]))


def _leaf_paths(node, path=()):
    """Every JSON path (with list positions) to a scalar or primitive-list leaf."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "resourceType":
                continue
            yield from _leaf_paths(v, path + (k,))
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, x in enumerate(node):
            yield from _leaf_paths(x, path + (i,))
    else:
        yield path


def _container_paths(node, path=()):
    if isinstance(node, dict):
        yield path
        for k, v in node.items():
            yield from _container_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, x in enumerate(node):
            yield from _container_paths(x, path + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _set(resource, path, value):
    out = copy.deepcopy(resource)
    _get(out, path[:-1])[path[-1]] = value
    return out


def _value_mutations(resource, leaf, turn):
    """Same JSON type, other value: the shape is kept, so the cached checks judge these. Each
    leaf gets a turn of the string values (all of them over a resource's leaves)."""
    v = _get(resource, leaf)
    if isinstance(v, bool):
        yield _set(resource, leaf, not v)
    elif isinstance(v, int):
        for x in INT_VALUES:
            yield _set(resource, leaf, x)
    elif isinstance(v, float):
        for x in FLOAT_VALUES:
            yield _set(resource, leaf, x)
    elif isinstance(v, str):
        for x in STRING_VALUES[turn % 4::4]:
            yield _set(resource, leaf, x)
    elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):  # primitive list
        for x in ("", "bogus", "2020-13-45", " a"):
            yield _set(resource, leaf, [x] * len(v))


def _shape_mutations(resource, leaf, container):
    """Other JSON types and structures: new shapes, first seen by the full model."""
    v = _get(resource, leaf)
    yield _set(resource, leaf, None)
    yield _set(resource, leaf, {"value": v})
    yield _set(resource, leaf, [v])
    yield _set(resource, leaf, [v, v])
    yield _set(resource, leaf, 7 if isinstance(v, str) else "7")
    yield _set(resource, leaf, True if not isinstance(v, bool) else "true")
    yield _set(resource, leaf, 1.25)
    removed = copy.deepcopy(resource)
    del _get(removed, leaf[:-1])[leaf[-1]]
    yield removed
    target = _get(resource, container)
    unknown = copy.deepcopy(resource)
    _get(unknown, container)["notAnElement"] = "x"
    yield unknown
    if container:
        parent = _get(resource, container[:-1])
        if isinstance(parent, list):
            doubled = copy.deepcopy(resource)
            _get(doubled, container[:-1]).append(copy.deepcopy(target))
            yield doubled
            with_null = copy.deepcopy(resource)
            _get(with_null, container[:-1]).append(None)
            yield with_null
            yield _set(resource, container[:-1], copy.deepcopy(target))  # list -> single object
        else:
            yield _set(resource, container, [copy.deepcopy(target)])  # object -> list
            yield _set(resource, container, {})
            yield _set(resource, container, [])
            yield _set(resource, container, orjson.dumps(target).decode())  # fhir_core parses JSON strings
    if "valueQuantity" in target:  # two choices of one element
        yield _set(resource, container + ("valueString",), "x")


HANDMADE = [
    {"resourceType": "Observation", "id": "o1", "status": "final",
     "contained": [{"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1980-02-03"},
                   {"resourceType": "Medication", "id": "m", "status": "active"}],
     "code": {"text": "x"}, "subject": {"reference": "#p"},
     "effectiveDateTime": "2020-01-01T10:00:00+08:00", "_effectiveDateTime": {"extension": [
         {"url": "http://example.org/ext", "valueCode": "a"}]},
     "valueQuantity": {"value": 1.5, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
     "component": [{"code": {"text": "a"}, "valueInteger": 3}, {"code": {"text": "b"}, "valueBoolean": True}]},
    {"resourceType": "Patient", "id": "p2", "name": [{"given": ["A", "B"], "_given": [None, {"id": "g2"}]}],
     "birthDate": "1990", "_birthDate": {"extension": [{"url": "http://example.org/t", "valueDateTime": "1990-01-01T00:00:00Z"}]},
     "multipleBirthInteger": 2, "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">p</div>"},
     "photo": [{"contentType": "image/png", "data": "aGVsbG8=", "size": 5}]},
    {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "gender": "male"}},
        {"resourceType": "BundleEntry", "resource": {"resourceType": "Encounter", "status": "finished",
                                                      "class": {"code": "AMB"}}}]},
]


def _distinct_by_shape(resources, limit):
    seen, out = set(), []
    for r in resources:
        try:
            shape = validation._shape(r, [])
        except validation._Unshaped:
            shape = id(r)
        if shape not in seen:
            seen.add(shape)
            out.append(r)
    return out[:limit]


def _assert_alike(resource, stats):
    fast = _verdict(validate_resource, resource)
    full = _verdict(_full, resource)
    assert fast == full, (orjson.dumps(resource).decode()[:2000], fast, full)
    stats["refused" if full else "accepted"] += 1


@pytest.mark.slow
@needs_corpus

def assert_refused_as_by_the_model(bad: dict, where: str) -> None:
    """The cached checks refuse ``bad`` with the full model's diagnostics, at ``where``."""
    with pytest.raises(HubError) as fast:
        validate_resource(bad)
    with pytest.raises(HubError) as full:
        validate_fully(bad, model_class(bad["resourceType"]))
    assert fast.value.diagnostics == full.value.diagnostics
    assert list(fast.value.expression) == [where]

def test_cached_shapes_give_the_full_models_verdict_on_corpus_resources_and_their_mutations():
    validation._SHAPES.clear()
    bases = (_distinct_by_shape(synthea_resources(5), 50) + _distinct_by_shape(hl7_resources(), 50)
             + HANDMADE)
    stats = {"accepted": 0, "refused": 0}
    for base in bases:
        assert _verdict(_full, base) is None, orjson.dumps(base)[:500]
        validate_resource(base)  # seeds the shape
        leaves = list(_leaf_paths(base))
        step = max(1, len(leaves) // 16)  # at most ~16 leaves of each resource, spread over it
        for turn, leaf in enumerate(leaves[::step]):
            for m in _value_mutations(base, leaf, turn):
                _assert_alike(m, stats)
        containers = [c for c in _container_paths(base)]
        cstep = max(1, len(containers) // 8)
        for leaf, container in zip(leaves[::step * 4], itertools.cycle(containers[::cstep])):
            for m in _shape_mutations(base, leaf, container):
                _assert_alike(m, stats)
                _assert_alike(m, stats)  # again, now that a valid new shape is known
    # the proof means something only if the fast path judged many of them, both ways
    assert validation._SHAPES.hits > 3000, validation._SHAPES.hits
    assert stats["accepted"] > 1000 and stats["refused"] > 3000, stats


def test_a_bad_leaf_in_a_known_shape_is_refused_with_the_models_own_words():
    base = {"resourceType": "Patient", "id": "a1", "gender": "female", "birthDate": "1980-02-03"}
    validate_resource(base)
    hits = validation._SHAPES.hits
    validate_resource(dict(base, birthDate="1999-12-31"))
    assert validation._SHAPES.hits == hits + 1  # judged by the cached checks
    for bad, where in ((dict(base, birthDate="1980-02-30"), "Patient.birthDate"),
                       (dict(base, gender="woman"), "Patient.gender"),
                       (dict(base, id="a b"), "Patient.id")):
        assert_refused_as_by_the_model(bad, where)
