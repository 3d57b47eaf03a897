"""Registry facts checked against the FHIR R4 SearchParameter definitions.

References: http://hl7.org/fhir/R4/searchparameter-registry.html,
http://hl7.org/fhir/R4/compartmentdefinition-patient.html.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.fhir.search.fhirpath import split_union
from hub.fhir.search.registry import SPEC_DIR, SearchParam, get_registry, load_registry

SHARED = Path("/work/shared/spec/fhir-r4")

REQUIRED_TYPES = """Patient Practitioner PractitionerRole Organization Location Encounter Observation
DiagnosticReport ServiceRequest ImagingStudy DocumentReference Condition Procedure MedicationRequest
MedicationStatement MedicationAdministration Medication AllergyIntolerance Immunization CarePlan
CareTeam Claim ExplanationOfBenefit Goal Device Task Appointment Consent Provenance AuditEvent
Specimen Endpoint CodeSystem ValueSet ConceptMap Bundle""".split()


@pytest.fixture(scope="module")
def reg():
    return get_registry()


def _raw_params() -> list[dict]:
    doc = json.loads((SPEC_DIR / "search-parameters.json").read_text(encoding="utf-8"))
    return doc["searchParameters"]


def test_cached(reg):
    assert get_registry() is reg


def test_all_types_covered(reg):
    raw = _raw_params()
    bases = {b for sp in raw for b in sp["base"]} - {"Resource", "DomainResource"}
    assert bases <= reg.resource_types
    assert set(REQUIRED_TYPES) <= reg.resource_types
    assert len(reg.resource_types) >= 145  # every R4 resource type named by the spec files
    # every (base, code) of the definitions is in the registry, with the right type/url
    n = 0
    for sp in raw:
        for base in sp["base"]:
            if base in ("Resource", "DomainResource"):
                continue
            p = reg.get(base, sp["code"])
            assert p is not None, (base, sp["code"])
            assert (p.type, p.url, p.resource_type) == (sp["type"], sp["url"], base)
            n += 1
    assert n > 1300


def test_reduced_spec_matches_shared_copy():
    if not (SHARED / "search-parameters.json").exists():
        pytest.skip("shared spec not available")
    full = json.loads((SHARED / "search-parameters.json").read_text(encoding="utf-8"))
    reduced = _raw_params()
    assert len(reduced) == len(full["entry"]) == 1378
    for r, e in zip(reduced, full["entry"]):
        for k, v in r.items():
            assert e["resource"][k] == v


def test_observation_basics(reg):
    code = reg.get("Observation", "code")
    assert code.type == "token" and code.expression == "Observation.code"
    subject = reg.get("Observation", "subject")
    assert subject.type == "reference"
    assert {"Patient", "Group", "Device", "Location"} <= set(subject.targets)
    assert reg.get("Observation", "patient").expression == "Observation.subject.where(resolve() is Patient)"
    assert reg.get("Observation", "date").comparators[:2] == ("eq", "ne")
    assert reg.get("Observation", "value-quantity").expression == "Observation.value.ofType(Quantity) | Observation.value.ofType(SampledData)"
    assert reg.get("Observation", "nope") is None
    assert reg.get("NoSuchType", "code") is None


def test_composites(reg):
    cvq = reg.get("Observation", "code-value-quantity")
    assert cvq.type == "composite"
    assert cvq.expression == "Observation"
    assert cvq.components == (("code", "code"), ("value-quantity", "value.ofType(Quantity)"))
    combo = reg.get("Observation", "combo-code-value-quantity")
    assert combo.expression == "Observation | Observation.component"
    assert combo.components[0] == ("combo-code", "code")
    # R4 defines the DocumentReference relationship components the wrong way round
    assert reg.get("DocumentReference", "relationship").components == (("relation", "code"), ("relatesto", "target"))
    for t in reg.resource_types:
        for p in reg.view(t).values():
            assert bool(p.components) == (p.type == "composite")
            for ccode, _ in p.components:
                assert reg.get(t, ccode) is not None, (t, p.code, ccode)


def test_multi_base_expressions_are_split(reg):
    assert reg.get("Condition", "patient").expression == "Condition.subject.where(resolve() is Patient)"
    assert reg.get("AllergyIntolerance", "patient").expression == "AllergyIntolerance.patient"
    assert reg.get("Patient", "phone").expression == "Patient.telecom.where(system='phone')"
    assert reg.get("MedicationRequest", "code").expression == "MedicationRequest.medication.ofType(CodeableConcept)"
    # R4 InsurancePlan-name is "name | alias" without the type prefix
    assert reg.get("InsurancePlan", "name").expression == "InsurancePlan.name | InsurancePlan.alias"
    for t in reg.resource_types:
        for p in reg.view(t).values():
            if p.expression is None:
                continue
            for part in split_union(p.expression):
                assert part.lstrip("(").startswith(t), (t, p.code, p.expression)


def test_resource_level_params(reg):
    params = reg.for_type("Patient")
    for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content"):
        assert code in params
    assert params["_tag"].expression == "Patient.meta.tag"
    assert params["_profile"].type == "uri"
    assert params["_text"].expression is None
    assert reg.get("Bundle", "_text") is None  # Bundle is not a DomainResource
    assert reg.get("Bundle", "_tag") is not None
    params["_tag"] = None  # for_type returns a copy
    assert reg.get("Patient", "_tag") is not None


def test_modifiers_and_comparators(reg):
    assert "exact" in reg.get("Patient", "name").modifiers
    assert "text" in reg.get("Observation", "code").modifiers
    assert "identifier" in reg.get("Observation", "subject").modifiers
    assert reg.get("Observation", "code").comparators == ()
    assert set(reg.get("Observation", "value-quantity").comparators) == {"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}
    assert reg.get("Location", "near").type == "special"


def test_patient_compartment(reg):
    assert reg.compartment_params("Observation") == ("subject", "performer")
    # the structured data (not the narrative table, which says "patient") is authoritative
    assert reg.compartment_params("Encounter") == ("subject",)
    assert reg.compartment_params("AllergyIntolerance") == ("patient", "recorder", "asserter")
    assert reg.compartment_params("Patient") == ("link",)
    assert reg.compartment_params("Practitioner") == ()
    assert reg.compartment_params("Nope") == ()
    n = 0
    for t in reg.resource_types:
        for code in reg.compartment_params(t):
            p = reg.get(t, code)
            assert p is not None and p.type == "reference", (t, code)
            n += 1
    assert n > 90


def test_frozen():
    p = get_registry().get("Patient", "name")
    assert isinstance(p, SearchParam)
    with pytest.raises(AttributeError):
        p.code = "x"  # type: ignore[misc]


def test_load_unreduced_bundle(tmp_path):
    if not (SHARED / "search-parameters.json").exists():
        pytest.skip("shared spec not available")
    for name in ("search-parameters.json", "compartmentdefinition-patient.json"):
        (tmp_path / name).write_bytes((SHARED / name).read_bytes())
    r = load_registry(tmp_path)
    assert r.get("Observation", "code") == get_registry().get("Observation", "code")
