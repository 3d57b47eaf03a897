"""SQLite pages written per HL7 ORU^R01 message, by B-tree (table or index).

Run: ``python bench/sqlite_pages.py [--warm 2000] [--messages 200] [--hooks]``.

It applies ``--warm`` ORU^R01 bundles (those of ``bench/fhir_write_cpu.py --kind oru``: 15
resources each, checked ahead, one write transaction per message, as the ingest applies them)
to a fresh SQLite store, so that its B-trees have the depth of a store in use, then
``--messages`` more with the checkpointer stopped: the WAL then holds every page each commit
wrote. The page numbers of its frames are mapped to their B-trees with ``dbstat``. Every frame
is written once to the WAL and once more to the database file by the checkpoint, so this is
the figure that the random placement of keys drives. ``--hooks`` builds the whole hub (master
patient index and recognition hooks) instead of the FHIR server alone.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(Path(os.environ.get("YILIAN_SHARED", ROOT.parent / "shared")) / "bench" / "fhir_bench"))


def wal_pages(wal: Path) -> list[int]:
    """The page number of every frame in a WAL file (sqlite.org/fileformat.html#walformat)."""
    raw = wal.read_bytes()
    page_size = int.from_bytes(raw[8:12], "big")
    return [int.from_bytes(raw[off:off + 4], "big") for off in range(32, len(raw) - 24 - page_size + 1, 24 + page_size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--hooks", action="store_true", help="build the whole hub (MPI and recognition hooks)")
    args = ap.parse_args()

    import hub.storage.engine as engine_module
    from fhir_write_cpu import oru_bundles
    from hub.fhir.bundles import check_entries, process_bundle
    from hub.ingest.normalize import drop_held_back_entries
    from hub.security.access import Access
    from hub.security.scopes import parse_scopes
    from hub.security.tokens import Principal
    from hub.storage.db import write_tx

    engine_module._start_checkpointer = lambda *a, **kw: None  # checkpoints are run below, by hand
    work = Path(tempfile.mkdtemp(prefix="yilian-pages-"))
    db = work / "hub.db"
    if args.hooks:
        from hub.api.app import Hub
        from hub.config import HubSettings

        hub = Hub(HubSettings(data_dir=work, database_url=f"sqlite:///{db}", token_secret="x" * 32,
                              ingest_workers=0, audit_enabled=False))
        svc, close = hub.fhir, hub.close
    else:
        from hub.fhir.service import FhirService
        from hub.storage.migrate import upgrade

        engine = engine_module.make_engine(f"sqlite:///{db}")
        upgrade(engine)
        svc, close = FhirService(engine, base_url="http://localhost/fhir"), engine.dispose
    access = Access(Principal("bench", "bench", parse_scopes("system/*.cruds"), "system/*.cruds", organization="HOSPA"))

    def checkpoint(analyze: bool = False) -> None:
        side = sqlite3.connect(db, isolation_level=None)
        if analyze:
            side.execute("PRAGMA analysis_limit=2000")
            side.execute("ANALYZE")
        side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        side.close()

    bundles = oru_bundles(args.warm + args.messages, f"pages{int(time.time())}")
    for i, b in enumerate(bundles):
        if i == args.warm:
            checkpoint(analyze=True)
        elif i < args.warm and i % 500 == 499:
            checkpoint()
        b = copy.deepcopy(b)
        checked = check_entries(b)
        with write_tx(svc.engine) as conn:
            r = process_bundle(svc, drop_held_back_entries(conn, b)[0], access, transaction=True, conn=conn,
                               checked=checked)
        assert r.status == 200, r.body
    frames = wal_pages(Path(f"{db}-wal"))
    close()
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    owner = {page: name for name, page in con.execute("SELECT name, pageno FROM dbstat")}
    by_tree = collections.Counter(owner.get(p, "(freed)") for p in frames)
    n = args.messages
    print(f"{len(frames) / n:.1f} pages per message ({n} messages after {args.warm}); "
          f"database {db.stat().st_size / 1e6:.1f} MB")
    for name, count in by_tree.most_common():
        if count / n >= 0.5:
            print(f"  {name:36s} {count / n:6.1f}")


if __name__ == "__main__":
    main()
