"""The shape cache's templates (``hub.fhir.validation``): the compiled matcher of a shape accepts
exactly what the plain template walk (``_matches``) accepts, which is exactly the resources whose
shape key is the template's; and a shape found beyond the candidates tried first is still judged
by its cached checks, with the full model's verdict.

The verdicts themselves (cached checks against the full model, mutation by mutation) are proven
in test_validation_shapes.py; these tests prove the mechanism that finds the cached shape.
"""

from __future__ import annotations

import copy

import orjson
import pytest

from hub.fhir import validation
from hub.fhir.validation import model_class, validate_fully, validate_resource
from tests.corpus_resources import hl7_resources, needs_corpus, synthea_resources
from tests.fhir.test_validation_shapes import (
    HANDMADE, _container_paths, assert_refused_as_by_the_model, _distinct_by_shape, _leaf_paths, _shape_mutations, _value_mutations)


def _template_of(resource):
    leaves: list = []
    validation._shape(resource, leaves)
    return validation._template(model_class(resource["resourceType"]), resource, leaves)


def _outcome(fn, *args):
    try:
        return fn(*args)
    except validation._LeafRefused:
        return "refused"


def _key(resource):
    try:
        return validation._shape(resource, [])
    except validation._Unshaped:
        return None


def _check_against(base, template, compiled, resource, stats):
    plain = _outcome(validation._matches, resource, *template)
    fast = _outcome(compiled, resource)
    assert fast == plain, (orjson.dumps(resource).decode()[:1500], fast, plain)
    # True (or a refused leaf, found on the way) only where the shape key is the base's; a
    # resource of the base's shape is never turned away as another shape
    same = _key(resource) == _key(base)
    if plain is False:
        assert not same, orjson.dumps(resource).decode()[:1500]
    elif plain is True:
        assert same, orjson.dumps(resource).decode()[:1500]
    stats[str(plain)] += 1


