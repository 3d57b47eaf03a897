"""The synthetic population generator and a small end-to-end accuracy check."""

from bench.mpi.evaluate import evaluate_synthetic
from bench.mpi.population import generate_population
from hub.mpi import from_fhir_patient


def test_generator_is_deterministic():
    a = generate_population(200, seed=1)
    b = generate_population(200, seed=1)
    assert [r.patient for r in a] == [r.patient for r in b]
    assert [r.patient for r in a] != [r.patient for r in generate_population(200, seed=2)]


def test_generated_records_are_fhir_patients_with_ground_truth():
    recs = generate_population(300, seed=3)
    assert len({r.person_id for r in recs}) >= 300
    assert all(r.patient["resourceType"] == "Patient" and r.patient["meta"]["source"] for r in recs)
    demos = [from_fhir_patient(r.patient) for r in recs]
    assert sum(d.rid_usable for d in demos) > len(demos) * 0.5      # most carry a valid ID
    assert any(d.is_newborn_placeholder for d in demos)               # newborns under mother's name
    assert any(d.surname == "" and d.surname_py for d in demos)       # pinyin-only registrations
    assert any(d.rid is not None and not d.rid.valid for d in demos)  # mistyped / placeholder IDs


def test_small_population_meets_precision_and_recall():
    m = evaluate_synthetic(people=1500, seed=2024)
    assert m.records > 3000
    assert m.precision >= 0.999, m.report()
    assert m.recall >= 0.95, m.report()
