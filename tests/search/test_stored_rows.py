"""Which index rows are stored (hub.fhir.search.registry.covering_params,
hub.fhir.search.extract.stored_rows): a parameter whose rows include every row of other
parameters keeps only the rest, and the rows it drops are always rows of those parameters."""

from __future__ import annotations

import bz2
from pathlib import Path

import orjson
import pytest

from hub.fhir.search.extract import IndexRows, extract_index, rows_of_param, stored_rows
from hub.fhir.search.registry import SearchParam, get_registry
from tests.search.test_extract import _resolve_bundle

SYNTHEA = sorted((Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "fhir" / "synthea").glob("*.json.bz2"))


@pytest.fixture(scope="module")
def reg():
    return get_registry()


def test_covering_parameters(reg):
    # unions of other parameters' branches: no rows of their own
    assert reg.get("Observation", "combo-code").derived_from == (("code", None), ("component-code", None))
    assert reg.get("Observation", "combo-value-quantity").derived_from == (
        ("component-value-quantity", None), ("value-quantity", None))
    assert reg.get("Observation", "combo-code-value-quantity").derived_from == (
        ("code-value-quantity", None), ("component-code-value-quantity", None))
    assert reg.get("Patient", "phonetic").derived_from == (("name", None),)
    assert reg.get("Patient", "phonetic").stored_codes == ("name",)
    # same branches: the first by code is stored whole
    assert reg.get("Patient", "name").stored_as == (("name", None),)
    # a branch of its own (alias) besides name's: stores the rows phonetic lacks
    assert reg.get("Organization", "name").stored_with == ("phonetic",)
    assert reg.get("Organization", "name").stored_as == (("name", None), ("phonetic", None))
    # a type filter: Observation patient = subject.where(resolve() is Patient)
    assert reg.get("Observation", "patient").derived_from == (("subject", "Patient"),)
    assert reg.get("AuditEvent", "patient").derived_from == (("agent", "Patient"), ("entity", "Patient"))
    assert reg.get("Encounter", "practitioner").derived_from == (("participant", "Practitioner"),)
    # different targets: DeviceUseStatement subject (Group|Patient) and patient (Patient)
    assert reg.get("DeviceUseStatement", "subject").stored_as == (("subject", None),)
    # composites with other component expressions are not alike (value-date vs value-quantity)
    assert reg.get("Observation", "code-value-date").stored_as == (("code-value-date", None),)
    # no stored parameter selects EpisodeOfCare.careManager unfiltered
    assert reg.get("EpisodeOfCare", "care-manager").stored_as == (("care-manager", None),)


def test_a_type_filter_on_a_one_target_parameter_is_not_folded():
    """A bare id takes the type of a parameter's only target: ``Q.where(resolve() is T)`` of a
    one-target Q is not Q's rows of type T (``{"reference": "1"}`` has Q's type and no resolve()
    type), so it is stored itself."""
    from hub.fhir.search.registry import covering_params

    def param(code, expr, targets):
        return SearchParam("Basic", code, "reference", expr, targets, (), (), (), "urn:" + code)

    one = {"author": param("author", "Basic.author", ("Patient",)),
           "who": param("who", "Basic.author.where(resolve() is Patient)", ("Patient",))}
    assert "who" not in covering_params(one)
    many = {"author": param("author", "Basic.author", ("Patient", "Group")),
            "who": param("who", "Basic.author.where(resolve() is Patient)", ("Patient",))}
    assert covering_params(many)["who"] == ((), (("author", "Patient"),))
    # the type must be one of the source's targets (an embedded resource makes a row only then)
    other = {"author": param("author", "Basic.author", ("Device", "Group")),
             "who": param("who", "Basic.author.where(resolve() is Patient)", ("Patient",))}
    assert "who" not in covering_params(other)
    # a source with a branch the filtered parameter lacks would bring rows that are not its
    wider = {"author": param("author", "Basic.author | Basic.subject", ("Patient", "Group")),
             "who": param("who", "Basic.author.where(resolve() is Patient)", ("Patient",))}
    assert "who" not in covering_params(wider)


