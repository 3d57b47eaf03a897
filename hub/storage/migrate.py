"""Schema migrations with Alembic, run from code (``yilian hub migrate`` and at hub start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the database to ``revision``; idempotent. Concurrent starters on PostgreSQL are
    serialized by an advisory lock.

    Each component of the hub (FHIR store, ingest log, DICOM index, MPI, recognition) keeps its
    tables in its own Alembic branch starting from ``0001``, so ``heads`` applies them all.

    It runs as a write transaction (:func:`hub.storage.db.write_tx`): on SQLite a deferred one
    would read the version table, and if another connection wrote meanwhile, fail at its first
    write (a stale snapshot cannot take the write lock) instead of waiting its turn."""
    from hub.storage.db import write_tx

    with write_tx(engine) as conn:
        if engine.dialect.name == "postgresql":
            from sqlalchemy import text

            conn.execute(text("SELECT pg_advisory_xact_lock(7261001)"))
        command.upgrade(alembic_config(conn), revision)


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a migration from the difference between the schema and ``engine``'s database."""
    with engine.begin() as conn:
        command.revision(alembic_config(conn), message=message, autogenerate=True)
