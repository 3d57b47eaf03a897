"""``extract_index`` with its remembered parts (the applicable parameters per tuple of top-level
keys, plain references' rows by text, reference target types by text) gives the rows of the plain
evaluation: every plan entry in the plan's order, guards ignored, each Reference through
``reference_rows``. Checked over corpus resources, twice (the second pass with everything
remembered), and on hand-made references that must not share a remembered row."""

from __future__ import annotations

import orjson
import pytest

from hub.fhir.search import extract, fhirpath
from hub.fhir.search.extract import IndexRows, extract_index, reference_rows
from hub.fhir.search.registry import get_registry
from tests.corpus_resources import hl7_resources, needs_corpus, synthea_resources


def _plain(resource: dict) -> IndexRows:
    """The rows as the plan defines them, nothing remembered across resources, and no guard:
    every entry is evaluated (an entry its guard would skip must select nothing)."""
    rows = IndexRows()
    reg = get_registry()
    rtype = resource["resourceType"]
    if rtype not in reg.resource_types:
        return rows
    plan = extract._plan(rtype)
    tables = {"string": rows.string, "token": rows.token, "date": rows.date, "number": rows.number,
              "quantity": rows.quantity, "uri": rows.uri}
    n_simple, n_refs = len(plan.simple), len(plan.references)
    for i in range(n_simple + n_refs + len(plan.composites)):
        if i < n_simple:
            _g, code, table, fn, emit = plan.simple[i]
            vals = fn([resource], resource)
            if vals:
                emit(code, vals, tables[table])
        elif i < n_simple + n_refs:
            _g, code, fn, targets = plan.references[i - n_simple]
            for v in fn([resource], resource):
                row = reference_rows(code, v, targets, reg.resource_types)
                if row:
                    rows.reference.append(row)
        else:
            _g, code, fn, parts = plan.composites[i - n_simple - n_refs]
            roots = fn([resource], resource)
            if roots:
                extract._composite_rows(code, resource, roots, parts, reg.resource_types, rows.composite)
    for kind in extract._ROW_KINDS:
        setattr(rows, kind, list(dict.fromkeys(getattr(rows, kind))))
    return rows


def _forget():
    extract._TAILS.clear()
    fhirpath._LITERAL_TYPES.clear()
    for rtype in get_registry().resource_types:
        extract._plan(rtype)._steps.clear()


@pytest.mark.slow
@needs_corpus
def test_remembered_parts_give_the_plain_rows_on_corpus_resources():
    _forget()
    resources = synthea_resources(3) + hl7_resources()
    with_refs = 0
    for turn in range(2):
        for r in resources:
            got, want = extract_index(r), _plain(r)
            assert got == want, (turn, orjson.dumps(r).decode()[:1500])
            with_refs += bool(got.reference)
    assert with_refs > 1000 and len(extract._TAILS) > 100


def test_references_that_look_alike_keep_their_own_rows():
    _forget()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    cases = [
        dict(obs, subject={"reference": "Patient/1"}),
        dict(obs, subject={"reference": "Patient/1", "display": "someone"}),
        dict(obs, subject={"reference": "Patient/1", "type": "Group"}),
        dict(obs, subject={"reference": "Patient/1", "identifier": {"system": "s", "value": "v"}}),
        dict(obs, subject={"reference": "1"}),  # bare id: typed by the parameter's one target
        dict(obs, subject={"reference": "1", "type": "Patient"}),
        dict(obs, subject={"reference": "Group/1"}),
        dict(obs, subject={"reference": "urn:uuid:0d9b5a4e-8a9d-4d5b-9a55-6d7a7f1c2b3e"}),
        dict(obs, subject={"reference": "#c"}, contained=[{"resourceType": "Patient", "id": "c"}]),
        dict(obs, subject={"display": "only a name"}),
        dict(obs, focus=[{"reference": "1"}, {"reference": "Patient/1"}], basedOn=[{"reference": "1"}]),
        dict(obs, hasMember=[{"reference": "http://x.org/fhir/Observation/2/_history/1"}]),
        # guards by a child of a top-level object (meta.tag), and by a choice element's keys
        dict(obs, meta={"source": "urn:s"}, effectiveDateTime="2024"),
        dict(obs, meta={"tag": [{"code": "t"}], "profile": ["http://p"]}, effectivePeriod={"start": "2024"}),
        dict(obs, meta=[{"tag": [{"code": "t"}]}], valueQuantity={"value": 1}),  # not an object: looked at
        dict(obs, component={"code": {"text": "c"}, "valueString": "v"}),
        dict(obs, performer=[{"reference": "Practitioner?identifier=http://x|1"}]),
    ]
    for turn in range(2):
        for r in cases:
            assert extract_index(r) == _plain(r), (turn, r)
    # a bare "1" is typed by the one target of the parameter that selects it (specimen), not
    # by another's (based-on has several): a remembered row of one is not the other's
    both = dict(obs, specimen={"reference": "1"}, basedOn=[{"reference": "1"}])
    for turn in range(2):
        rows = extract_index(both).reference
        assert ("specimen", "Specimen", "1", None, None, None) in rows, rows
        assert ("based-on", None, "1", None, None, None) in rows, rows
        assert rows == _plain(both).reference
