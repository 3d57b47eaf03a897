"""Migrating while another connection writes (a second hub process starting, a CLI command):
the migration waits for the other writer and then runs, on SQLite as on PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time

from sqlalchemy import inspect

from hub.storage.engine import make_engine
from hub.storage.migrate import upgrade


def test_upgrade_waits_for_a_writer_that_commits_meanwhile(tmp_path):
    path = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine, "0001")  # an older store: the upgrade below has DDL to run
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("CREATE TABLE side (x INTEGER)")
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO side VALUES (1)")
        released = threading.Event()

        def commit_later() -> None:
            time.sleep(0.4)  # the upgrade has started and read the version table by now
            other.execute("COMMIT")
            released.set()

        t = threading.Thread(target=commit_later)
        t.start()
        upgrade(engine)  # a deferred transaction failed here: "database is locked" (stale snapshot)
        t.join()
        assert released.is_set()
        tables = set(inspect(engine).get_table_names())
        assert {"ingest_messages", "dicom_instances", "mpi_person", "side"} <= tables
        other.close()
    finally:
        engine.dispose()
