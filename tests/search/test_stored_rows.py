"""Which index rows are stored (hub.fhir.search.registry.covering_params,
hub.fhir.search.extract.stored_rows): a parameter whose rows include every row of other
parameters keeps only the rest, and the rows it drops are always rows of those parameters."""

from __future__ import annotations

import bz2
from pathlib import Path

import orjson
import pytest

from hub.fhir.search.extract import IndexRows, extract_index, stored_rows
from hub.fhir.search.registry import get_registry
from tests.search.test_extract import _resolve_bundle

SYNTHEA = sorted((Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "fhir" / "synthea").glob("*.json.bz2"))


@pytest.fixture(scope="module")
def reg():
    return get_registry()


def test_covering_parameters(reg):
    assert reg.get("Observation", "combo-code").stored_with == ("code", "component-code")
    assert reg.get("Observation", "combo-value-quantity").stored_with == ("component-value-quantity", "value-quantity")
    assert reg.get("Observation", "combo-code-value-quantity").stored_with == (
        "code-value-quantity", "component-code-value-quantity")
    assert reg.get("Patient", "phonetic").stored_with == ("name",)
    assert reg.get("Patient", "phonetic").stored_codes == ("phonetic", "name")
    # same branches: the first by code is stored whole
    assert reg.get("Patient", "name").stored_with == ()
    # a type filter is no union branch: Observation patient = subject.where(resolve() is Patient)
    assert reg.get("Observation", "patient").stored_with == ()
    # different targets: DeviceUseStatement subject (Group|Patient) and patient (Patient)
    assert reg.get("DeviceUseStatement", "subject").stored_with == ()
    # composites with other component expressions are not alike (value-date vs value-quantity)
    assert reg.get("Observation", "code-value-date").stored_with == ()


def test_parameters_read_by_name_elsewhere_are_stored_whole(reg):
    """The recognition engine, the master patient index and the write checks read these
    parameters' rows by name (hub.recognition, hub.mpi.merge): they must hold all their rows."""
    for rtype, code in [("DiagnosticReport", "result"), ("Observation", "subject"), ("Observation", "code"),
                        ("Observation", "date"), ("ImagingStudy", "basedon"), ("ImagingStudy", "identifier"),
                        ("Patient", "_tag"), ("Patient", "link"), ("Observation", "_tag")]:
        assert reg.get(rtype, code).stored_with == (), (rtype, code)


def test_stored_rows_drop_only_rows_of_the_covering_parameters():
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
           "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                          "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}
    logical = extract_index(obs)
    kept = stored_rows("Observation", logical)
    assert not [r for r in kept.token if r[0] == "combo-code"]
    assert not [r for r in kept.quantity if r[0] == "combo-value-quantity"]
    assert not [r for r in kept.composite if r[0].startswith("combo-")]
    assert [r for r in logical.token if r[0] == "combo-code"]  # the logical rows are left as they were
    assert {r for r in kept.token if r[0] != "combo-code"} == {r for r in logical.token if r[0] != "combo-code"}
    # a resource type without covered parameters: the rows themselves
    rows = extract_index({"resourceType": "Encounter", "status": "finished"})
    assert stored_rows("Encounter", rows) is rows


def _check(res: dict, reg) -> int:
    """rows(Q) ⊆ rows(P) for every covering Q of P, and stored rows of P and its Q's give P's rows."""
    rtype = res["resourceType"]
    logical = extract_index(res)
    kept = stored_rows(rtype, logical)
    checked = 0
    for code, sp in reg.view(rtype).items():
        if not sp.stored_with:
            continue
        kind = sp.type
        tails = lambda rows, codes: {r[1:] for r in getattr(rows, kind) if r[0] in codes}  # noqa: E731
        mine = tails(logical, {code})
        for base in sp.stored_with:
            assert tails(logical, {base}) <= mine, (rtype, code, base, res.get("id"))
        assert tails(kept, set(sp.stored_codes)) == mine, (rtype, code, res.get("id"))
        checked += bool(mine)
    return checked


def test_invariant_on_shapes(reg):
    samples = [
        {"resourceType": "Patient", "name": [{"family": "Wang", "given": ["Fang"], "text": "王芳"}]},
        {"resourceType": "Organization", "name": "Centre", "alias": ["Zhongxin", "Centre"]},
        {"resourceType": "Coverage", "status": "active", "beneficiary": {"reference": "123"}},
        {"resourceType": "Coverage", "status": "active", "beneficiary": {"identifier": {"system": "s", "value": "v"}}},
        {"resourceType": "EnrollmentRequest", "candidate": {"reference": "http://x/fhir/Patient/1/_history/2"}},
        {"resourceType": "Linkage", "item": [{"type": "source", "resource": {"reference": "Patient/1"}},
                                             {"type": "alternate", "resource": {"reference": "Patient/2"}}]},
        {"resourceType": "CodeSystem", "status": "draft", "content": "complete", "url": "http://cs"},
        {"resourceType": "Observation", "status": "final", "dataAbsentReason": {"text": "lost"},
         "component": [{"code": {"text": "x"}, "dataAbsentReason": {"coding": [{"code": "error"}]},
                        "valueCodeableConcept": {"coding": [{"system": "s", "code": "c"}]}}],
         "code": {"coding": [{"system": "s", "code": "c"}]}, "valueCodeableConcept": {"text": "pos"}},
    ]
    assert sum(_check(res, reg) for res in samples) >= len(samples)


@pytest.mark.skipif(not SYNTHEA, reason="Synthea corpus not available")
def test_invariant_on_synthea(reg):
    checked = 0
    for path in SYNTHEA[:25]:
        with bz2.open(path) as fh:
            for res in _resolve_bundle(orjson.loads(fh.read())):
                checked += _check(res, reg)
    assert checked > 1000


def test_rows_of_unknown_types_pass_through():
    assert stored_rows("NotAType", IndexRows()) == IndexRows()
