"""Engine creation: SQLite (WAL, the embedded default) or PostgreSQL (production).

One engine per process, created at start-up and owned by the application's lifespan.
"""

from __future__ import annotations

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
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA cache_size=-65536")
            cur.execute("PRAGMA mmap_size=268435456")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

        # pysqlite's own transaction handling is disabled (isolation_level=None above); the
        # hub issues BEGIN itself so that it can choose DEFERRED (reads) or IMMEDIATE (writes).
        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - trivial
            mode = conn.info.pop("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        return create_engine(u, echo=echo, pool_size=16, max_overflow=16, pool_pre_ping=True)
    raise ValueError(f"unsupported database backend {u.get_backend_name()!r} (use sqlite or postgresql)")
