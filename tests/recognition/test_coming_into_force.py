"""Reference data published with a future effective date re-marks stored results when it comes
into force, without anyone running ``yilian recognition retag`` (real HTTP, both engines)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from hub.recognition.results import MARK_SYSTEM
from tests.conftest import RunningHub, make_settings
from tests.recognition.test_recognition_http import (  # noqa: F401 - fixtures used by name
    TODAY,
    admin,
    lab_a,
    new_patient,
    observation,
    published,
    qualifications,
)


@pytest.fixture(scope="module")
def hub(db_url, tmp_path_factory):
    settings = make_settings(db_url, tmp_path_factory.mktemp("data"), recognition_watch_s=0.2)
    with RunningHub(settings) as h:
        yield h


def _marks(lab_a, obs_id: str) -> set[str]:
    stored = lab_a.get(f"/Observation/{obs_id}").json()
    return {t["code"] for t in stored["meta"].get("tag", []) if t["system"] == MARK_SYSTEM}


def test_a_lapse_published_ahead_removes_the_mark_when_it_comes_into_force(lab_a, admin):
    pid = new_patient(lab_a)
    obs = lab_a.post("/Observation", json=observation(pid, "urn:yilian:h001:lis", "GLU", 5.5, "mmol/L", 2)).json()
    assert _marks(lab_a, obs["id"]) == {"WH", "HB"}
    soon = (datetime.now(timezone.utc) + timedelta(seconds=6)).replace(microsecond=0)
    lapsed = qualifications(**{"H001/CAT-GLU": ("no", (TODAY - timedelta(days=400)).isoformat(),
                                                (TODAY + timedelta(days=365)).isoformat())})
    r = admin.post("/recognition/reference/qualifications", content=lapsed, headers={"Content-Type": "text/csv"},
                   params={"effective_from": soon.isoformat(timespec="seconds"), "retag": "wait"})
    assert r.status_code == 201, r.text
    if datetime.now(timezone.utc) < soon - timedelta(seconds=1):  # (a slow machine may be past it already)
        assert _marks(lab_a, obs["id"]) == {"WH", "HB"}  # not in force yet
    deadline = time.time() + 30
    while _marks(lab_a, obs["id"]) and time.time() < deadline:
        time.sleep(0.2)
    assert _marks(lab_a, obs["id"]) == set()
    assert datetime.now(timezone.utc) >= soon