def test_parameters_read_by_name_elsewhere_are_stored_whole(reg):
    """The recognition engine, the master patient index and the write checks read these
    parameters' rows by name (hub.recognition, hub.mpi.merge): they must hold all their rows."""
    for rtype, code in [("DiagnosticReport", "result"), ("Observation", "subject"), ("Observation", "code"),
                        ("Observation", "date"), ("ImagingStudy", "basedon"), ("ImagingStudy", "identifier"),
                        ("Patient", "_tag"), ("Patient", "link"), ("Observation", "_tag")]:
        assert reg.get(rtype, code).stored_as == ((code, None),), (rtype, code)


def test_derived_parameters_are_not_extracted_and_stored_rows_keep_the_rest():
    obs = {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/1"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
           "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                          "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}
    rows = extract_index(obs)
    every = extract_index(obs, every_parameter=True)
    derived = {"combo-code", "combo-value-quantity", "combo-code-value-quantity", "patient"}
    for kind in ("token", "quantity", "composite", "reference"):
        assert not [r for r in getattr(rows, kind) if r[0] in derived]
        assert getattr(rows, kind) == [r for r in getattr(every, kind) if r[0] not in derived]
    assert [r for r in every.reference if r[0] == "patient"]
    assert stored_rows("Observation", rows) is rows  # nothing else to drop
    # the logical rows of a partly covered parameter keep all of them, the stored ones the rest
    org = {"resourceType": "Organization", "name": "Centre", "alias": ["Zhongxin", "Centre"]}
    logical = extract_index(org)
    kept = stored_rows("Organization", logical)
    assert {r[2] for r in logical.string if r[0] == "name"} == {"Centre", "Zhongxin"}
    assert {r[2] for r in kept.string if r[0] == "name"} == {"Zhongxin"}
    assert {r for r in kept.string if r[0] != "name"} == {r for r in logical.string if r[0] != "name"}
    # a resource type without covered parameters: the rows themselves
    rows = extract_index({"resourceType": "Encounter", "status": "finished"})
    assert stored_rows("Encounter", rows) is rows


def _check(res: dict, reg) -> int:
    """Every parameter's rows (its expression's) are exactly what a search reads for it from the
    stored rows (SearchParam.stored_as, rows_of_param): the derivation loses and adds nothing."""
    rtype = res["resourceType"]
    logical = extract_index(res, every_parameter=True)
    kept = stored_rows(rtype, extract_index(res))
    checked = 0
    for code, sp in reg.view(rtype).items():
        if sp.stored_as == ((code, None),) or sp.type not in INDEX_KINDS:
            continue
        kind = sp.type
        mine = {r[1:] for r in getattr(logical, kind) if r[0] == code}
        assert {r[1:] for r in rows_of_param(getattr(kept, kind), sp)} == mine, (rtype, code, res.get("id"))
        checked += bool(mine)
    return checked


INDEX_KINDS = ("string", "token", "reference", "date", "number", "quantity", "uri", "composite")


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
        # resolve() is T as the index reads the type: literal, Reference.type, embedded, bare, odd
        {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/1/_history/2"}},
        {"resourceType": "Observation", "status": "final", "subject": {"reference": "http://x/fhir/Patient/2"}},
        {"resourceType": "Observation", "status": "final", "subject": {"reference": "7", "type": "Patient"}},
        {"resourceType": "Observation", "status": "final", "subject": {"reference": "urn:uuid:1", "type": "Patient"}},
        {"resourceType": "Observation", "status": "final",
         "subject": {"identifier": {"value": "v"}, "type": "Patient"}},
        {"resourceType": "Observation", "status": "final",
         "subject": {"reference": "Patient/bad id", "type": "Patient"}},
        {"resourceType": "Observation", "status": "final", "subject": {"reference": "Foo/1", "type": "Patient"}},
        {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient?identifier=s|v"}},
        {"resourceType": "Observation", "status": "final", "subject": {"resourceType": "Patient", "id": "3"}},
        {"resourceType": "Observation", "status": "final", "subject": {"reference": "Group/1", "type": "Patient"}},
        {"resourceType": "AuditEvent", "agent": [{"who": {"reference": "Patient/1"}, "requestor": True}],
         "entity": [{"what": {"reference": "Patient/2"}}, {"what": {"reference": "Observation/3"}}]},
        {"resourceType": "Encounter", "status": "finished", "subject": {"reference": "Patient/1"},
         "participant": [{"individual": {"reference": "Practitioner/1"}},
                         {"individual": {"reference": "RelatedPerson/2"}}]},
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
