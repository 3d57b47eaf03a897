"""How long the ingest holds the write lock (wall clock) while another thread of its process
runs Python, by GIL switch interval.

Run: ``python bench/ingest_gil_contention.py [--messages 500] [--switch-ms 5 0.5 ...]``.

In a hub process a request thread applying a batch holds the database's write lock (on SQLite
the only one) while the process's other request threads parse, map and check their messages.
The lock holder gives up the GIL at every SQLite statement; a thread running Python keeps it
until the switch interval forces it out. This runs the ingest in process (``IngestService
.receive``, no HTTP, ORU^R01 of ``bench/hl7v2_ingest.py``) with one such preparing thread beside
it, each switch interval in a fresh hub, and prints the wall time and CPU per message spent
inside write transactions, and the ingest thread's rate.

Measured 2026-12-01 (machine load 8): the write lock held 36-54 ms of wall per message at 5 ms,
22-25 ms at 0.5 ms, for the same CPU. Over HTTP (``bench/hl7v2_ingest.py``, 2 hub processes, 4,000
messages, load 2-3) a 0.5 ms interval set in the hub did not raise the rate (75 / 134 / 109
against 117 / 136 / 80 messages/s at 5 ms) and cost more hub CPU per message (11.6 / 9.8 / 11.8
against 9.1 / 9.1 / 11.5 ms), so the hub keeps CPython's 5 ms.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def run(switch_s: float, n_msgs: int) -> str:
    from sqlalchemy import event

    import hl7v2_ingest as bench
    from adapters.hl7v2 import parse_message
    from hub.api.app import Hub
    from hub.config import HubSettings
    from hub.fhir.bundles import check_entries
    from hub.ingest.api import parse_items
    from hub.security.access import Access
    from hub.security.tokens import Principal
    from hub.storage.db import in_write_tx
    from mappings import convert

    work = Path(tempfile.mkdtemp(prefix="yilian-gil-bench-"))
    hub = Hub(HubSettings(data_dir=work, token_secret="x" * 32, ingest_workers=0))
    sys.setswitchinterval(switch_s)  # for this process, the hub created
    wall = cpu = 0.0
    started: dict[int, tuple[float, float]] = {}

    def begin(conn) -> None:
        if in_write_tx():
            started[id(conn)] = (time.perf_counter(), time.thread_time())

    def end(conn) -> None:
        nonlocal wall, cpu
        t = started.pop(id(conn), None)
        if t is not None:
            wall += time.perf_counter() - t[0]
            cpu += time.thread_time() - t[1]

    for name, fn in (("begin", begin), ("commit", end), ("rollback", end)):
        event.listen(hub.engine, name, fn)
    access = Access(Principal("fep", "fep", (), "yilian/ingest", organization="HOSPA"))
    tag = uuid.uuid4().hex[:6]
    stop = threading.Event()

    def preparing() -> None:  # what another request thread does outside the lock
        raws = [bench.oru_r01(i, "z" + tag) for i in range(50)]
        while not stop.is_set():
            for r in raws:
                check_entries(convert(parse_message(r), organization="HOSPA").bundle)

    try:
        hub.ingest.receive(access, "HOSPA", parse_items({"messages": bench.items(0, 100, tag + "w")}))
        batches = [parse_items({"messages": bench.items(s, 100, tag)}) for s in range(0, n_msgs, 100)]
        th = threading.Thread(target=preparing, daemon=True)
        th.start()
        wall = cpu = 0.0
        t0 = time.perf_counter()
        for b in batches:
            hub.ingest.receive(access, "HOSPA", b)
        elapsed = time.perf_counter() - t0
        stop.set()
        th.join()
    finally:
        hub.close()
        shutil.rmtree(work, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    return (f"switch interval {1000 * switch_s:.1f} ms: inside write transactions per message {1000 * wall / n_msgs:.2f} ms "
            f"wall, {1000 * cpu / n_msgs:.2f} ms CPU; ingest thread {n_msgs / elapsed:.0f} messages/s (load {load})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--switch-ms", type=float, nargs="+", default=[5.0, 0.5, 5.0, 0.5])
    args = ap.parse_args()
    for ms in args.switch_ms:
        print(run(ms / 1000, args.messages), flush=True)


if __name__ == "__main__":
    main()
