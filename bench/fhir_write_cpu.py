"""CPU cost of the FHIR write path, in process: transaction bundles through ``process_bundle``.

Run: ``python bench/fhir_write_cpu.py [--kind synthetic|oru|both] [--bundles 300] [--hooks]
[--db-url URL] [--profile]``.

It creates a store on a temporary SQLite file (or the database of ``--db-url``), then posts
``--bundles`` transaction bundles one at a time through :func:`hub.fhir.bundles.process_bundle`
and reports ``time.process_time()`` per bundle and per resource (median and mean over the
measured bundles; the first 20 are a warm-up and not counted).

* ``synthetic``: the 13-resource bundles of ``../shared/bench/fhir_bench/make_bundles.py``
  (Patient, Encounter, 10 Observations, DiagnosticReport; POST with urn:uuid references), what
  ``bench/fhir.sh`` posts.
* ``oru``: the bundles the HL7 mapping makes of ``bench/hl7v2_ingest.py``'s ORU^R01 messages
  (PUT entries with ids), what the ingest applies (after its ``drop_held_back_entries``, which
  is counted too).

Without ``--hooks`` only the FHIR server is measured (no master patient index, no recognition
hooks); with it, the whole hub (``hub.api.app.Hub``) is built and its store hooks run too.
The shared corpus is looked for beside the checkout (``YILIAN_SHARED`` to point elsewhere).
``--profile`` prints a cProfile of the measured phase (sorted by cumulative time).
``--parts`` measures, without a database, the CPU per bundle of the write path's steps that
are functions of the resources alone: validation, index extraction, the reference walk (the
best of three passes over the bundles, after a warm-up pass that fills the shape cache).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import copy
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(Path(os.environ.get("YILIAN_SHARED", ROOT.parent / "shared")) / "bench" / "fhir_bench"))

WARMUP = 20


def synthetic_bundles(n: int, tag: str) -> list[dict]:
    from make_bundles import generate

    return generate(patients=n, run_tag=tag)[0]


def oru_bundles(n: int, tag: str) -> list[dict]:
    from adapters.hl7v2 import parse_message
    from hl7v2_ingest import oru_r01
    from mappings import convert

    return [convert(parse_message(oru_r01(i, tag)), organization="HOSPA").bundle for i in range(n)]


def parts(kinds: tuple[str, ...], n: int) -> None:
    from hub.fhir.bundles import _walk_references, check_entries
    from hub.fhir.search.extract import extract_index
    from hub.fhir.validation import validate_resource

    tag = str(int(time.time()))
    for kind in kinds:
        bundles = (synthetic_bundles if kind == "synthetic" else oru_bundles)(n, f"{kind}{tag}")
        resources = [e["resource"] for b in bundles for e in b["entry"]]

        def cpu_per_bundle(step, items) -> float:
            """Best of three passes of ``step`` over ``items``, in ms of thread CPU per bundle."""
            best = float("inf")
            for _ in range(3):
                c0 = time.thread_time()
                for x in items:
                    step(x)
                best = min(best, time.thread_time() - c0)
            return best / len(bundles) * 1e3

        for r in resources:  # warm-up: shapes cached, plans compiled
            validate_resource(r)
        figures = {"validation": cpu_per_bundle(validate_resource, resources),
                   "index extraction": cpu_per_bundle(extract_index, resources),
                   "reference walk": cpu_per_bundle(lambda r: _walk_references(r, lambda ref: None), resources),
                   "check_entries": cpu_per_bundle(check_entries, bundles)}
        print(f"{kind}: {len(bundles)} bundles of {len(bundles[0]['entry'])} resources, CPU per bundle: "
              + ", ".join(f"{k} {v:.3f} ms" for k, v in figures.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("synthetic", "oru", "both"), default="both")
    ap.add_argument("--bundles", type=int, default=300)
    ap.add_argument("--hooks", action="store_true", help="build the whole hub (MPI and recognition hooks)")
    ap.add_argument("--db-url", default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-check-ahead", action="store_true",
                    help="oru: validate and index inside the write transaction (as before check_entries)")
    ap.add_argument("--sort", default="cumulative", help="cProfile order: cumulative, tottime, ...")
    ap.add_argument("--parts", action="store_true", help="CPU of validation, index extraction and reference walk")
    args = ap.parse_args()
    if args.parts:
        parts(("synthetic", "oru") if args.kind == "both" else (args.kind,), args.bundles)
        return

    from hub.fhir.bundles import check_entries, process_bundle
    from hub.ingest.normalize import drop_held_back_entries
    from hub.storage.db import write_tx
    from hub.security.access import Access
    from hub.security.scopes import parse_scopes
    from hub.security.tokens import Principal

    work = Path(tempfile.mkdtemp(prefix="yilian-write-cpu-"))
    db_url = args.db_url or f"sqlite:///{work / 'hub.db'}"
    if args.hooks:
        from hub.api.app import Hub
        from hub.config import HubSettings

        hub = Hub(HubSettings(data_dir=work, database_url=db_url, token_secret="x" * 32, ingest_workers=0,
                              audit_enabled=False))
        svc, close = hub.fhir, hub.close
    else:
        from hub.fhir.service import FhirService
        from hub.storage.engine import make_engine
        from hub.storage.migrate import upgrade

        engine = make_engine(db_url)
        upgrade(engine)
        svc, close = FhirService(engine, base_url="http://localhost/fhir"), engine.dispose
    access = Access(Principal("bench", "bench", parse_scopes("system/*.cruds"), "system/*.cruds", organization="HOSPA"))

    kinds = ("synthetic", "oru") if args.kind == "both" else (args.kind,)
    tag = str(int(time.time()))
    for kind in kinds:
        make = synthetic_bundles if kind == "synthetic" else oru_bundles
        bundles = make(args.bundles + WARMUP, f"{kind}{tag}")
        per_resource = len(bundles[0]["entry"])
        cpu: list[float] = []
        in_tx: list[float] = []  # the part inside the write transaction (SQLite: the write lock)
        from hl7v2_ingest import _WriteTxClock

        tx_clock = _WriteTxClock(svc.engine)
        prof = cProfile.Profile() if args.profile else None
        t0 = time.perf_counter()
        for i, b in enumerate(bundles):
            b = copy.deepcopy(b)
            if i == WARMUP:
                t0 = time.perf_counter()
                if prof:
                    prof.enable()
            c0 = time.process_time()
            if kind == "oru":  # as the ingest applies a message: checked ahead, one write transaction
                checked = None if args.no_check_ahead else check_entries(b)
                t_in = time.process_time()
                with write_tx(svc.engine) as conn:
                    r = process_bundle(svc, drop_held_back_entries(conn, b)[0], access, transaction=True,
                                       conn=conn, checked=checked)
                t_out = time.process_time()
            else:  # the write transaction is opened inside: its part read from the engine's events
                before = tx_clock.cpu
                r = process_bundle(svc, b, access, transaction=True)
                t_in, t_out = 0.0, tx_clock.cpu - before
            c1 = time.process_time()
            assert r.status == 200, r.body
            if i >= WARMUP:
                cpu.append(c1 - c0)
                in_tx.append(t_out - t_in)
        wall = time.perf_counter() - t0
        if prof:
            prof.disable()
        med, mean = statistics.median(cpu) * 1e3, statistics.fmean(cpu) * 1e3
        print(f"{kind}: {len(cpu)} bundles of {per_resource} resources: CPU per bundle median {med:.2f} ms, "
              f"mean {mean:.2f} ms; per resource {mean / per_resource:.3f} ms; "
              f"{len(cpu) * per_resource / sum(cpu):,.0f} resources per CPU-second; "
              f"wall {len(cpu) * per_resource / wall:,.0f} resources/s; "
              f"inside the write transaction {statistics.fmean(in_tx) * 1e3:.2f} ms per bundle "
              f"({100 * sum(in_tx) / sum(cpu):.0f} %)")
        if prof:
            pstats.Stats(prof).sort_stats(args.sort).print_stats(45)
    close()


if __name__ == "__main__":
    main()
