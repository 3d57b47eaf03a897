"""Front-end processor benchmark: concurrent MLLP senders -> ``yilian fep run`` -> the hub.

Run: ``python bench/fep.py [--messages 20000] [--senders 8] [--db sqlite|postgres]
[--hub-workers 1] [--ingest-workers 0] [--lanes 2] [--batch 500] [--hub-wait]``.

It starts a fresh hub (``yilian hub run``, its own data folder, or a fresh PostgreSQL database on
127.0.0.1), registers the node's client with ``yilian client add``, starts the front-end
processor as a subprocess with an MLLP receiver, then ``--senders`` asyncio connections each send
their share of distinct ADT^A01 messages one at a time (send, wait for the ACK, next), as HIS
interface engines do. Every ACK is an AA given only after the message was committed (fsync) to
the outbox. It prints:

* acknowledged: messages/s over the sending phase, ACK latency at the sender (median, p99);
* end to end: messages/s from the first send until the hub has confirmed every message (the
  outbox has nothing pending), i.e. stored durably in the hub's raw log.

``--hub-wait`` makes the forwarder ask the hub to wait for normalization (application ACKs), so
the end-to-end figure then includes the hub's HL7 -> FHIR mapping.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.mllp import MLLPFrameReader, frame  # noqa: E402

PG_ADMIN = os.environ.get("YILIAN_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
YILIAN = [sys.executable, "-m", "yilian.cli"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def adt(n: int, run: str) -> bytes:
    return (f"MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|20261201080000||ADT^A01^ADT_A01|{run}{n:09d}|P|2.5|||||CHN|UNICODE UTF-8\r"
            f"EVN|A01|20261201080000\r"
            f"PID|1||B{run}{n % 5000}^^^HOSPA^MR||王^芳||19750409|F|||浙江省杭州市^^杭州市^浙江省^310000^CHN\r"
            f"PV1|1|I|W1^101^1\r").encode("utf-8")


def start_hub(work: Path, args) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    env = {**os.environ, "YILIAN_DATA_DIR": str(work / "hub"), "YILIAN_PORT": str(port),
           "YILIAN_LOG_LEVEL": "WARNING", "YILIAN_TOKEN_SECRET": "bench-" + uuid.uuid4().hex,
           "YILIAN_INGEST_WORKERS": str(args.ingest_workers)}
    if args.db_url:
        env["YILIAN_DATABASE_URL"] = args.db_url
    subprocess.run(YILIAN + ["hub", "migrate"], env=env, check=True, capture_output=True)
    out = subprocess.run(YILIAN + ["client", "add", "fep-bench", "--scopes", "yilian/ingest", "--org", "HOSPA"],
                         env=env, check=True, capture_output=True, text=True).stdout
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("client_secret"))
    hub = subprocess.Popen(YILIAN + ["hub", "run", "--workers", str(args.hub_workers)], env=env,
                           stdout=open(work / "hub.log", "w"), stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{root}/fhir/metadata").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise RuntimeError(f"hub did not start; see {work / 'hub.log'}")
    return hub, root, secret


def start_fep(work: Path, root: str, secret: str, args) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    (work / "fep.secret").write_text(secret)
    cfg = work / "site.toml"
    cfg.write_text(f"""organization = "HOSPA"
node = "bench-fep"
data_dir = "{work / 'fep'}"
log_level = "WARNING"
[hub]
url = "{root}"
client_id = "fep-bench"
client_secret_file = "{work / 'fep.secret'}"
wait = {str(args.hub_wait).lower()}
timeout_s = 120
[forwarder]
lanes = {args.lanes}
batch_size = {args.batch}
[[mllp]]
name = "his"
feed = "his-adt"
host = "127.0.0.1"
port = {port}
""")
    fep = subprocess.Popen(YILIAN + ["fep", "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                           stderr=open(work / "fep.log", "w"))
    line = fep.stdout.readline()
    if b"ready" not in line:
        raise RuntimeError(f"front-end processor did not start; see {work / 'fep.log'}")
    return fep, port, work / "fep" / "outbox.db"


async def sender(port: int, messages: list[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames = MLLPFrameReader()
    pending: list[bytes] = []
    for msg in messages:
        t0 = time.perf_counter()
        writer.write(frame(msg))
        while not pending:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("front-end processor closed the connection")
            pending.extend(frames.feed(data))
        ack = pending.pop(0)
        latencies.append(time.perf_counter() - t0)
        if b"MSA|AA|" not in ack:
            raise RuntimeError(f"not acknowledged: {ack[:200]!r}")
    writer.close()


def pending(outbox: Path) -> int:
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(port: int, outbox: Path, args, fep_pid: int, hub_pid: int) -> None:
    run = uuid.uuid4().hex[:6]
    warm = [adt(n, run + "w") for n in range(200)]
    await sender(port, warm, [])
    per = args.messages // args.senders
    shares = [[adt(k * per + i, run) for i in range(per)] for k in range(args.senders)]
    latencies: list[float] = []
    cpu0 = cpu_seconds(fep_pid), cpu_seconds(hub_pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(sender(port, share, latencies) for share in shares))
    acked = time.perf_counter()
    while pending(outbox):
        await asyncio.sleep(0.05)
    drained = time.perf_counter()
    fep_cpu, hub_cpu = cpu_seconds(fep_pid) - cpu0[0], cpu_seconds(hub_pid) - cpu0[1]
    n = per * args.senders
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"{n} ADT^A01 from {args.senders} concurrent MLLP senders; hub on {args.db} with {args.hub_workers} "
          f"worker process(es), {args.ingest_workers} normalization thread(s); forwarder {args.lanes} lanes x batches of {args.batch}; hub wait={args.hub_wait}")
    print(f"acknowledged (stored, fsynced): {n / (acked - t0):,.0f} messages/s; ACK latency median "
          f"{statistics.median(lat) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {lat[-1] * 1000:.1f} ms")
    print(f"end to end (hub confirmed every message): {n / (drained - t0):,.0f} messages/s "
          f"({drained - t0:.1f} s; outbox drained {drained - acked:.1f} s after the last ACK)")
    print(f"CPU per message: front-end processor {fep_cpu / n * 1e6:.0f} us, hub {hub_cpu / n * 1e6:.0f} us "
          f"(machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--hub-workers", type=int, default=1, help="hub HTTP worker processes")
    ap.add_argument("--ingest-workers", type=int, default=0,
                    help="hub normalization threads per process (0: the hub only stores the raw log, as measured)")
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--hub-wait", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, outbox, hub data)")
    args = ap.parse_args()
    args.db_url = None
    admin = name = None
    if args.db == "postgres":
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"yilian_fep_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        args.db_url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    work = Path(tempfile.mkdtemp(prefix="yilian-fep-bench-"))
    hub = fep = None
    try:
        hub, root, secret = start_hub(work, args)
        fep, port, outbox = start_fep(work, root, secret, args)
        asyncio.run(drive(port, outbox, args, fep.pid, hub.pid))
    finally:
        for proc in (fep, hub):
            if proc is not None:
                proc.terminate()
                proc.wait(60)
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if admin is not None:
            from sqlalchemy import text

            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
