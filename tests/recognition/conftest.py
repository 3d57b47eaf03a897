"""Fixtures for the recognition tests: the sample reference data a region would publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.recognition.reference import KINDS, Reference, parse

SAMPLES = Path(__file__).resolve().parents[2] / "hub" / "recognition" / "samples"


def sample_bytes(kind: str) -> bytes:
    return (SAMPLES / f"{kind}.csv").read_bytes()


@pytest.fixture(scope="session")
def ref() -> Reference:
    return Reference.from_rows({k: parse(k, sample_bytes(k)) for k in KINDS}, {k: 1 for k in KINDS})
