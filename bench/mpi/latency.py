"""Match latency of the stateful master patient index with a large index (default 1,000,000
patients), on SQLite or PostgreSQL.

1. generate a synthetic population (bench.mpi.population) of about ``--patients`` records;
2. bulk-load all but ``--queries`` of them into the index tables (``mpi_record``,
   ``mpi_block``, ``mpi_person``: snapshot, blocking keys, person = the ground-truth person,
   as if the index had linked them) with executemany in chunks — timed and printed;
3. for each held-out record, time (a) ``find_matches`` — the candidate lookup through the
   blocking-key index and the scoring, read-only, what ``Patient/$match`` and every incoming
   Patient cost — and (b) the whole arrival: the Patient written through the FHIR store in its
   own transaction, matched, linked, its golden record written, committed.

    python -m bench.mpi.latency --patients 1000000 --db sqlite:////tmp/mpi1m.db
    python -m bench.mpi.latency --patients 1000000 --db postgresql+psycopg://postgres@127.0.0.1:5432/mpi1m

The database must be empty (a fresh file or database). Prints median, p95, p99 and throughput.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import orjson
from sqlalchemy import text

from hub.fhir.model import now_us
from hub.mpi.blocking import blocking_keys
from hub.mpi.index import GOLDEN_PREFIX, MatchProfile, snapshot
from hub.mpi.normalize import from_fhir_patient
from hub.mpi.scoring import Outcome, PatientMatcher, Thresholds
from hub.mpi.tables import mpi_block, mpi_person, mpi_record
from hub.storage.db import write_tx
from hub.storage.engine import make_engine
from hub.storage.migrate import upgrade

from .index_eval import make_index
from .population import generate_population

CHUNK = 20_000


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bulk_load(engine, records, *, progress: bool = True) -> float:
    """Load generated records straight into the index tables; returns seconds."""
    t0 = time.perf_counter()
    persons: set[str] = set()
    rec_rows, block_rows, person_rows = [], [], []
    ts = now_us()

    def flush() -> None:
        with write_tx(engine) as conn:
            if person_rows:
                conn.execute(mpi_person.insert(), person_rows)
            conn.execute(mpi_record.insert(), rec_rows)
            conn.execute(mpi_block.insert(), block_rows)
        rec_rows.clear(), block_rows.clear(), person_rows.clear()

    for i, (pid, rec) in enumerate(records):
        snap = snapshot(rec.patient)
        demo = from_fhir_patient(snap)
        person = GOLDEN_PREFIX + rec.person_id
        if person not in persons:
            persons.add(person)
            person_rows.append({"person_id": person, "created": ts, "updated": ts})
        rec_rows.append({"patient_id": pid, "person_id": person, "state": "active", "source": "auto",
                         "rule": "bulk-load", "score": None, "org": snap.get("meta", {}).get("source"),
                         "demo": orjson.dumps(snap, option=orjson.OPT_SORT_KEYS).decode(), "updated": ts})
        block_rows.extend({"key": k[:255], "patient_id": pid} for k in dict.fromkeys(sorted(blocking_keys(demo))))
        if len(rec_rows) >= CHUNK:
            flush()
            if progress and (i + 1) % 100_000 < CHUNK:
                print(f"  loaded {i + 1:,} records ({time.perf_counter() - t0:,.0f} s)", flush=True)
    if rec_rows:
        flush()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE mpi_record"))
            conn.execute(text("ANALYZE mpi_block"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="MPI match latency with a large index")
    ap.add_argument("--patients", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--db", default=None, help="URL of an EMPTY database (default: a temp SQLite file)")
    ap.add_argument("--reuse", action="store_true",
                    help="the database holds a previous run's load (same --patients and --seed): skip the "
                         "load, forget the previous run's incoming patients, time again")
    args = ap.parse_args(argv)
    url = args.db or f"sqlite:///{tempfile.mkdtemp()}/mpi.db"
    engine = make_engine(url)
    if not args.reuse:  # a reused database keeps the schema it was loaded with
        upgrade(engine)

    t0 = time.perf_counter()
    people = max(1, int(args.patients / 2.12))  # the generator gives ~2.12 records per person
    recs = generate_population(people, args.seed)
    print(f"generated {len(recs):,} records of {people:,} people in {time.perf_counter() - t0:,.0f} s", flush=True)
    # the held-out records arrive after the load: every n-th, so their relatives are indexed
    step = max(1, len(recs) // args.queries)
    held = [(f"q-{i}", r) for i, r in enumerate(recs) if i % step == 0][: args.queries]
    held_ids = {id(r) for _, r in held}
    loaded = ((f"p-{i}", r) for i, r in enumerate(recs) if id(r) not in held_ids)
    n_loaded = len(recs) - len(held)
    run = f"{int(time.time())}"
    if args.reuse:
        with write_tx(engine) as conn:
            for table in (mpi_block, mpi_record):
                conn.execute(table.delete().where(table.c.patient_id.like("q-%")))
        print(f"reusing the loaded index of {n_loaded:,} patients", flush=True)
    else:
        secs = bulk_load(engine, loaded)
        print(f"bulk-loaded {n_loaded:,} patients into the index ({engine.dialect.name}) in {secs:,.0f} s "
              f"({n_loaded / secs:,.0f} records/s)", flush=True)
    held = [(f"q-{run}-{pid[2:]}", r) for pid, r in held]

    thresholds = Thresholds.for_population(people)
    svc, mpi = make_index(engine, MatchProfile.chinese(PatientMatcher(thresholds=thresholds)))
    match_ms, cands, outcomes = [], [], {o: 0 for o in Outcome}
    with engine.connect() as conn:
        for _, rec in held[:50]:  # warm the connection pool and the statement caches
            mpi.find_matches(conn, rec.patient)
        for _, rec in held:
            t = time.perf_counter()
            found = mpi.find_matches(conn, rec.patient)
            match_ms.append((time.perf_counter() - t) * 1000)
            cands.append(len(found))
            best = found[0].result.outcome if found else Outcome.NEW
            outcomes[best] += 1
    arrive_ms = []
    for pid, rec in held:
        t = time.perf_counter()
        with write_tx(engine) as conn:
            svc.store.write(conn, [svc.store.prepare_create("Patient", rec.patient, res_id=pid)])
        arrive_ms.append((time.perf_counter() - t) * 1000)
    engine.dispose()

    print(f"index: {n_loaded:,} patients; thresholds link={thresholds.link:.1f} review={thresholds.review:.1f}; "
          f"{len(held):,} incoming patients; candidates per match: mean {statistics.mean(cands):.1f}, "
          f"max {max(cands)}; best outcome: " + ", ".join(f"{o.value} {n}" for o, n in outcomes.items()))
    for name, ms in (("match (lookup + scoring, read-only)", match_ms),
                     ("arrival (store write + match + link + golden record, committed)", arrive_ms)):
        print(f"{name}: median {statistics.median(ms):.2f} ms, p95 {_pct(ms, 0.95):.2f} ms, "
              f"p99 {_pct(ms, 0.99):.2f} ms, {1000 * len(ms) / sum(ms):,.0f} per second on one connection")


if __name__ == "__main__":
    main()
