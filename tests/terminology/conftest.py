from pathlib import Path

import pytest

from terminology import Terminology

DATA = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def packaged() -> Terminology:
    """The packaged data only (shared: tests must not add to it)."""
    return Terminology.load_default()


@pytest.fixture
def fresh() -> Terminology:
    """A private copy tests may add resources to."""
    return Terminology.load_default()


@pytest.fixture
def with_labs() -> Terminology:
    t = Terminology.load_default()
    t.add_lab_codes(DATA / "lab-codes-h001.csv", "H001")
    t.add_lab_codes(DATA / "lab-codes-h002.csv", "H002")
    return t
