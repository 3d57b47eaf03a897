"""Front-end processor test helpers: a site config, the FEP as a real subprocess, an MLLP client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adapters.mllp import MLLPFrameReader, frame
from tests.conftest import free_port

from .fakehub import FakeHub

ROOT = Path(__file__).resolve().parents[2]


def adt(control_id: str, mrn: str, *, family: str = "王", given: str = "芳", msh15: str = "", msh16: str = "",
        charset: str = "UNICODE UTF-8", extra: str = "", trigger: str = "A01", version: str = "2.5") -> bytes:
    """An ADT^A01 message (UTF-8 unless told otherwise)."""
    msh = (f"MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|20261201080000||ADT^{trigger}^ADT_A01|{control_id}|P|{version}|||"
           f"{msh15}|{msh16}||{charset}")
    segs = [msh, "EVN|A01|20261201080000",
            f"PID|1||{mrn}^^^HOSPA^MR||{family}^{given}||19750409|F{extra}",
            "PV1|1|I|W1^101^1"]
    return ("\r".join(segs) + "\r").encode("utf-8")


class MllpClient:
    """A blocking MLLP sender for the tests (send one message, read one ACK)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 20.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = MLLPFrameReader()
        self._pending: list[bytes] = []

    def send(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.read()

    def read(self) -> bytes:
        while not self._pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the front-end processor")
            self._pending.extend(self.reader.feed(data))
        return self._pending.pop(0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    for seg in ack.split(b"\r"):
        if seg.startswith(b"MSA"):
            parts = seg.decode("utf-8", "replace").split("|")
            return parts[1], parts[2] if len(parts) > 2 else ""
    raise AssertionError(f"no MSA in {ack!r}")


def write_site(tmp: Path, hub_url: str, *, secret: str = "s3cret", client_id: str = "fep-test", org: str = "HOSPA",
               mllp: dict | None = None, extra: str = "", forwarder: str = "", outbox: str = "",
               heartbeat_s: float = 0.5) -> tuple[Path, int]:
    """Write a site TOML (secret in a separate file, as in production); returns (path, MLLP port)."""
    tmp.mkdir(parents=True, exist_ok=True)
    secret_file = tmp / "client.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    port = free_port()
    m = {"feed": "his-adt", "application_ack_wait_s": 0.0, **(mllp or {})}
    mllp_lines = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in m.items())
    text = f"""
organization = "{org}"
node = "test-fep"
data_dir = "{tmp / 'data'}"
heartbeat_s = {heartbeat_s}
log_level = "INFO"

[hub]
url = "{hub_url}"
client_id = "{client_id}"
client_secret_file = "{secret_file}"
timeout_s = 5.0

[outbox]
{outbox or "retention_s = 3600"}

[forwarder]
lanes = 2
batch_size = 50
backoff_initial_s = 0.05
backoff_max_s = 0.5
{forwarder}

[[mllp]]
name = "his"
host = "127.0.0.1"
port = {port}
{mllp_lines}
{extra}
"""
    path = tmp / "site.toml"
    path.write_text(text.replace("'", '"'))
    return path, port


class FepProcess:
    """``yilian fep run --config …`` as a real subprocess; waits for its ready line."""

    def __init__(self, config: Path):
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.log = config.parent / "fep.log"

    def start(self) -> "FepProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "yilian.cli", "fep", "run", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=self._logf, cwd=ROOT, env=env)
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            self.proc.kill()
            raise RuntimeError(f"front-end processor did not start: {line!r}\n{self.log.read_text()[-3000:]}")
        # keep draining stdout so the child never blocks on a full pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._logf.close()

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self._logf.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Poll for an event we cannot be notified of (another process's state); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def fake_hub():
    with FakeHub() as h:
        yield h


class HisSender(threading.Thread):
    """Behaves like a HIS interface engine: sends messages one by one and, when it gets no ACK
    (connection refused, reset, closed) or an AE/CE, reconnects and sends the same message again,
    until every message has been acknowledged with AA/CA. Records what was acknowledged."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], retry_pause: float = 0.02):
        super().__init__(daemon=True)
        self.port = port
        self.messages = messages
        self.retry_pause = retry_pause
        self.acked: list[str] = []
        self.errors: list[str] = []          # MSA-1 of refusals (AE/CE) seen
        self.cond = threading.Condition()
        self.stop_flag = threading.Event()

    def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.acked) >= n or not self.is_alive(), timeout):
                raise AssertionError(f"only {len(self.acked)} of {n} messages acknowledged")

    def run(self) -> None:
        client = None
        for cid, payload in self.messages:
            while not self.stop_flag.is_set():
                try:
                    if client is None:
                        client = MllpClient(self.port, timeout=10)
                    code, acked_id = msa(client.send(payload))
                except OSError:
                    if client is not None:
                        client.close()
                    client = None
                    time.sleep(self.retry_pause)
                    continue
                if code in ("AA", "CA") and acked_id == cid:
                    with self.cond:
                        self.acked.append(cid)
                        self.cond.notify_all()
                    break
                self.errors.append(code)
                time.sleep(self.retry_pause)
        if client is not None:
            client.close()
        with self.cond:
            self.cond.notify_all()


def feed(n: int, patients: int = 7, prefix: str = "M") -> list[tuple[str, bytes]]:
    """``n`` ADT messages over ``patients`` patients, control ids ``prefix0..``."""
    return [(f"{prefix}{i}", adt(f"{prefix}{i}", f"P{i % patients}")) for i in range(n)]


def assert_exactly_once_in_order(hub, messages: list[tuple[str, bytes]], acked: list[str]) -> None:
    """Every acknowledged message reached the hub once (one item id each), nothing unknown did,
    and each patient's messages arrived in the order they were sent."""
    got = hub.control_ids()
    assert set(acked) <= set(got), f"acknowledged but not in the hub: {sorted(set(acked) - set(got))[:5]}"
    assert len(got) == len(set(got)), "a message reached the hub under two item ids"
    sent = [cid for cid, _ in messages]
    assert set(got) <= set(sent)
    position = {cid: i for i, cid in enumerate(sent)}
    by_patient: dict[bytes, list[int]] = {}
    payloads = dict(messages)
    for cid in got:
        pid = payloads[cid].split(b"PID|1||", 1)[1].split(b"^", 1)[0]
        by_patient.setdefault(pid, []).append(position[cid])
    for pid, order in by_patient.items():
        assert order == sorted(order), f"patient {pid!r}: messages overtook each other"


def delivered_ids(tmp: Path) -> set[str]:
    import sqlite3

    conn = sqlite3.connect(tmp / "data" / "outbox.db")
    try:
        return {r[0] for r in conn.execute("SELECT id FROM outbox WHERE state = 'delivered'")}
    finally:
        conn.close()


def pending_count(tmp: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(tmp / "data" / "outbox.db")
    try:
        return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
    finally:
        conn.close()
