"""Helpers for the mapping tests: corpus location, parse+convert, validation with the hub's validator."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hl7v2 import parse_message
from hub.fhir.validation import validate_resource
from mappings import convert

CORPUS_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "hl7v2"
HARDCASES = CORPUS_DIR / "synthetic-hardcases"

needs_corpus = pytest.mark.skipif(not (CORPUS_DIR / "index.tsv").is_file(),
                                  reason=f"HL7 v2 corpus not found at {CORPUS_DIR}")

def validate(resource: dict) -> None:
    """The hub's validator (R4B models plus required-binding codes, completed from the R4 code
    systems where the models stop at "+")."""
    validate_resource(resource)


def hardcase(name: str, organization: str = "HOSPA", profile=None):
    path = next(HARDCASES.glob(f"{name}*.hl7"))
    return convert(parse_message(path.read_bytes()), organization, profile)


def only(result, rtype: str) -> dict:
    found = result.resources(rtype)
    assert len(found) == 1, f"{len(found)} {rtype} resources"
    return found[0]
