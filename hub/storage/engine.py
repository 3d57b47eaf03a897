"""Engine creation: SQLite (WAL, the embedded default) or PostgreSQL (production).

One engine per process, created at start-up and owned by the application's lifespan.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine for ``url`` with the settings each backend needs.

    SQLite: WAL journal so readers never block the writer, ``synchronous=NORMAL`` (durable across
    process crashes; WAL keeps the database consistent across power loss), a busy timeout so
    concurrent writers queue instead of failing, and ``BEGIN IMMEDIATE`` for write transactions
    (see :func:`hub.storage.db.write_tx`) so that read-then-write transactions serialize.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
            pool_size=16,
            max_overflow=16,
            # the connection returned last is handed out next: in WAL mode a connection keeps
            # its page cache only while no other connection has committed, so rotating through
            # the pool (first in, first out) made each write re-read its B-tree pages
            # (HL7 ingest bench, 1,000 messages: 154,000 page reads against 94,000)
            pool_use_lifo=True,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            cur.execute("PRAGMA temp_store=MEMORY")
            # checkpoints run in the background (below), not inside a committing request
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

        # pysqlite's own transaction handling is disabled (isolation_level=None above); the
        # hub issues BEGIN itself so that it can choose DEFERRED (reads) or IMMEDIATE (writes).
        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - trivial
            mode = conn.info.pop("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        if u.database and u.database != ":memory:":
            _start_checkpointer(u.database)
        return engine
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        return create_engine(u, echo=echo, pool_size=16, max_overflow=16, pool_pre_ping=True)
    raise ValueError(f"unsupported database backend {u.get_backend_name()!r} (use sqlite or postgresql)")


def truncate_wal(engine: Engine) -> None:
    """SQLite: copy the whole WAL into the database file and empty it, for the end of a bulk
    load. Otherwise the load leaves up to ``WAL_RESET_BYTES`` of WAL behind (its checkpointer's
    connection is still open at exit), which the next process reads through and copies back
    while serving its first requests. Waits for readers and writers (busy timeout)."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


#: SQLite page cache per connection (KiB) and memory-mapped part of the database file. The
#: cache is kept small: every pooled connection has its own, and in WAL mode a connection
#: drops its cache whenever another one has committed, which in the hub is all the time
#: (audit batches, ingest); pages come from the mapping or the OS cache instead. The mapping
#: is kept although its pages count in a process's RSS (about 25 MB in a hub process): they
#: are the file's page cache, shared and reclaimable, and reading through them took a quarter
#: less CPU than copying pages in with read() (measured on a 60 MB table on this machine:
#: point reads of 2 KB rows 6-7 us against 8-9 us, a full scan 74-84 ms against 102-107 ms).
SQLITE_CACHE_KIB = 16384
SQLITE_MMAP_BYTES = 256 * 1024 * 1024

#: WAL size past which the checkpointer rewinds the WAL (see :func:`_start_checkpointer`)
WAL_RESET_BYTES = 64 * 1024 * 1024

_checkpointers: dict[str, threading.Thread] = {}
_checkpointers_lock = threading.Lock()


def _start_checkpointer(path: str, interval: float = 0.5) -> None:
    """Copy the WAL back into the database file from a background thread, one per database
    file and process. SQLite's automatic checkpoint would otherwise run inside whichever commit
    crosses the threshold and stall that request; a PASSIVE checkpoint never blocks writers.

    The same thread refreshes the query planner's statistics (``ANALYZE`` with a bounded
    sample) whenever the store has grown by a quarter: without them SQLite picks, for example,
    a scan over every reference row for an ``_include`` (70 ms at 92,000 resources) instead
    of the per-resource index (1 ms).

    PASSIVE checkpoints alone starve under continuous writes: each one copies what it can, but
    new frames keep arriving, the WAL is never found fully copied and so never rewound (a
    Synthea load left a 4.4 GB WAL, which the next process then had to recover and copy before
    its first writes were fast). Once the WAL passes ``WAL_RESET_BYTES`` the thread therefore
    asks for a TRUNCATE checkpoint with a short busy timeout: it slips in between two write
    transactions, copies the few frames the passive one left and rewinds the file."""
    key = str(Path(path).resolve())
    with _checkpointers_lock:
        t = _checkpointers.get(key)
        if t is not None and t.is_alive():
            return

        def run() -> None:
            conn = sqlite3.connect(key, timeout=30, check_same_thread=False, isolation_level=None)
            wal = Path(key + "-wal")
            analyzed_at = -1
            rounds = 0
            try:
                while True:
                    time.sleep(interval)
                    rounds += 1
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        if wal.exists() and wal.stat().st_size > WAL_RESET_BYTES:
                            conn.execute("PRAGMA busy_timeout=250")
                            try:
                                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                            finally:
                                conn.execute("PRAGMA busy_timeout=30000")
                        if rounds % 20 == 1:
                            analyzed_at = _analyze_if_grown(conn, analyzed_at)
                    except sqlite3.Error:
                        pass  # busy or file gone: try again next round
            finally:
                conn.close()

        t = threading.Thread(target=run, name="sqlite-checkpoint", daemon=True)
        _checkpointers[key] = t
        t.start()


def _analyze_if_grown(conn: sqlite3.Connection, analyzed_at: int) -> int:
    """Run a sampled ANALYZE when the resource count has grown by a quarter (and at least 1,000)
    since the last one; returns the count the statistics now describe."""
    try:
        n = conn.execute("SELECT max(_rowid_) FROM resources").fetchone()[0] or 0
    except sqlite3.OperationalError:  # schema not created yet
        return analyzed_at
    if n < 1000 or (analyzed_at >= 0 and n < analyzed_at * 1.25):
        return analyzed_at
    conn.execute("PRAGMA analysis_limit=2000")
    conn.execute("ANALYZE")
    return n
