"""Search index extraction (hub.fhir.search.extract) on hand-written R4 resources and Synthea.

Expected rows follow http://hl7.org/fhir/R4/search.html (#string, #token, #reference,
#date, #number, #quantity, #uri, #composite).
"""

from __future__ import annotations

import bz2
import glob
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from tests.conftest import SHARED
from hub.fhir.search.extract import (
    DATE_MAX_US,
    DATE_MIN_US,
    IndexRows,
    compile_all,
    fallback_expressions,
    normalize_string,
    parse_date_range,
)
from hub.fhir.search import extract
from hub.fhir.search.fhirpath import UnsupportedExpression, compile_expression



def extract_index(resource: dict) -> IndexRows:
    """The rows of every parameter, those derived from others too (Observation ``patient``,
    ``combo-code``): these tests are about what each parameter's expression selects; what is
    stored instead of the derived ones is tested in tests/search/test_stored_rows.py."""
    return extract.extract_index(resource, every_parameter=True)


SYNTHEA = sorted(glob.glob(str(SHARED / "corpus" / "fhir" / "synthea" / "*.json.bz2")))
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def us(text: str) -> int:
    """Microseconds since the epoch of an ISO instant (test oracle independent of the code)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - EPOCH) // timedelta(microseconds=1)


def rows(ix: IndexRows, table: str, param: str) -> set[tuple]:
    return {r[1:] for r in getattr(ix, table) if r[0] == param}


def params(ix: IndexRows, table: str) -> set[str]:
    return {r[0] for r in getattr(ix, table)}


# --------------------------------------------------------------------------- helpers


def test_normalize_string():
    assert normalize_string("Ärztin Müller") == "arztin muller"
    assert normalize_string("ÉCOLE") == "ecole"
    assert normalize_string("Straße") == "strasse"
    assert normalize_string("Ｍüller") == "muller"  # full-width compatibility form
    assert normalize_string("张伟") == "张伟"
    assert normalize_string("plain") == "plain"


@pytest.mark.parametrize(
    "value, low, high",
    [
        ("2020", "2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"),
        ("2020-02", "2020-02-01T00:00:00Z", "2020-03-01T00:00:00Z"),
        ("2019-02", "2019-02-01T00:00:00Z", "2019-03-01T00:00:00Z"),
        ("2020-12", "2020-12-01T00:00:00Z", "2021-01-01T00:00:00Z"),
        ("2020-02-29", "2020-02-29T00:00:00Z", "2020-03-01T00:00:00Z"),
        ("2020-03-04T10:00", "2020-03-04T10:00:00Z", "2020-03-04T10:01:00Z"),
        ("2020-03-04T10:00:05", "2020-03-04T10:00:05Z", "2020-03-04T10:00:06Z"),
        ("2020-03-04T10:00:05Z", "2020-03-04T10:00:05Z", "2020-03-04T10:00:06Z"),
        ("2020-03-04T10:00:05+01:00", "2020-03-04T09:00:05Z", "2020-03-04T09:00:06Z"),
        ("2020-03-04T10:00:05-05:30", "2020-03-04T15:30:05Z", "2020-03-04T15:30:06Z"),
        ("2020-03-04T10:00:05.5Z", "2020-03-04T10:00:05.500000Z", "2020-03-04T10:00:05.600000Z"),
        ("2020-03-04T10:00:05.123Z", "2020-03-04T10:00:05.123000Z", "2020-03-04T10:00:05.124000Z"),
        ("2020-03-04T10:00:05.123456Z", "2020-03-04T10:00:05.123456Z", "2020-03-04T10:00:05.123457Z"),
        ("2020-03-04T10:00:05.123456789Z", "2020-03-04T10:00:05.123456Z", "2020-03-04T10:00:05.123457Z"),
        ("1900-01-01", "1900-01-01T00:00:00Z", "1900-01-02T00:00:00Z"),
        ("0001", "0001-01-01T00:00:00Z", "0002-01-01T00:00:00Z"),
    ],
)
def test_parse_date_range(value, low, high):
    assert parse_date_range(value) == (us(low), us(high) - 1)


def test_parse_date_range_far_future():
    lo, hi = parse_date_range("9999")
    assert lo == us("9999-01-01T00:00:00Z")
    assert hi == us("9999-12-31T23:59:59.999999Z")
    assert parse_date_range("9999-12")[1] == hi


@pytest.mark.parametrize(
    "bad",
    ["", "20", "2020-1", "2020-13", "2020-02-30", "2020/01/01", "ge2020-01", "2020-01-01T25:00:00Z",
     "2020-01-01T24:00:00Z", "2020-01-01T10:00:60Z", "2020-01-01T10:00:00.Z", "2020-01-01T10:00:00+1",
     "2020-01-01 10:00:00Z", "abcd", "10:00:00"],
)
def test_parse_date_range_rejects(bad):
    with pytest.raises(ValueError):
        parse_date_range(bad)


# --------------------------------------------------------------------------- compiler


def test_every_expression_compiles_without_fallback():
    assert compile_all() == 0
    assert fallback_expressions() == []


def test_fhirpath_subset():
    obs = {
        "resourceType": "Observation",
        "valueQuantity": {"value": 5},
        "component": [{"valueString": "a"}, {"valueQuantity": {"value": 6}}],
        "subject": {"reference": "Patient/1"},
        "extension": [{"url": "http://x", "valueString": "ext"}, {"url": "http://y", "valueBoolean": True}],
    }

    def ev(expr):
        return compile_expression(expr, "Observation")([obs], obs)

    assert ev("Observation.value.ofType(Quantity).value") == [5]
    assert ev("Observation.value as Quantity") == [{"value": 5}]
    assert ev("(Observation.value as Quantity).value") == [5]
    assert ev("Observation.component.value") == ["a", {"value": 6}]
    assert ev("Observation.component.value.ofType(string)") == ["a"]
    assert ev("Observation.value.ofType(string)") == []
    assert ev("Observation.value.ofType(Quantity) | Observation.component.value.ofType(Quantity)") == [{"value": 5}, {"value": 6}]
    assert ev("Observation.subject.where(resolve() is Patient)") == [{"reference": "Patient/1"}]
    assert ev("Observation.subject.where(resolve() is Group)") == []
    assert ev("Observation.extension('http://x').value") == ["ext"]
    assert ev("Observation.extension.where(url='http://y').value") == [True]
    assert ev("Observation.component.first().value") == ["a"]
    assert ev("Observation.component[1].value.value") == [6]
    assert ev("Observation.status.exists()") == [False]
    assert ev("Observation.value.exists() and Observation.value != false") == [True]
    assert ev("Observation.subject.reference = 'Patient/1'") == [True]
    assert ev("%resource.subject.reference") == ["Patient/1"]
    assert ev("Observation.component.value is string") == [True]
    with pytest.raises(UnsupportedExpression):
        compile_expression("Observation.value.aggregate($this)", "Observation")
    with pytest.raises(UnsupportedExpression):
        compile_expression("Observation.value + 1", "Observation")


# --------------------------------------------------------------------------- resources


def test_patient():
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {
            "lastUpdated": "2024-01-01T00:00:00Z",
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|3.1.1"],
            "tag": [{"system": "http://example.org/tags", "code": "test", "display": "Test Data"}],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
            "source": "http://hospital-a.example/fhir",
        },
        "identifier": [
            {"system": "http://hospital.example/mrn", "value": "MRN-1",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                  "display": "Medical Record Number"}], "text": "MRN"}},
            {"system": "urn:oid:2.16.156", "value": "110101199003070011"},
        ],
        "active": True,
        "name": [{"use": "official", "family": "Müller", "given": ["Anna", None, "Maria"],
                  "_given": [None, {"extension": [{"url": "http://x", "valueString": "x"}]}, None],
                  "prefix": ["Dr."]},
                 {"text": "张伟"}],
        "telecom": [{"system": "phone", "value": "+86 10 1234", "use": "home"},
                    {"system": "email", "value": "anna@example.org"}],
        "gender": "female",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "1990-03-07T08:00:00+08:00"}]},
        "deceasedDateTime": "2020-05",
        "address": [{"line": ["1 Main St", "Apt 2"], "city": "Zürich", "postalCode": "8000", "country": "CH"}],
        "generalPractitioner": [{"reference": "Practitioner/dr1"}],
        "managingOrganization": {"reference": "http://other.example/fhir/Organization/o9/_history/3"},
        "link": [{"other": {"reference": "Patient/p0"}, "type": "seealso"}],
    }
    ix = extract_index(patient)
    assert rows(ix, "string", "family") == {("muller", "Müller")}
    assert rows(ix, "string", "given") == {("anna", "Anna"), ("maria", "Maria")}
    assert rows(ix, "string", "name") == {("muller", "Müller"), ("anna", "Anna"), ("maria", "Maria"),
                                          ("dr.", "Dr."), ("张伟", "张伟")}
    assert rows(ix, "string", "address") == {("1 main st", "1 Main St"), ("apt 2", "Apt 2"),
                                             ("zurich", "Zürich"), ("8000", "8000"), ("ch", "CH")}
    assert rows(ix, "string", "address-city") == {("zurich", "Zürich")}
    assert rows(ix, "token", "identifier") == {
        ("http://hospital.example/mrn", "MRN-1", "mrn", "http://terminology.hl7.org/CodeSystem/v2-0203", "MR"),
        ("urn:oid:2.16.156", "110101199003070011", None, None, None),
    }
    assert rows(ix, "token", "gender") == {(None, "female", None, None, None)}
    assert rows(ix, "token", "active") == {(None, "true", None, None, None)}
    assert rows(ix, "token", "deceased") == {(None, "true", None, None, None)}
    assert rows(ix, "token", "phone") == {(None, "+86 10 1234", None, None, None)}
    assert rows(ix, "token", "email") == {(None, "anna@example.org", None, None, None)}
    assert rows(ix, "token", "telecom") == {(None, "+86 10 1234", None, None, None),
                                            (None, "anna@example.org", None, None, None)}
    assert rows(ix, "token", "_tag") == {("http://example.org/tags", "test", "test data", None, None)}
    assert rows(ix, "token", "_security") == {("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R", None, None, None)}
    assert rows(ix, "uri", "_profile") == {("http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|3.1.1",)}
    assert rows(ix, "uri", "_source") == {("http://hospital-a.example/fhir",)}
    # birthDate is only an extension here: no birthdate row, no crash
    assert "birthdate" not in params(ix, "date")
    assert rows(ix, "date", "death-date") == {(us("2020-05-01T00:00:00Z"), us("2020-06-01T00:00:00Z") - 1)}
    assert rows(ix, "reference", "general-practitioner") == {("Practitioner", "dr1", None, None, None)}
    assert rows(ix, "reference", "organization") == {
        ("Organization", "o9", "http://other.example/fhir/Organization/o9", None, None)}
    assert rows(ix, "reference", "link") == {("Patient", "p0", None, None, None)}
    # never indexed: kept on the resource row / no expression
    for table in ("token", "date", "string"):
        assert not params(ix, table) & {"_id", "_lastUpdated", "_text", "_content"}


def test_patient_alive_and_birthdate():
    ix = extract_index({"resourceType": "Patient", "birthDate": "1990-03-07", "deceasedBoolean": False})
    assert rows(ix, "date", "birthdate") == {(us("1990-03-07T00:00:00Z"), us("1990-03-08T00:00:00Z") - 1)}
    assert rows(ix, "token", "deceased") == {(None, "false", None, None, None)}
    # deceased absent: "exists() and != false" evaluates to false (FHIRPath three-valued logic)
    assert rows(extract_index({"resourceType": "Patient"}), "token", "deceased") == {(None, "false", None, None, None)}


LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def test_observation_quantity_and_composites():
    obs = {
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}],
                 "text": "BP"},
        "subject": {"reference": "Patient/p1", "display": "Anna"},
        "encounter": {"reference": "e1"},
        "specimen": {"reference": "s1"},
        "performer": [{"reference": "urn:uuid:6c9f2b0e-0000-4000-8000-000000000001"},
                      {"identifier": {"system": "http://npi", "value": "123"}, "type": "Practitioner"},
                      {"display": "display only"}],
        "effectivePeriod": {"start": "2021-06-01T10:00:00Z"},
        "issued": "2021-06-01T10:05:00.250+02:00",
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
             "valueQuantity": {"value": 80.5, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
        ],
    }
    ix = extract_index(obs)
    assert rows(ix, "token", "code") == {(LOINC, "85354-9", "blood pressure panel", None, None),
                                         (None, None, "bp", None, None)}
    assert rows(ix, "token", "component-code") == {(LOINC, "8480-6", None, None, None),
                                                   (LOINC, "8462-4", None, None, None)}
    assert rows(ix, "token", "combo-code") == rows(ix, "token", "code") | rows(ix, "token", "component-code")
    assert rows(ix, "reference", "subject") == {("Patient", "p1", None, None, None)}
    assert rows(ix, "reference", "patient") == {("Patient", "p1", None, None, None)}
    # bare id + single target type -> type inferred; "encounter" is shared with other
    # types and lists Encounter and EpisodeOfCare, so the type stays unknown
    assert rows(ix, "reference", "specimen") == {("Specimen", "s1", None, None, None)}
    assert rows(ix, "reference", "encounter") == {(None, "e1", None, None, None)}
    assert rows(ix, "reference", "performer") == {
        (None, None, "urn:uuid:6c9f2b0e-0000-4000-8000-000000000001", None, None),
        ("Practitioner", None, None, "http://npi", "123"),
    }
    # open-ended Period -> max sentinel
    assert rows(ix, "date", "date") == {(us("2021-06-01T10:00:00Z"), DATE_MAX_US)}
    assert params(ix, "date") == {"date"}  # R4 Observation has no "issued" parameter
    assert rows(ix, "quantity", "component-value-quantity") == {(120.0, UCUM, "mm[Hg]", "mmHg"),
                                                                (80.5, UCUM, "mm[Hg]", "mmHg")}
    assert rows(ix, "quantity", "combo-value-quantity") == rows(ix, "quantity", "component-value-quantity")
    assert rows(ix, "quantity", "value-quantity") == set()
    assert rows(ix, "composite", "component-code-value-quantity") == {
        (LOINC, "8480-6", UCUM, "mm[Hg]", 120.0, None, None),
        (LOINC, "8462-4", UCUM, "mm[Hg]", 80.5, None, None),
    }
    assert rows(ix, "composite", "combo-code-value-quantity") == rows(ix, "composite", "component-code-value-quantity")
    assert rows(ix, "composite", "code-value-quantity") == set()
    for r in ix.quantity + ix.number:
        assert isinstance(r[1], float)


def test_observation_value_choice_types():
    base = {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "1-1"}, {"system": "http://acme", "code": "A"}]}}
    cc = extract_index({**base, "valueCodeableConcept": {
        "coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}],
        "text": "Negatíve"}})
    assert rows(cc, "token", "value-concept") == {("http://snomed.info/sct", "260385009", "negative", None, None),
                                                  (None, None, "negative", None, None)}
    assert rows(cc, "string", "value-string") == {("negative", "Negatíve")}  # (value.ofType(CodeableConcept)).text
    # one composite row per (first coding x second value), text-only rows excluded
    assert rows(cc, "composite", "code-value-concept") == {
        (LOINC, "1-1", "http://snomed.info/sct", "260385009", None, None, None),
        ("http://acme", "A", "http://snomed.info/sct", "260385009", None, None, None),
    }
    assert not cc.quantity and not params(cc, "date") - {"date"}

    st = extract_index({**base, "valueString": "Trace Ämounts"})
    assert rows(st, "string", "value-string") == {("trace amounts", "Trace Ämounts")}
    assert rows(st, "composite", "code-value-string") == {
        (LOINC, "1-1", None, "trace amounts", None, None, None),
        ("http://acme", "A", None, "trace amounts", None, None, None),
    }

    pd = extract_index({**base, "valuePeriod": {"end": "2020-01-02"}})
    assert rows(pd, "date", "value-date") == {(DATE_MIN_US, us("2020-01-03T00:00:00Z") - 1)}
    assert rows(pd, "composite", "code-value-date") == {
        (LOINC, "1-1", None, None, None, DATE_MIN_US, us("2020-01-03T00:00:00Z") - 1),
        ("http://acme", "A", None, None, None, DATE_MIN_US, us("2020-01-03T00:00:00Z") - 1),
    }

    dt = extract_index({**base, "valueDateTime": "2020-01", "effectiveDateTime": "2019"})
    assert rows(dt, "date", "value-date") == {(us("2020-01-01T00:00:00Z"), us("2020-02-01T00:00:00Z") - 1)}
    assert rows(dt, "date", "date") == {(us("2019-01-01T00:00:00Z"), us("2020-01-01T00:00:00Z") - 1)}

    sd = extract_index({**base, "valueSampledData": {"origin": {"value": 0}, "period": 10, "dimensions": 1},
                        "effectiveTiming": {"event": ["2020-01-01T10:00:00Z", "2020-01-02T10:00:00Z"]}})
    assert rows(sd, "quantity", "value-quantity") == set()  # SampledData is not indexed as a quantity
    assert rows(sd, "date", "date") == {
        (us("2020-01-01T10:00:00Z"), us("2020-01-01T10:00:01Z") - 1),
        (us("2020-01-02T10:00:00Z"), us("2020-01-02T10:00:01Z") - 1),
    }
    bl = extract_index({**base, "valueBoolean": False, "effectiveInstant": "2020-01-01T00:00:00.000Z"})
    assert rows(bl, "date", "date") == {(us("2020-01-01T00:00:00Z"), us("2020-01-01T00:00:00.001Z") - 1)}


def test_condition_onset_variants():
    c = {"resourceType": "Condition", "subject": {"reference": "Group/g1"},
         "code": {"text": "Headache"},
         "onsetAge": {"value": 42, "unit": "a", "system": UCUM, "code": "a"},
         "abatementRange": {"low": {"value": 50}, "high": {"value": 60}},
         "recordedDate": "2020-01-01T00:00:00+00:00"}
    ix = extract_index(c)
    assert rows(ix, "quantity", "onset-age") == {(42.0, UCUM, "a", "a")}
    assert rows(ix, "quantity", "abatement-age") == set()  # Range: skipped
    assert rows(ix, "token", "code") == {(None, None, "headache", None, None)}
    assert rows(ix, "reference", "subject") == {("Group", "g1", None, None, None)}
    assert rows(ix, "reference", "patient") == set()  # resolve() is Patient: a Group
    c2 = {"resourceType": "Condition", "onsetString": "last summer", "abatementPeriod": {"start": "2020", "end": "2021"}}
    ix2 = extract_index(c2)
    assert rows(ix2, "string", "onset-info") == {("last summer", "last summer")}
    assert rows(ix2, "date", "onset-date") == set()
    assert rows(ix2, "date", "abatement-date") == {(us("2020-01-01T00:00:00Z"), us("2022-01-01T00:00:00Z") - 1)}


def test_medication_request_choice_reference():
    mr = {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
          "medicationReference": {"reference": "Medication/m1"},
          "subject": {"reference": "Patient/p1/_history/7"},
          "authoredOn": "2020-02-02",
          "instantiatesCanonical": ["http://example.org/PlanDefinition/pd|1.0"],
          "requester": {"reference": "Practitioner?identifier=http://npi|999"}}
    ix = extract_index(mr)
    assert rows(ix, "reference", "medication") == {("Medication", "m1", None, None, None)}
    assert rows(ix, "token", "code") == set()
    assert rows(ix, "reference", "subject") == {("Patient", "p1", None, None, None)}
    assert rows(ix, "reference", "patient") == {("Patient", "p1", None, None, None)}
    assert rows(ix, "reference", "requester") == {
        ("Practitioner", None, "Practitioner?identifier=http://npi|999", "http://npi", "999")}
    assert rows(ix, "date", "authoredon") == {(us("2020-02-02T00:00:00Z"), us("2020-02-03T00:00:00Z") - 1)}
    mr2 = {"resourceType": "MedicationRequest",
           "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                     "code": "310798"}]}}
    assert rows(extract_index(mr2), "token", "code") == {
        ("http://www.nlm.nih.gov/research/umls/rxnorm", "310798", None, None, None)}


def test_careplan_canonical_and_period():
    cp = {"resourceType": "CarePlan", "status": "active", "intent": "plan",
          "subject": {"reference": "Patient/p1"},
          "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/diabetes|2.0"],
          "instantiatesUri": ["http://example.org/protocol.pdf"],
          "period": {"start": "2020-01-01", "end": "2020-12-31"},
          "activity": [{"detail": {"status": "scheduled", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "229065009"}]},
                                   "scheduledTiming": {"repeat": {"boundsPeriod": {"start": "2020-02-01", "end": "2020-03-01"}}},
                                   "performer": [{"reference": "CareTeam/ct1"}]}}]}
    ix = extract_index(cp)
    assert rows(ix, "reference", "instantiates-canonical") == {
        (None, None, "http://example.org/fhir/PlanDefinition/diabetes", None, None)}
    assert rows(ix, "uri", "instantiates-uri") == {("http://example.org/protocol.pdf",)}
    assert rows(ix, "date", "date") == {(us("2020-01-01T00:00:00Z"), us("2021-01-01T00:00:00Z") - 1)}
    assert rows(ix, "date", "activity-date") == {(us("2020-02-01T00:00:00Z"), us("2020-03-02T00:00:00Z") - 1)}
    assert rows(ix, "reference", "performer") == {("CareTeam", "ct1", None, None, None)}
    assert rows(ix, "token", "activity-code") == {("http://snomed.info/sct", "229065009", None, None, None)}


def test_money_number_and_dedupe():
    inv = {"resourceType": "Invoice", "status": "issued",
           "totalNet": {"value": 100.5, "currency": "CNY"}, "totalGross": {"value": 110, "currency": "CNY"},
           "subject": {"reference": "Patient/p1"}, "recipient": {"reference": "Patient/p1"}}
    ix = extract_index(inv)
    assert rows(ix, "quantity", "totalnet") == {(100.5, "urn:iso:std:iso:4217", "CNY", "CNY")}
    assert rows(ix, "quantity", "totalgross") == {(110.0, "urn:iso:std:iso:4217", "CNY", "CNY")}
    ra = {"resourceType": "RiskAssessment", "status": "final",
          "prediction": [{"probabilityDecimal": 0.25}, {"probabilityRange": {"low": {"value": 1}}},
                         {"probabilityDecimal": 0.25}]}
    ix2 = extract_index(ra)
    assert ix2.number == [("probability", 0.25)]  # Range skipped, duplicates removed
    dup = {"resourceType": "Observation", "code": {"coding": [{"system": "s", "code": "c"}, {"system": "s", "code": "c"}]}}
    assert extract_index(dup).token.count(("code", "s", "c", None, None, None)) == 1


def test_reference_forms_and_resolve_filters():
    appt = {"resourceType": "Appointment", "status": "booked", "start": "2024-05-01T09:00:00+08:00",
            "participant": [
                {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
                {"actor": {"reference": "https://fhir.example.cn/r4/Practitioner/dr1"}, "status": "accepted"},
                {"actor": {"reference": "Location/l1"}, "status": "accepted"},
                {"actor": {"reference": "#contained1"}, "status": "accepted"},
                {"actor": {"reference": "urn:oid:1.2.3"}, "status": "accepted"},
                {"actor": {"reference": "abc", "type": "Device"}, "status": "accepted"},
            ]}
    ix = extract_index(appt)
    assert rows(ix, "reference", "patient") == {("Patient", "p1", None, None, None)}
    assert rows(ix, "reference", "practitioner") == {
        ("Practitioner", "dr1", "https://fhir.example.cn/r4/Practitioner/dr1", None, None)}
    assert rows(ix, "reference", "location") == {("Location", "l1", None, None, None)}
    assert rows(ix, "reference", "actor") == {
        ("Patient", "p1", None, None, None),
        ("Practitioner", "dr1", "https://fhir.example.cn/r4/Practitioner/dr1", None, None),
        ("Location", "l1", None, None, None),
        (None, None, "#contained1", None, None),
        (None, None, "urn:oid:1.2.3", None, None),
        ("Device", "abc", None, None, None),  # bare id, several targets: Reference.type used
    }
    assert rows(ix, "token", "part-status") == {(None, "accepted", None, None, None)}
    assert rows(ix, "date", "date") == {(us("2024-05-01T01:00:00Z"), us("2024-05-01T01:00:01Z") - 1)}


def test_task_and_audit_event_resolve_by_type():
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": "Patient/p1"}, "focus": {"reference": "ServiceRequest/s1"},
            "executionPeriod": {"start": "2020-01-01T00:00:00Z", "end": "2020-01-01T01:00:00Z"}}
    ix = extract_index(task)
    assert rows(ix, "reference", "patient") == {("Patient", "p1", None, None, None)}
    assert rows(ix, "reference", "subject") == {("Patient", "p1", None, None, None)}
    assert rows(ix, "reference", "focus") == {("ServiceRequest", "s1", None, None, None)}
    assert rows(ix, "date", "period") == {(us("2020-01-01T00:00:00Z"), us("2020-01-01T01:00:01Z") - 1)}
    ae = {"resourceType": "AuditEvent", "recorded": "2020-01-01T00:00:00Z",
          "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
          "agent": [{"who": {"reference": "Practitioner/dr1"}, "requestor": True}],
          "entity": [{"what": {"reference": "Patient/p1"}}, {"what": {"reference": "Observation/o1"}}],
          "source": {"observer": {"reference": "Device/d1"}}}
    ix = extract_index(ae)
    assert rows(ix, "reference", "patient") == {("Patient", "p1", None, None, None)}
    assert rows(ix, "reference", "entity") == {("Patient", "p1", None, None, None), ("Observation", "o1", None, None, None)}
    assert rows(ix, "token", "type") == {("http://dicom.nema.org/resources/ontology/DCM", "110110", None, None, None)}


def test_document_reference_relationship_composite():
    dr = {"resourceType": "DocumentReference", "status": "current",
          "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/old1"}},
                        {"code": "appends", "target": {"reference": "urn:uuid:1234"}}],
          "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/b1"}}],
          "subject": {"reference": "Patient/p1"}}
    ix = extract_index(dr)
    assert rows(ix, "composite", "relationship") == {
        (None, "replaces", "DocumentReference", "old1", None, None, None),
        (None, "appends", None, "urn:uuid:1234", None, None, None),
    }
    assert rows(ix, "token", "relation") == {(None, "replaces", None, None, None), (None, "appends", None, None, None)}
    assert rows(ix, "token", "contenttype") == {(None, "application/pdf", None, None, None)}


def test_bundle_composition_embedded_resource():
    doc = {"resourceType": "Bundle", "type": "document", "timestamp": "2020-01-01T00:00:00Z",
           "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0c3151bd"},
           "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}},
                     {"resource": {"resourceType": "Patient", "id": "p1"}}]}
    ix = extract_index(doc)
    assert rows(ix, "reference", "composition") == {("Composition", "c1", None, None, None)}
    assert rows(ix, "reference", "message") == set()
    assert rows(ix, "token", "type") == {(None, "document", None, None, None)}
    assert rows(ix, "token", "identifier") == {("urn:ietf:rfc:3986", "urn:uuid:0c3151bd", None, None, None)}


def test_terminology_resources():
    cs = {"resourceType": "CodeSystem", "url": "http://example.org/cs", "version": "1", "name": "Ex",
          "status": "active", "content": "complete", "concept": [{"code": "a"}, {"code": "b"}],
          "useContext": [{"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age"},
                          "valueRange": {"low": {"value": 1}}},
                         {"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "focus"},
                          "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}}]}
    ix = extract_index(cs)
    assert rows(ix, "uri", "url") == {("http://example.org/cs",)}
    assert rows(ix, "token", "code") == {(None, "a", None, None, None), (None, "b", None, None, None)}
    assert rows(ix, "string", "name") == {("ex", "Ex")}
    assert rows(ix, "composite", "context-type-value") == {
        ("http://terminology.hl7.org/CodeSystem/usage-context-type", "focus", "http://snomed.info/sct", "1", None, None, None)}
    assert rows(ix, "composite", "context-type-quantity") == set()
    cm = {"resourceType": "ConceptMap", "url": "http://example.org/cm", "sourceUri": "http://example.org/vs1",
          "targetCanonical": "http://example.org/vs2|3.0",
          "group": [{"source": "http://s", "target": "http://t",
                     "element": [{"code": "x", "target": [{"code": "y", "equivalence": "equivalent"}]}]}]}
    ix = extract_index(cm)
    assert rows(ix, "reference", "source-uri") == {(None, None, "http://example.org/vs1", None, None)}
    assert rows(ix, "reference", "target") == {(None, None, "http://example.org/vs2", None, None)}
    assert rows(ix, "reference", "source") == set()
    assert rows(ix, "token", "source-code") == {(None, "x", None, None, None)}
    assert rows(ix, "token", "target-code") == {(None, "y", None, None, None)}
    assert rows(ix, "uri", "source-system") == {("http://s",)}
    vs = {"resourceType": "ValueSet", "url": "http://example.org/vs", "status": "active",
          "compose": {"include": [{"system": "http://s", "concept": [{"code": "d"}]}]},
          "expansion": {"identifier": "urn:uuid:e1", "timestamp": "2020-01-01",
                        "contains": [{"system": "http://s", "code": "c"}]}}
    ix = extract_index(vs)
    assert rows(ix, "uri", "expansion") == {("urn:uuid:e1",)}
    assert rows(ix, "uri", "reference") == {("http://s",)}
    assert rows(ix, "token", "code") == {(None, "c", None, None, None), (None, "d", None, None, None)}
    assert rows(ix, "uri", "url") == {("http://example.org/vs",)}


def test_location_near_is_not_indexed_and_address():
    loc = {"resourceType": "Location", "name": "Ward 5", "alias": ["五病区"],
           "position": {"longitude": 116.4, "latitude": 39.9},
           "address": {"city": "北京", "district": "东城区", "text": "北京市东城区"},
           "managingOrganization": {"reference": "Organization/o1"}}
    ix = extract_index(loc)
    assert "near" not in {r[0] for t in ("string", "token", "number", "quantity", "uri") for r in getattr(ix, t)}
    assert rows(ix, "string", "name") == {("ward 5", "Ward 5"), ("五病区", "五病区")}
    assert rows(ix, "string", "address") == {("北京", "北京"), ("东城区", "东城区"), ("北京市东城区", "北京市东城区")}
    assert rows(ix, "reference", "organization") == {("Organization", "o1", None, None, None)}


def test_other_required_types_smoke():
    samples = [
        {"resourceType": "Practitioner", "name": [{"family": "Li", "given": ["Wei"]}],
         "qualification": [{"code": {"text": "MD"}}], "identifier": [{"system": "http://npi", "value": "1"}]},
        {"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/1"},
         "organization": {"reference": "Organization/1"}, "specialty": [{"coding": [{"system": "s", "code": "c"}]}],
         "telecom": [{"system": "email", "value": "a@b.c"}]},
        {"resourceType": "Organization", "name": "Hosp", "alias": ["H"], "type": [{"coding": [{"system": "s", "code": "prov"}]}],
         "partOf": {"reference": "Organization/root"}},
        {"resourceType": "Encounter", "status": "finished", "class": {"system": "s", "code": "AMB"},
         "subject": {"reference": "Patient/1"}, "period": {"start": "2020-01-01T10:00:00Z"},
         "participant": [{"individual": {"reference": "Practitioner/1"}}], "length": {"value": 30, "unit": "min", "system": UCUM, "code": "min"}},
        {"resourceType": "DiagnosticReport", "status": "final", "code": {"coding": [{"system": LOINC, "code": "x"}]},
         "subject": {"reference": "Patient/1"}, "result": [{"reference": "Observation/1"}], "effectiveDateTime": "2020"},
        {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/1"},
         "code": {"coding": [{"system": "s", "code": "c"}]}, "occurrenceDateTime": "2020-01-01", "requisition": {"value": "R1"}},
        {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/1"},
         "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}], "started": "2020-01-01T00:00:00Z",
         "series": [{"uid": "1.2.3.4", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
                     "instance": [{"uid": "1.2.3.4.5", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}}]}]},
        {"resourceType": "Procedure", "status": "completed", "subject": {"reference": "Patient/1"},
         "code": {"coding": [{"system": "s", "code": "c"}]}, "performedString": "2019"},
        {"resourceType": "MedicationStatement", "status": "active", "subject": {"reference": "Patient/1"},
         "medicationCodeableConcept": {"text": "aspirin"}, "effectivePeriod": {"start": "2020"}},
        {"resourceType": "MedicationAdministration", "status": "completed", "subject": {"reference": "Patient/1"},
         "medicationReference": {"reference": "Medication/1"}, "effectiveDateTime": "2020-01-01T00:00:00Z"},
        {"resourceType": "Medication", "code": {"coding": [{"system": "s", "code": "c"}]},
         "ingredient": [{"itemReference": {"reference": "Substance/1"}}], "batch": {"lotNumber": "L1", "expirationDate": "2030-01-01"}},
        {"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"}, "code": {"text": "peanut"},
         "clinicalStatus": {"coding": [{"system": "s", "code": "active"}]}, "onsetAge": {"value": 3}},
        {"resourceType": "Immunization", "status": "completed", "patient": {"reference": "Patient/1"},
         "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
         "occurrenceString": "last year", "protocolApplied": [{"series": "S1", "doseNumberPositiveInt": 1}]},
        {"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/1"},
         "participant": [{"member": {"reference": "Practitioner/1"}}], "period": {"end": "2021"}},
        {"resourceType": "Claim", "status": "active", "use": "claim", "patient": {"reference": "Patient/1"},
         "created": "2020-01-01", "provider": {"reference": "Organization/1"}, "total": {"value": 10, "currency": "USD"},
         "item": [{"sequence": 1, "productOrService": {"coding": [{"system": "s", "code": "c"}]}, "udi": [{"reference": "Device/1"}]}]},
        {"resourceType": "ExplanationOfBenefit", "status": "active", "patient": {"reference": "Patient/1"},
         "created": "2020-01-01", "claim": {"reference": "Claim/1"}, "careTeam": [{"sequence": 1, "provider": {"reference": "Practitioner/1"}}]},
        {"resourceType": "Goal", "lifecycleStatus": "active", "subject": {"reference": "Patient/1"},
         "startDate": "2020-01-01", "target": [{"dueDate": "2020-06-01"}], "description": {"text": "lose weight"}},
        {"resourceType": "Device", "udiCarrier": [{"deviceIdentifier": "D1", "carrierHRF": "(01)D1"}],
         "patient": {"reference": "Patient/1"}, "type": {"coding": [{"system": "s", "code": "c"}]}, "url": "http://d"},
        {"resourceType": "Consent", "status": "active", "scope": {"coding": [{"system": "s", "code": "patient-privacy"}]},
         "category": [{"coding": [{"system": "s", "code": "c"}]}], "patient": {"reference": "Patient/1"},
         "dateTime": "2020-01-01", "provision": {"period": {"start": "2020"}, "actor": [{"reference": {"reference": "Organization/1"}, "role": {"text": "x"}}]}},
        {"resourceType": "Provenance", "target": [{"reference": "Patient/1"}, {"reference": "Observation/2"}],
         "recorded": "2020-01-01T00:00:00Z", "occurredDateTime": "2020",
         "agent": [{"who": {"reference": "Practitioner/1"}, "type": {"coding": [{"system": "s", "code": "author"}]}}]},
        {"resourceType": "Specimen", "subject": {"reference": "Patient/1"}, "type": {"coding": [{"system": "s", "code": "blood"}]},
         "collection": {"collectedDateTime": "2020-01-01T00:00:00Z", "bodySite": {"text": "arm"}}, "accessionIdentifier": {"value": "A1"}},
        {"resourceType": "Endpoint", "status": "active", "connectionType": {"system": "s", "code": "dicom-wado-rs"},
         "address": "https://pacs.example/wado", "payloadType": [{"text": "DICOM"}], "name": "PACS"},
    ]
    expected = {  # one fact per type that proves its main paths are read
        "Practitioner": ("string", "family", ("li", "Li")),
        "PractitionerRole": ("reference", "practitioner", ("Practitioner", "1", None, None, None)),
        "Organization": ("reference", "partof", ("Organization", "root", None, None, None)),
        "Encounter": ("quantity", "length", (30.0, UCUM, "min", "min")),
        "DiagnosticReport": ("reference", "result", ("Observation", "1", None, None, None)),
        "ServiceRequest": ("token", "requisition", (None, "R1", None, None, None)),
        "ImagingStudy": ("token", "modality", ("http://dicom.nema.org/resources/ontology/DCM", "CT", None, None, None)),
        "Procedure": ("date", "date", (us("2019-01-01T00:00:00Z"), us("2020-01-01T00:00:00Z") - 1)),
        "MedicationStatement": ("token", "code", (None, None, "aspirin", None, None)),
        "MedicationAdministration": ("reference", "medication", ("Medication", "1", None, None, None)),
        "Medication": ("reference", "ingredient", ("Substance", "1", None, None, None)),
        "AllergyIntolerance": ("reference", "patient", ("Patient", "1", None, None, None)),
        "Immunization": ("string", "series", ("s1", "S1")),
        "CareTeam": ("date", "date", (DATE_MIN_US, us("2022-01-01T00:00:00Z") - 1)),
        "Claim": ("reference", "item-udi", ("Device", "1", None, None, None)),
        "ExplanationOfBenefit": ("reference", "care-team", ("Practitioner", "1", None, None, None)),
        "Goal": ("date", "target-date", (us("2020-06-01T00:00:00Z"), us("2020-06-02T00:00:00Z") - 1)),
        "Device": ("string", "udi-carrier", ("(01)d1", "(01)D1")),
        "Consent": ("reference", "actor", ("Organization", "1", None, None, None)),
        "Provenance": ("reference", "patient", ("Patient", "1", None, None, None)),
        "Specimen": ("date", "collected", (us("2020-01-01T00:00:00Z"), us("2020-01-01T00:00:01Z") - 1)),
        "Endpoint": ("token", "connection-type", ("s", "dicom-wado-rs", None, None, None)),
    }
    for res in samples:
        ix = extract_index(res)
        table, param, row = expected[res["resourceType"]]
        assert row in rows(ix, table, param), (res["resourceType"], param, getattr(ix, table))
    assert len(expected) == len(samples)


def test_unknown_type_and_odd_data():
    assert extract_index({"resourceType": "NotAType", "id": "x"}) == IndexRows()
    with pytest.raises(ValueError):
        extract_index({"id": "x"})
    odd = {"resourceType": "Observation", "code": {"coding": [None, {"display": "only display"}, "junk"]},
           "subject": {"reference": ""}, "effectiveDateTime": "not a date", "valueQuantity": {"unit": "x"},
           "performer": [None, {"reference": 5}], "_status": {"extension": []}, "identifier": [{"system": "s"}]}
    ix = extract_index(odd)
    assert rows(ix, "token", "code") == {(None, None, "only display", None, None)}
    assert not ix.date and not ix.quantity and not ix.reference


# --------------------------------------------------------------------------- Synthea


def _resolve_bundle(bundle: dict) -> list[dict]:
    """Rewrite ``urn:uuid:`` references to ``Type/id`` as transaction processing does
    (http://hl7.org/fhir/R4/http.html#trules) and return the entry resources."""
    full = {}
    for e in bundle["entry"]:
        r = e["resource"]
        if "fullUrl" in e and "id" in r:
            full[e["fullUrl"]] = f"{r['resourceType']}/{r['id']}"

    def fix(x):
        if isinstance(x, dict):
            ref = x.get("reference")
            if isinstance(ref, str) and ref in full:
                x["reference"] = full[ref]
            for v in x.values():
                fix(v)
        elif isinstance(x, list):
            for v in x:
                fix(v)

    resources = [e["resource"] for e in bundle["entry"]]
    fix(resources)
    return resources


@pytest.mark.skipif(not SYNTHEA, reason="Synthea corpus not available")
def test_synthea_walk():
    """Every Synthea resource is extracted without error, with non-trivial facts checked."""
    counts: Counter[str] = Counter()
    facts: Counter[str] = Counter()
    n_rows = 0
    for path in SYNTHEA:
        with bz2.open(path) as fh:
            bundle = orjson.loads(fh.read())
        for res in _resolve_bundle(bundle):
            ix = extract_index(res)
            rt = res["resourceType"]
            counts[rt] += 1
            n_rows += sum(len(getattr(ix, f)) for f in ("string", "token", "reference", "date", "number",
                                                        "quantity", "uri", "composite"))
            tok = {r[0] for r in ix.token}
            ref = {r[0]: r for r in ix.reference}
            if rt == "Observation":
                assert "code" in tok and "status" in tok, res["id"]
                assert ref["subject"][1] == "Patient" and ref["patient"] == ("patient",) + ref["subject"][1:]
                if "valueQuantity" in res:
                    assert any(r[0] == "value-quantity" for r in ix.quantity)
                    assert any(r[0] == "code-value-quantity" for r in ix.composite)
                    facts["obs-quantity"] += 1
                if "component" in res:
                    assert any(r[0] == "component-code-value-quantity" for r in ix.composite) or not any(
                        "valueQuantity" in c for c in res["component"])
                    facts["obs-component"] += 1
                if "effectiveDateTime" in res:
                    assert any(r[0] == "date" for r in ix.date)
            elif rt == "Patient":
                assert {"family", "given", "name", "address"} <= {r[0] for r in ix.string}
                assert "identifier" in tok and "gender" in tok
                assert any(r[0] == "birthdate" for r in ix.date)
            elif rt in ("Encounter", "Condition", "Procedure", "DiagnosticReport", "MedicationRequest",
                        "CarePlan", "CareTeam", "DocumentReference", "Immunization", "AllergyIntolerance"):
                assert ref["patient"][1] == "Patient", (rt, res["id"])
            elif rt in ("Claim", "ExplanationOfBenefit"):
                assert ref["patient"][1] == "Patient"
            elif rt == "Practitioner":
                assert any(r[0] == "identifier" and r[1] == "http://hl7.org/fhir/sid/us-npi" for r in ix.token)
            if res.get("meta", {}).get("profile"):
                assert any(r[0] == "_profile" for r in ix.uri)
                facts["profile"] += 1
    total = sum(counts.values())
    assert total > 90_000
    assert facts["obs-quantity"] > 10_000 and facts["obs-component"] > 100 and facts["profile"] > 10_000
    assert n_rows > 10 * total



def test_strings_are_clipped_to_the_index_columns_where_the_rows_are_made():
    """Every string of every row kind is at most INDEX_STR_MAX characters, the beginning of the
    value (the INSERTs no longer clip them): tokens, strings, references, uris, quantities and
    composites alike. A normalized string is clipped after normalizing (NFKD may lengthen it)."""
    from hub.storage.schema import INDEX_STR_MAX

    long = "x" * 300
    obs = {"resourceType": "Observation", "id": "o1", "status": "final",
           "meta": {"source": "urn:src:" + long, "tag": [{"system": "urn:" + long, "code": long}]},
           "identifier": [{"system": "urn:" + long, "value": long,
                           "type": {"text": "T" + long, "coding": [{"system": "urn:" + long, "code": long}]}}],
           "code": {"coding": [{"system": "urn:" + long, "code": "c" + long, "display": "D" + long}],
                    "text": "É" + long},
           "subject": {"reference": "http://example.org/fhir/Patient/" + long},
           "basedOn": [{"identifier": {"system": "urn:" + long, "value": long}}],
           "performer": [{"reference": "Practitioner?identifier=urn:x|" + long}],
           "valueQuantity": {"value": 1.5, "system": "urn:" + long, "code": long, "unit": long}}
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ä" + long, "given": [long]}],
               "telecom": [{"system": "phone", "value": long}], "address": [{"line": ["ﷺ" * 20]}]}
    seen = 0
    for resource in (obs, patient):
        rows = extract_index(resource)
        for kind in ("string", "token", "reference", "uri", "quantity", "composite"):
            for row in getattr(rows, kind):
                for value in row[1:]:
                    if isinstance(value, str):
                        assert len(value) <= INDEX_STR_MAX, (kind, row[0], len(value))
                        seen += len(value) == INDEX_STR_MAX
    assert seen >= 20
    composite = [r for r in extract_index(obs).composite if r[0] == "code-value-quantity"]
    assert composite == [("code-value-quantity", "urn:" + long[:251], ("c" + long)[:255],
                          "urn:" + long[:251], long[:255], 1.5, None, None)]
