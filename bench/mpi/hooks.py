"""CPU spent in the store hooks of the master patient index and of recognition, per write.

Run: ``python -m bench.mpi.hooks [--workload fhir|oru|both] [--count 300] [--db sqlite|postgres|URL]
[--profile]``.

It starts a hub in this process (a temporary SQLite file, or with ``--db postgres`` a fresh
database on ``YILIAN_BENCH_PG_URL``, default the test server on 127.0.0.1; no HTTP), publishes
the recognition sample reference data (``hub/recognition/samples``), then writes, one
transaction each, either the shared FHIR benchmark's 13-resource transaction bundles
(``../shared/bench/fhir_bench/make_bundles.py``, a new patient each) through ``FhirService``, or
ORU^R01 messages (``bench/hl7v2_ingest.py``: a new patient, a visit, an order, a report and 10
results each) through the ingest service. Every ``FhirStore.before_write``/``after_write`` hook
is wrapped to count its CPU time (``time.thread_time``: the writing thread's own CPU, so the
hub's background threads — the audit writer — do not count), printed per bundle/message beside
the CPU of the whole write (the writing thread's, and the process's with its threads). The first 20 writes warm up
and are not counted. ``--profile`` prints a cProfile of the hooks alone.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_BENCH = ROOT.parent / "shared" / "bench" / "fhir_bench"
SAMPLES = ROOT / "hub" / "recognition" / "samples"
PG_ADMIN = os.environ.get("YILIAN_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WARMUP = 20


def _hook_name(hook) -> str:
    owner = getattr(hook, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{hook.__name__}"
    return f"{hook.__module__}.{getattr(hook, '__qualname__', hook)}"


class HookClock:
    """Wraps every store hook; accumulates its CPU seconds while ``counting``."""

    def __init__(self, store, profiler: cProfile.Profile | None):
        self.cpu: dict[str, float] = defaultdict(float)
        self.counting = False
        self.profiler = profiler
        self.depth = 0
        store.before_write[:] = [self._wrap("before " + _hook_name(h), h) for h in store.before_write]
        store.after_write[:] = [self._wrap("after " + _hook_name(h), h) for h in store.after_write]

    def _wrap(self, name, hook):
        def timed(conn, versions):
            # hooks write golden records through the store again: count the outermost call only
            if not self.counting or self.depth:
                return hook(conn, versions)
            self.depth += 1
            if self.profiler:
                self.profiler.enable()
            t0 = time.thread_time()
            try:
                return hook(conn, versions)
            finally:
                self.cpu[name] += time.thread_time() - t0
                if self.profiler:
                    self.profiler.disable()
                self.depth -= 1
        return timed


def publish_samples(hub) -> None:
    for kind in ("catalogue", "scopes", "qualifications", "codemaps"):
        data = (SAMPLES / f"{kind}.csv").read_bytes()
        if kind == "qualifications":  # valid around today, whatever day the benchmark runs
            lines = data.decode().splitlines()
            data = ("\n".join([lines[0]] + [",".join(ln.split(",")[:6] + ["2000-01-01", "2099-12-31"])
                                            for ln in lines[1:]]) + "\n").encode()
        hub.recognition.publish(kind, data, effective_from="2000-01-01", retag="none")


def fhir_writes(hub, count: int):
    sys.path.insert(0, str(SHARED_BENCH))
    from make_bundles import generate

    from hub.fhir.service import FhirRequest
    from hub.security.access import Access
    from hub.security.scopes import parse_scopes
    from hub.security.tokens import Principal

    access = Access(Principal("bench", "bench", parse_scopes("system/*.cruds"), "system/*.cruds"))
    bundles, _ = generate(patients=count + WARMUP, run_tag=uuid.uuid4().hex[:6])
    for b in bundles:
        def write(b=b):
            resp = hub.fhir.handle(FhirRequest("POST", "", body=b), access)
            assert resp.status == 200, resp.body
        yield write


def oru_writes(hub, count: int):
    sys.path.insert(0, str(ROOT / "bench"))
    from hl7v2_ingest import items

    from hub.ingest.api import parse_items
    from hub.security.access import Access
    from hub.security.tokens import Principal

    access = Access(Principal("fep", "fep", (), "yilian/ingest", organization="HOSPA"))
    run = uuid.uuid4().hex[:6]
    for n in range(count + WARMUP):
        batch = parse_items({"messages": items(n, 1, run)})

        def write(batch=batch):
            (r,) = hub.ingest.receive(access, "HOSPA", batch)
            assert r["status"] == "normalized", r
        yield write


def run(workload: str, count: int, db_url: str | None, profile: bool) -> None:
    from hub.api.app import Hub
    from hub.config import HubSettings

    work = Path(tempfile.mkdtemp(prefix="yilian-hooks-bench-"))
    hub = Hub(HubSettings(data_dir=work, database_url=db_url, token_secret="x" * 32, ingest_workers=0,
                          recognition_watch_s=0))
    try:
        publish_samples(hub)
        profiler = cProfile.Profile(time.thread_time) if profile else None
        clock = HookClock(hub.fhir.store, profiler)
        writes = (fhir_writes if workload == "fhir" else oru_writes)(hub, count)
        for _ in range(WARMUP):
            next(writes)()
        clock.counting = True
        cpu0, thread0 = time.process_time(), time.thread_time()
        n = 0
        for write in writes:
            write()
            n += 1
        total, thread = time.process_time() - cpu0, time.thread_time() - thread0
        unit = "bundle" if workload == "fhir" else "message"
        hooks = sum(clock.cpu.values())
        print(f"{workload}: {n} {unit}s, CPU per {unit}: {1000 * thread / n:.2f} ms in the writing thread "
              f"({1000 * total / n:.2f} ms with the hub's other threads), {1000 * hooks / n:.2f} ms of it "
              f"in the store hooks ({100 * hooks / thread:.0f} % of the writing thread)")
        for name, s in sorted(clock.cpu.items(), key=lambda kv: -kv[1]):
            print(f"  {1000 * s / n:7.3f} ms  {name}")
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
    finally:
        hub.close()
        shutil.rmtree(work, ignore_errors=True)


def fresh_postgres():
    """(URL of a new database, function dropping it)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"yilian_hooks_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("fhir", "oru", "both"), default="both")
    ap.add_argument("--count", type=int, default=300, help="bundles or messages measured")
    ap.add_argument("--db", default="sqlite", help="sqlite (a temporary file), postgres (a fresh database) or a URL")
    ap.add_argument("--profile", action="store_true", help="cProfile of the hooks")
    args = ap.parse_args()
    for w in (("fhir", "oru") if args.workload == "both" else (args.workload,)):
        url, drop = (None, None) if args.db == "sqlite" else fresh_postgres() if args.db == "postgres" \
            else (args.db, None)
        try:
            run(w, args.count, url, args.profile)
        finally:
            if drop:
                drop()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
