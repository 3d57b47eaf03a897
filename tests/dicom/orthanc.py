"""A throw-away Orthanc (Debian package) on free loopback ports, started and stopped by a test.

Orthanc 1.10 listens on every interface and has no bind-address option, so it runs with the
benchmark's ``bindlo.c`` LD_PRELOAD shim (shared/bench/dicom_bench) that turns wildcard binds
into loopback ones; ``RemoteAccessAllowed`` stays false as a second guard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import SHARED, free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    def __init__(self, base: Path, modalities: dict[str, tuple[str, str, int]], aet: str = "ORTHANC"):
        self.base = base
        self.aet = aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.modalities = modalities
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "Orthanc":
        exe = shutil.which("Orthanc")
        if exe is None:
            raise RuntimeError("Orthanc is not installed (Debian packages orthanc orthanc-dicomweb; .ci/run)")
        self.base.mkdir(parents=True, exist_ok=True)
        shim = self.base / "bindlo.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim),
                        str(SHARED / "bench" / "dicom_bench" / "bindlo.c"), "-ldl"], check=True)
        config = {
            "Name": "yilian-test", "StorageDirectory": str(self.base / "storage"),
            "IndexDirectory": str(self.base / "storage"), "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "WebDavEnabled": False,
            "DicomAet": self.aet, "DicomPort": self.dicom_port, "DicomCheckCalledAet": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "Plugins": [str(PLUGIN)] if PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.base / "orthanc.json").write_text(json.dumps(config))
        env = {**os.environ, "LD_PRELOAD": str(shim), "TCP_NODELAY": "1"}
        self.log = open(self.base / "orthanc.log", "wb")
        self.proc = subprocess.Popen(["Orthanc", str(self.base / "orthanc.json")], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.base / 'orthanc.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def rest(self, method: str, path: str, **kw):
        r = httpx.request(method, f"{self.url}{path}", timeout=60, **kw)
        r.raise_for_status()
        if not r.content:
            return None
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
