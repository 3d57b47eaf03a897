"""A hub with its DICOM services on free loopback ports, on both engines; dcmtk clients."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
from pynetdicom import evt

from adapters.dicom.reactor import on_conn_open

from tests.conftest import RunningHub, free_port, make_settings

SCU = "TESTSCU"  # the tests' own AE title, a known caller and C-MOVE destination


# The tests' pynetdicom clients use the hub's event-driven loops too: pynetdicom 3.0's own
# requestor reactor can take a response meant for a waiting send_c_*() when the answer comes back
# within microseconds (see adapters.dicom.reactor), which the hub now does.
CLIENT_HANDLERS = [(evt.EVT_CONN_OPEN, on_conn_open)]


@pytest.fixture(scope="module")
def move_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(db_url, tmp_path_factory, move_port):
    port = free_port()
    settings = make_settings(db_url, tmp_path_factory.mktemp("data"), dicom_enabled=True, dicom_port=port,
                             dicom_ae_title="YILIAN", dicom_aes={SCU: f"127.0.0.1:{move_port}",
                                                                 "FINDSCU": "127.0.0.1:1", "ECHOSCU": "127.0.0.1:1",
                                                                 "STORESCU": "127.0.0.1:1", "GETSCU": "127.0.0.1:1",
                                                                 "MOVESCU": "127.0.0.1:1"},
                             dicom_issuer_orgs={"HOSP_A": "hosp-a"}, dicom_default_org="hub")
    with RunningHub(settings) as h:
        yield h


def dicom_port(pacs) -> int:
    return pacs.hub.dicom.server.address[1]


def need(tool: str) -> str:
    """dcmtk's tool (pynetdicom installs apps of the same names into the virtualenv: not those)."""
    path = shutil.which(tool, path="/usr/bin")
    if path is None:
        pytest.fail(f"dcmtk's {tool} is not installed (Debian package dcmtk; .ci/run installs it)")
    return path


def run(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "TCP_NODELAY": "1"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def poll(fn, timeout: float = 20, interval: float = 0.1):
    """Wait for a condition that completes in the background (not a timing assertion)."""
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            return v
        time.sleep(interval)


@pytest.fixture(scope="module")
def fhir(pacs):
    """A FHIR client on the same hub as the DICOM services."""
    with pacs.client() as c:
        yield c
