"""A nested resource whose ``resourceType`` is not a string (http.html#create: an invalid body is
refused with 422 and an OperationOutcome): the shape cache leaves it to the full model, which
words the refusal, over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from hub.errors import HubError
from hub.fhir.validation import model_class, validate_fully

BODIES = [
    {"resourceType": "Patient", "contained": [{"resourceType": None, "id": "x"}]},
    {"resourceType": "Patient", "contained": [{"resourceType": 7, "id": "x"}]},
    {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": None}}]},
]


@pytest.mark.parametrize("body", BODIES)
def test_a_nested_resource_type_that_is_not_a_string_is_refused_with_the_models_words(fhir, body):
    with pytest.raises(HubError) as full:
        validate_fully(body, model_class(body["resourceType"]))
    r = fhir.post(f"/{body['resourceType']}", json=body)
    assert r.status_code == full.value.status == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["diagnostics"] == full.value.diagnostics
