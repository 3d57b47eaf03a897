"""The CapabilityStatement lists every registered operation; required bindings over HTTP: codes the R4B models list only up to "+" are completed from the
R4 code systems, and a code outside the binding is still refused with the element named."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("status", ["corrected", "cancelled", "entered-in-error", "unknown"])
def test_observation_statuses_beyond_the_models_list_are_accepted(fhir, status):
    r = fhir.post("/Observation", json={"resourceType": "Observation", "status": status,
                                        "code": {"text": "haemoglobin"}})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == status


def test_encounter_and_report_statuses_beyond_the_models_list_are_accepted(fhir):
    enc = fhir.post("/Encounter", json={"resourceType": "Encounter", "status": "unknown",
                                        "class": {"code": "AMB"}})
    assert enc.status_code == 201, enc.text
    rep = fhir.post("/DiagnosticReport", json={"resourceType": "DiagnosticReport", "status": "corrected",
                                               "code": {"text": "CBC"}})
    assert rep.status_code == 201, rep.text


def test_a_status_outside_the_binding_is_refused_naming_the_element(fhir):
    r = fhir.post("/Observation", json={"resourceType": "Observation", "status": "revised",
                                        "code": {"text": "haemoglobin"}})
    assert r.status_code in (400, 422)
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Observation.status"]
    assert "'revised'" in issue["diagnostics"] and "corrected" in issue["diagnostics"]


def test_metadata_lists_the_operations_the_components_registered(hub):
    import httpx

    cs = httpx.get(hub.base + "/metadata").json()
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    ops = {o["name"]: o["definition"] for o in patient["operation"]}
    assert ops["everything"] == "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    assert ops["match"] == "http://hl7.org/fhir/OperationDefinition/Patient-match"
    # every registered operation is listed on its type (or at the system level)
    listed = {(r["type"], o["name"]) for r in cs["rest"][0]["resource"] for o in r.get("operation", [])}
    listed |= {(None, o["name"]) for o in cs["rest"][0]["operation"]}
    assert set(hub.hub.fhir.operations) <= listed


def test_metadata_is_dated_when_the_hub_process_started(db_url, tmp_path):
    """Not a date fixed in the code: the capabilities are those of the running process."""
    from datetime import UTC, datetime

    import httpx

    from tests.conftest import RunningHub, make_settings

    before = datetime.now(UTC).replace(microsecond=0)
    with RunningHub(make_settings(db_url, tmp_path)) as h:
        after = datetime.now(UTC)
        cs = httpx.get(h.base + "/metadata").json()
    assert before <= datetime.fromisoformat(cs["date"]) <= after
