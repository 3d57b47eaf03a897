"""A hub process's GIL switch interval is shortened by the ingest (its lock holder waits at each
SQLite statement for the GIL a preparing thread holds), never lengthened."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from hub.ingest.service import SWITCH_INTERVAL_S, make_ingest_service


@pytest.fixture
def restore_interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def _settings():
    return SimpleNamespace(ingest_profiles_file=None, ingest_batch=20, ingest_wait_s=5.0, ingest_max_attempts=5)


def _engine():
    return SimpleNamespace(dialect=SimpleNamespace(name="sqlite"))


def test_the_default_interval_is_shortened(restore_interval):
    sys.setswitchinterval(0.005)
    make_ingest_service(_engine(), SimpleNamespace(), _settings())
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)


def test_a_shorter_interval_stays(restore_interval):
    sys.setswitchinterval(SWITCH_INTERVAL_S / 2)
    make_ingest_service(_engine(), SimpleNamespace(), _settings())
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S / 2)
