"""Transactions on the hub's database."""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

_local = threading.local()


class FairLock:
    """A lock handed to its waiters in the order they asked for it (FIFO).

    SQLite's own arbitration between writers is a busy handler that sleeps (1 ms growing to
    100 ms) and retries, whether or not the lock has been freed meanwhile: threads of one
    process queueing on it lose those sleeps and may be overtaken indefinitely. Threads of a
    process queue here instead; the releasing thread wakes the next one directly."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder that hands the lock over (``_held`` stays True)

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    @property
    def waiting(self) -> int:
        """How many threads are queued for the lock."""
        with self._mutex:
            return len(self._waiters)


_write_locks: weakref.WeakKeyDictionary[Engine, FairLock] = weakref.WeakKeyDictionary()
_write_locks_guard = threading.Lock()


def sqlite_write_lock(engine: Engine) -> FairLock:
    """The in-process queue of ``engine``'s SQLite writers (one per engine)."""
    with _write_locks_guard:
        lock = _write_locks.get(engine)
        if lock is None:
            lock = _write_locks[engine] = FairLock()
        return lock


def in_write_tx() -> bool:
    """Whether this thread is inside :func:`write_tx` (on SQLite: holds the write lock). Code
    that could wait on another writer (e.g. for room in the audit queue) must not wait then."""
    return getattr(_local, "depth", 0) > 0


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction. On SQLite it takes the write lock at BEGIN (``BEGIN IMMEDIATE``), so a
    transaction that reads before it writes (conditional create, version checks) can never be
    overtaken by another writer between its read and its write. Threads of one process queue
    for SQLite's lock in the process first (:class:`FairLock`), before taking a connection, so
    only one of them at a time meets SQLite's busy handler, and then only against another
    process. PostgreSQL writers are not queued: its row locks let them run together."""
    lock = sqlite_write_lock(engine) if engine.dialect.name == "sqlite" and not in_write_tx() else None
    if lock is not None:
        lock.acquire()
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.info["sqlite_begin"] = "IMMEDIATE"
            _local.depth = getattr(_local, "depth", 0) + 1
            try:
                with conn.begin():
                    yield conn
            finally:
                _local.depth -= 1
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent snapshot for a search and its includes."""
    with engine.connect() as conn:
        with conn.begin():
            yield conn
