"""Helpers for the mapping tests: corpus location, parse+convert, validation with the hub's validator."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

from adapters.hl7v2 import parse_message
from hub.errors import InvalidResource
from hub.fhir.validation import validate_resource
from mappings import convert

CORPUS_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "hl7v2"
SPEC_DIR = Path(__file__).resolve().parents[3] / "shared" / "spec" / "fhir-r4"
HARDCASES = CORPUS_DIR / "synthetic-hardcases"

needs_corpus = pytest.mark.skipif(not (CORPUS_DIR / "index.tsv").is_file(),
                                  reason=f"HL7 v2 corpus not found at {CORPUS_DIR}")

_ENUM_ISSUE = re.compile(r"^(\w+)\.([\w.\[\]]+): '([^']+)' is not one of the codes the element's required binding "
                         r"allows \(\+, ")
_INDEX = re.compile(r"\[\d+\]")
#: the elements whose R4 code lists the fhir.resources models truncate at "+" (a parent code):
#: the hub validator then refuses valid R4 codes such as Observation.status "corrected"
_TRUNCATED = {"Observation.status": "http://hl7.org/fhir/observation-status",
              "Encounter.status": "http://hl7.org/fhir/encounter-status",
              "DiagnosticReport.status": "http://hl7.org/fhir/diagnostic-report-status",
              "ServiceRequest.status": "http://hl7.org/fhir/request-status",
              "Immunization.status": "http://hl7.org/fhir/event-status",
              "Appointment.status": "http://hl7.org/fhir/appointmentstatus",
              "DocumentReference.status": "http://hl7.org/fhir/document-reference-status",
              "DocumentReference.docStatus": "http://hl7.org/fhir/composition-status"}


@lru_cache(maxsize=1)
def r4_codes() -> dict[str, set[str]]:
    """Codes of the FHIR R4 code systems (shared/spec/fhir-r4/valuesets.json), by URL."""
    out: dict[str, set[str]] = {}
    data = json.loads((SPEC_DIR / "valuesets.json").read_text(encoding="utf-8"))

    def walk(concepts, into):
        for c in concepts:
            into.add(c["code"])
            walk(c.get("concept", []), into)
    for e in data["entry"]:
        r = e["resource"]
        if r["resourceType"] == "CodeSystem" and r.get("url"):
            walk(r.get("concept", []), out.setdefault(r["url"], set()))
    return out


def validate(resource: dict) -> None:
    """The hub's validator, except for one defect it has: for the elements in ``_TRUNCATED``
    it only knows the codes before "+" in R4's list; such an issue passes when the code is in
    the element's R4 code system, every other issue fails."""
    try:
        validate_resource(resource)
    except InvalidResource as err:
        for issue in str(err).split("; "):
            m = _ENUM_ISSUE.match(issue)
            path = (m.group(1) + "." + _INDEX.sub("", m.group(2))) if m else None
            if not m or path not in _TRUNCATED or m.group(3) not in r4_codes().get(_TRUNCATED[path], ()):
                raise


def hardcase(name: str, organization: str = "HOSPA", profile=None):
    path = next(HARDCASES.glob(f"{name}*.hl7"))
    return convert(parse_message(path.read_bytes()), organization, profile)


def only(result, rtype: str) -> dict:
    found = result.resources(rtype)
    assert len(found) == 1, f"{len(found)} {rtype} resources"
    return found[0]