@pytest.mark.slow
@needs_corpus
def test_compiled_templates_match_what_the_plain_walk_matches():
    bases = (_distinct_by_shape(synthea_resources(3), 40) + _distinct_by_shape(hl7_resources(), 40)
             + HANDMADE)
    stats = {"True": 0, "False": 0, "refused": 0}
    for base in bases:
        if _key(base) is None:
            continue  # unshaped (e.g. nulls beside objects in a list): the full model every time
        validate_fully(base, model_class(base["resourceType"]))
        template = _template_of(base)
        assert template is not None, orjson.dumps(base)[:500]
        compiled = validation._compile_template(template)
        assert compiled(base) is True
        leaves = list(_leaf_paths(base))
        step = max(1, len(leaves) // 12)
        for turn, leaf in enumerate(leaves[::step]):
            for m in _value_mutations(base, leaf, turn):
                _check_against(base, template, compiled, m, stats)
        containers = list(_container_paths(base))
        cstep = max(1, len(containers) // 6)
        for leaf, container in zip(leaves[::step * 3], containers[::cstep] * 4):
            for m in _shape_mutations(base, leaf, container):
                _check_against(base, template, compiled, m, stats)
    assert stats["True"] > 300 and stats["False"] > 1000 and stats["refused"] > 300, stats


def _patient(i: int, names: int) -> dict:
    """Patients of one top-level key set and many shapes: ``names`` names, each of its own shape."""
    name = [{"family": "F"}, {"given": ["G"]}, {"text": "T"}, {"family": "F", "given": ["G"]},
            {"use": "official", "family": "F"}, {"prefix": ["Dr"]}, {"suffix": ["Jr"]},
            {"family": "F", "text": "T"}, {"use": "usual", "text": "T"}, {"use": "temp", "given": ["G"]},
            {"family": "F", "period": {"start": "2020"}}, {"text": "T", "use": "nickname"}]
    return {"resourceType": "Patient", "id": f"p{i}", "gender": "female", "name": name[:names]}


def test_a_shape_beyond_the_candidates_tried_first_is_still_judged_by_its_cached_checks():
    validation._SHAPES.clear()
    shapes = [_patient(i, n) for i, n in enumerate(range(1, 13))]
    assert len({_key(p) for p in shapes}) == len(shapes) > validation._TRIED
    for p in shapes:  # each a new shape: the full model, then cached
        validate_resource(p)
    assert validation._SHAPES.hits == 0
    oldest = shapes[0]  # tried last among the candidates of its top-level keys
    validate_resource(dict(oldest, id="other"))
    assert validation._SHAPES.hits == 1
    # now tried first: matched without its key being computed
    calls = []
    real = validation._shape
    validation._shape = lambda *a: calls.append(a) or real(*a)
    try:
        validate_resource(dict(oldest, id="again"))
    finally:
        validation._shape = real
    assert validation._SHAPES.hits == 2 and not calls
    # a bad leaf in that shape: refused in the model's words
    for bad, where in ((dict(oldest, gender="woman"), "Patient.gender"), (dict(oldest, id="a b"), "Patient.id")):
        assert_refused_as_by_the_model(bad, where)


def test_lists_of_repeated_and_mixed_item_shapes():
    """A list's shape is the sequence of its items' distinct shapes in the order they first
    occur: repeats of a known item shape match, a new item shape or another order does not."""
    validation._SHAPES.clear()
    a, b = {"family": "F"}, {"text": "T"}
    base = {"resourceType": "Patient", "name": [a, b, a]}
    validate_resource(base)
    template = _template_of(base)
    compiled = validation._compile_template(template)
    for names, same in (([a, b], True), ([a, a, b, b, a], True), ([b, a], False), ([a], False),
                        ([a, b, {"use": "old"}], False), ([a, b, None], False), ([], False),
                        ([a, b, "x"], False)):
        r = dict(base, name=copy.deepcopy(names))
        assert validation._matches(r, *template) is same, names
        assert compiled(r) is same, names
        assert (_key(r) == _key(base)) is same, names
    # resourceType of a nested resource is part of the shape
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "contained": [{"resourceType": "Patient", "id": "p"}]}
    validate_resource(obs)
    compiled = validation._compile_template(_template_of(obs))
    other = copy.deepcopy(obs)
    other["contained"][0]["resourceType"] = "Group"
    assert compiled(other) is False
    nulled = copy.deepcopy(obs)
    nulled["contained"][0]["resourceType"] = None
    assert compiled(nulled) is False


def test_a_one_item_list_checked_in_place_matches_as_the_walk_does():
    """The compiled matcher checks a list of one object in place and longer lists item by item;
    both must answer as the walk: repeats of the item's shape match, a bad leaf in any item is
    refused, another item shape, a null or a value in the list does not match."""
    validation._SHAPES.clear()
    coding = {"system": "http://loinc.org", "code": "718-7"}
    base = {"resourceType": "Observation", "status": "final", "code": {"coding": [coding]}}
    validate_resource(base)
    template = _template_of(base)
    compiled = validation._compile_template(template)
    bad = {"system": "http://loinc.org", "code": " 718-7"}  # a code starts with no space
    for codings, outcome in (([coding], True), ([coding, coding], True), ([dict(coding, code="x")] * 3, True),
                             ([bad], "refused"), ([coding, bad], "refused"), ([{"code": "1"}], False),
                             ([coding, {"code": "1"}], False), ([None], False), ([coding, None], False),
                             (["x"], False), ([], False)):
        r = dict(base, code={"coding": copy.deepcopy(codings)})
        assert _outcome(validation._matches, r, *template) == outcome, codings
        assert _outcome(compiled, r) == outcome, codings
    assert_refused_as_by_the_model(dict(base, code={"coding": [coding, bad]}), "Observation.code.coding[1].code")


def test_a_list_of_strings_matches_as_the_walk_does():
    """A primitive list of strings (given names) is checked item by item for its type; other
    item types, an empty list or objects are another shape, a bad string is refused."""
    validation._SHAPES.clear()
    base = {"resourceType": "Patient", "name": [{"given": ["Wei"]}]}
    validate_resource(base)
    template = _template_of(base)
    compiled = validation._compile_template(template)
    for given, outcome in ((["Li"], True), (["Li", "Ming", "Li"], True), (["Li", 1], False), ([1], False),
                           ([None], False), ([], False), ([{"x": 1}], False), ("Li", False), (["Li", ""], "refused")):
        r = {"resourceType": "Patient", "name": [{"given": copy.deepcopy(given)}]}
        assert _outcome(validation._matches, r, *template) == outcome, given
        assert _outcome(compiled, r) == outcome, given


def test_lists_nested_deeper_than_the_blocks_cpython_allows_still_compile():
    """Lists of objects are checked in loops, nested in the compiled function up to a depth and
    through functions beyond it: a Questionnaire whose items nest 25 deep (past CPython's 20
    nested blocks) gets a compiled matcher that answers as the walk."""
    validation._SHAPES.clear()

    def questionnaire(depth: int, link: str = "q") -> dict:
        item: dict = {"linkId": f"{link}{depth}", "type": "display"}
        for d in range(depth - 1, 0, -1):
            item = {"linkId": f"{link}{d}", "type": "group", "item": [item]}
        return {"resourceType": "Questionnaire", "status": "active", "item": [item]}

    base = questionnaire(25)
    validate_resource(base)
    template = _template_of(base)
    compiled = validation._compile_template(template)
    assert compiled(base) is True and compiled(questionnaire(25, "other")) is True
    assert compiled(questionnaire(24)) is False
    for _ in range(2 * validation._COMPILE_AFTER):
        validate_resource(questionnaire(25, "again"))
    shape = validation._SHAPES._by_top[("Questionnaire", tuple(base))][0]
    assert shape.template is None  # compiled, not left walked


def test_a_shape_the_compiler_refuses_stays_walked(monkeypatch):
    """A template CPython cannot compile (too deep or too large) must not turn a valid resource
    into a server error: the shape keeps its walked check, and compiling is not tried again."""
    calls = []

    def refuse(template):
        calls.append(template)
        raise RecursionError("maximum recursion depth exceeded during compilation")

    monkeypatch.setattr(validation, "_compile_template", refuse)
    monkeypatch.setattr(validation, "_SHAPES", validation._ShapeCache(64))
    obs = {"resourceType": "Observation", "id": "deep-1", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
           "valueQuantity": {"value": 1.5, "unit": "g/dL"}}
    for i in range(3 * validation._COMPILE_AFTER):
        validation.validate_resource({**obs, "id": f"deep-{i}"})
    assert len(calls) <= 2  # tried once (twice if two threads raced), then never again
    with pytest.raises(Exception):
        validation.validate_resource({**obs, "status": "not-a-status"})


def test_long_values_are_not_remembered(monkeypatch):
    """The accepted-values memo keeps short strings (codes, units, times) for later resources; a
    base64 attachment of one message must not stay in memory after it was validated."""
    import base64
    import gc
    import os
    import tracemalloc

    monkeypatch.setattr(validation, "_SHAPES", validation._ShapeCache(64))
    validation._accepted.cache_clear()

    def obs(i: int) -> dict:
        return {"resourceType": "DocumentReference", "id": f"att-{i}", "status": "current",
                "content": [{"attachment": {"contentType": "application/pdf",
                                            "data": base64.b64encode(os.urandom(150_000)).decode()}}]}

    validate_resource(obs(-1))  # the shape and its checks exist before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(30):
            validate_resource(obs(i))
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, f"{kept:,} bytes kept after validating 30 attachments of 200 kB"


def test_values_that_recur_are_remembered_after_the_memo_filled(monkeypatch):
    """The accepted-values memo must not be held by the first values it met: after more distinct
    ids and references than it holds, a reference repeated by one message's results and a result
    value (a number) are each validated once, not once per resource."""
    calls: dict[str, int] = {}

    def counting(cls, name):
        validate = real(cls, name)

        def count(value):
            calls[name] = calls.get(name, 0) + 1
            return validate(value)
        return count

    real = validation._primitive_validator
    monkeypatch.setattr(validation, "_primitive_validator", counting)
    monkeypatch.setattr(validation, "_SHAPES", validation._ShapeCache(64))
    validation._accepted.cache_clear()

    def obs(i: int, patient: str, value: float) -> dict:
        return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                "subject": {"reference": f"Patient/{patient}"}, "valueQuantity": {"value": value}}

    for i in range(2 * validation._MEMO_SIZE):  # each its own patient and value
        validate_resource(obs(i, f"p{i}", i + 0.5))
    calls.clear()
    for i in range(20):
        validate_resource(obs(10_000 + i, "same", 3.25))
    assert calls.get("reference") == 1 and calls.get("value") == 1, calls
    with pytest.raises(Exception):  # a value refused is not remembered
        validate_resource(obs(1, "same", float("nan")))
    validation._accepted.cache_clear()
