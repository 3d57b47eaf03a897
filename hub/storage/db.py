"""Transactions on the hub's database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

_local = threading.local()


def in_write_tx() -> bool:
    """Whether this thread is inside :func:`write_tx` (on SQLite: holds the write lock). Code
    that could wait on another writer (e.g. for room in the audit queue) must not wait then."""
    return getattr(_local, "depth", 0) > 0


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction. On SQLite it takes the write lock at BEGIN (``BEGIN IMMEDIATE``), so a
    transaction that reads before it writes (conditional create, version checks) can never be
    overtaken by another writer between its read and its write."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.info["sqlite_begin"] = "IMMEDIATE"
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            with conn.begin():
                yield conn
        finally:
            _local.depth -= 1


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent snapshot for a search and its includes."""
    with engine.connect() as conn:
        with conn.begin():
            yield conn
