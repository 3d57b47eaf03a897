"""What each process of the hub loads: ``yilian hub run`` as a real process tree, on both engines.

Memory is mostly imports (docs/scaling.md, "Memory"), so these tests check which extension
modules a running process has mapped (``/proc/<pid>/maps``) and which modules a command imports,
not sizes: the supervisor of several workers never imports the application, the front-end
processor's commands never load the hub.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")


def mapped(pid: int, fragment: str) -> bool:
    """Whether the process has a file whose path contains ``fragment`` mapped (an extension module)."""
    return fragment in Path(f"/proc/{pid}/maps").read_text()


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


class HubProcess:
    """``yilian hub run`` in a subprocess on a free port."""

    def __init__(self, db_url: str, data_dir: Path, workers: int):
        self.port = free_port()
        self.data_dir = data_dir
        self.args = ["--data-dir", str(data_dir), "--database-url", db_url]
        self.env = dict(os.environ, YILIAN_LOG_LEVEL="WARNING")
        self.cmd = [sys.executable, "-m", "yilian.cli", "hub", "run", *self.args, "--port", str(self.port),
                    "--workers", str(workers)]

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read().decode()
            try:
                if httpx.get(f"{self.root}/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the hub did not become ready")

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, scopes: str = "system/*.cruds") -> str:
        out = subprocess.run([sys.executable, "-m", "yilian.cli", "token", *self.args, "--scopes", scopes],
                             env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip()


def test_supervisor_of_several_workers_does_not_import_the_application(db_url, tmp_path):
    with HubProcess(db_url, tmp_path, workers=2) as hub:
        supervisor = hub.proc.pid  # `yilian hub run` became the server: same pid, same signals
        assert "hub.api.main" in cmdline(supervisor)
        # the first worker may answer /health/ready while the second is still importing
        deadline = time.monotonic() + 120
        while True:
            workers = [p for p in children(supervisor) if "resource_tracker" not in cmdline(p)]
            serving = [p for p in workers if mapped(p, "pydantic_core")]  # imported the application
            if len(serving) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(workers) == 2 and serving == workers
        for ext in ("pydantic_core", "_sqlite3", "psycopg", "numpy"):
            assert not mapped(supervisor, ext), f"the supervisor loaded {ext}"

        headers = {"Authorization": f"Bearer {hub.token()}"}
        created = httpx.post(f"{hub.root}/fhir/Patient", headers=headers, timeout=30,
                             json={"resourceType": "Patient", "name": [{"family": "Zhang"}]})
        assert created.status_code == 201, created.text
        pid = created.json()["id"]
        # whichever worker takes each request reads what the other one wrote
        for _ in range(6):
            r = httpx.get(f"{hub.root}/fhir/Patient/{pid}", headers=headers, timeout=30)
            assert r.status_code == 200 and r.json()["name"][0]["family"] == "Zhang"
        hub.proc.send_signal(signal.SIGTERM)
        assert hub.proc.wait(60) == 0
        assert all(not Path(f"/proc/{p}").exists() or "zombie" in Path(f"/proc/{p}/status").read_text()
                   for p in workers)


@pytest.mark.parametrize("command", [["fep", "run", "--help"], ["fep", "status", "--help"]])
def test_front_end_processor_commands_do_not_load_the_hub(command):
    code = ("import sys\nfrom yilian.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'hub' or m.startswith('hub.')))")
    out = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


#: what only DICOM pixel handling needs (rendered frames): tens of MB in every process that imports it
PIXEL_STACK = ("numpy", "PIL", "pydicom.pixels")

_FHIR_ONLY_SESSION = r"""
import json, sys
from pathlib import Path
from tests.conftest import RunningHub, make_settings

def loaded():
    return [m for m in sys.argv[3].split(",") if m in sys.modules]

seen = {}
with RunningHub(make_settings(sys.argv[1], Path(sys.argv[2]))) as hub:
    seen["started"] = loaded()
    with hub.client() as fhir:
        assert fhir.get("/metadata").status_code == 200
        created = fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Wang"}]})
        assert created.status_code == 201, created.text
        pid = created.json()["id"]
        assert fhir.get(f"/Patient/{pid}").status_code == 200
        obs = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
               "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
               "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}}]}
        assert fhir.post("", json=bundle).status_code == 200
        found = fhir.get("/Observation", params={"patient": pid, "_include": "Observation:subject"})
        assert found.status_code == 200 and len(found.json()["entry"]) == 2
    seen["after FHIR requests"] = loaded()
print(json.dumps(seen))
"""


def test_fhir_requests_do_not_load_the_dicom_pixel_stack(db_url, tmp_path):
    """The hub with every component installed (DICOM too) answers FHIR reads, writes, searches
    and transactions without importing numpy, Pillow or pydicom's pixel handling: only a
    DICOM request that needs pixels may load them."""
    out = subprocess.run([sys.executable, "-c", _FHIR_ONLY_SESSION, db_url, str(tmp_path), ",".join(PIXEL_STACK)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"started": [], "after FHIR requests": []}
