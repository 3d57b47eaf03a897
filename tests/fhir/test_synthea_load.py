"""The Synthea corpus through ``yilian load`` (a real process) into each engine, then the six
searches of the shared FHIR benchmark answered correctly over real HTTP.

CI loads the hospital and practitioner bundles and the first ``YILIAN_SYNTHEA_PATIENTS`` patient
bundles (default 12, to keep CI short); ``YILIAN_SYNTHEA_PATIENTS=all`` loads all 120 (the
benchmark, ``bench/fhir.sh --preload-synthea``, always does).
"""

from __future__ import annotations

import bz2
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import SHARED, RunningHub, make_settings

SYNTHEA = SHARED / "corpus" / "fhir" / "synthea"
BENCH = SHARED / "bench" / "fhir_bench"


def _corpus_files() -> list:
    if not SYNTHEA.is_dir():
        pytest.skip(f"shared corpus not found at {SYNTHEA}")
    files = sorted(SYNTHEA.glob("*.json.bz2"))
    infra = [f for f in files if f.name.startswith("0-")]
    patients = [f for f in files if not f.name.startswith("0-")]
    n = os.environ.get("YILIAN_SYNTHEA_PATIENTS", "12")
    return infra + (patients if n == "all" else patients[: int(n)])


def test_synthea_loads_completely_and_bench_searches_are_right(db_url, tmp_path):
    files = _corpus_files()
    expected = 0
    for f in files:
        expected += len(json.loads(bz2.decompress(f.read_bytes()))["entry"])
    env = {**os.environ, "YILIAN_DATABASE_URL": db_url, "YILIAN_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "yilian.cli", "load", *map(str, files)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"loaded {expected} resources from {len(files)} files" in proc.stdout
    assert "(0 failed)" in proc.stdout
    assert "[%d/%d]" % (len(files), len(files)) in proc.stderr  # progress was shown
    if db_url.startswith("sqlite"):  # the load leaves its store whole, no WAL for the next process
        wal = Path(make_url(db_url).database + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size

    sys.path.insert(0, str(BENCH))
    try:
        from make_bundles import generate
    finally:
        sys.path.pop(0)
    with RunningHub(make_settings(db_url, tmp_path / "data2")) as hub, hub.client() as c:
        # Synthea's conditional references were resolved to the organizations loaded first
        enc = c.get("/Encounter", params={"_count": 1}).json()["entry"][0]["resource"]
        org_ref = enc["serviceProvider"]["reference"]
        assert org_ref.startswith("Organization/") and c.get("/" + org_ref).status_code == 200
        assert c.get("/Patient", params={"_summary": "count"}).json()["total"] == len(files) - 2

        bundles, manifest = generate(patients=6, patients_per_bundle=1, run_tag="t", seed=7)
        pids = []
        for b in bundles:
            r = c.post("", json=b)
            assert r.status_code == 200
            loc = r.json()["entry"][0]["response"]["location"]
            pids.append(loc.split("/")[1])
        loinc = manifest["loinc_codes"]
        for pid, rec in zip(pids, manifest["patients_detail"]):
            q = urllib.parse.quote
            assert _n(c, f"/Observation?patient=Patient/{pid}&code={q('http://loinc.org|' + loinc[0])}") == 1
            assert _n(c, f"/Patient?identifier={q(rec['mrn_system'] + '|' + rec['mrn'])}") == 1
            same_family = sum(1 for r in manifest["patients_detail"] if r["family"].startswith(rec["family"]))
            assert _n(c, f"/Patient?name={q(rec['family'])}") >= same_family
            assert _n(c, f"/Observation?patient=Patient/{pid}&_include=Observation:subject") == 11
            assert _n(c, f"/DiagnosticReport?patient=Patient/{pid}&_include=DiagnosticReport:result") == 11
            assert _n(c, f"/Patient?_id={pid}&_revinclude=DiagnosticReport:patient") == 2


def _n(c, url: str) -> int:
    r = c.get(url)
    assert r.status_code == 200, r.text
    return len(r.json().get("entry", []))
