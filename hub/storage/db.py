"""Transactions on the hub's database."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from hub.errors import Unavailable

_local = threading.local()

#: how long a writer waits for the SQLite write lock unless configured
#: (``HubSettings.database_lock_timeout_s``): as long as SQLite's busy timeout (hub.storage.engine)
DEFAULT_WRITE_LOCK_TIMEOUT_S = 30.0


class WriteLockTimeout(Unavailable):
    """The write lock was not free in time: another writer of this process, or another process
    on the database file, held it too long (a hung request, a stuck process). Nothing was
    written; HTTP answers 503, the DICOM SCP "Refused: Out of Resources", the ingest retries."""

    code = "lock-error"


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

    def acquire(self, timeout: float) -> bool:
        """Whether the lock was had within ``timeout`` seconds (else the waiter leaves the queue)."""
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=timeout):  # released by the holder that hands the lock over (``_held`` stays True)
            return True
        with self._mutex:
            try:
                self._waiters.remove(turn)
            except ValueError:  # handed over just as the wait ran out: held
                return True
            return False

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


class ProcessTurnstile:
    """The write lock between processes on one SQLite database: ``flock`` on two files beside it.

    A process blocked in ``flock`` is woken by the kernel as soon as the holder releases, where
    SQLite's busy handler sleeps (1 ms growing to 100 ms) and retries: a process that commits
    and begins again at once would find the lock free before a sleeping one ever did. The
    second file is the turnstile that makes the hand-over fair: a waiter takes it before it
    waits for the lock and lets it go once it has the lock, so a holder that wants the lock
    again queues behind that waiter instead of overtaking it. Only the thread holding the
    process's :class:`FairLock` comes here, so one descriptor per file and process is enough
    (``flock`` locks belong to the open file, which a forked child must not share: each
    process opens its own).

    ``flock`` has no timeout, so a wait that cannot be had at once blocks in a thread of its own
    (:class:`_FlockWait`), which the asking thread waits for until its deadline. A wait whose
    deadline passed goes on: the next thread that asks takes it over (a second ``flock`` on the
    same descriptor would count as already held), and if nobody does by the time it gets the
    lock, it lets the lock go at once."""

    def __init__(self, database: str) -> None:
        self._paths = (database + "-writer-gate", database + "-writer")
        self._pid = -1
        self._fds: tuple[int, int] = (-1, -1)
        self._mutex = threading.Lock()  # between the asking thread and the wait's
        self._pending: _FlockWait | None = None  # the wait going on, if any

    def _open(self) -> tuple[int, int]:
        if self._pid != os.getpid():
            self._fds = tuple(os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600) for p in self._paths)
            self._pid = os.getpid()
            self._mutex, self._pending = threading.Lock(), None  # a forked child has no thread of the parent's
            weakref.finalize(self, _close_in, self._pid, self._fds)  # with its engine's lock
        return self._fds

    def acquire(self, timeout: float) -> bool:
        """Whether the lock was had within ``timeout`` seconds."""
        gate, lock = self._open()
        with self._mutex:
            wait = self._pending
            if wait is None:
                if _try_flock(gate):  # nobody queued ahead
                    try:
                        if _try_flock(lock):
                            return True
                    finally:
                        fcntl.flock(gate, fcntl.LOCK_UN)
                wait = self._pending = _FlockWait(self, gate, lock)
                wait.start()
            wait.wanted = True
        if wait.had.wait(timeout):
            with self._mutex:
                self._pending = None
            return True
        with self._mutex:
            if wait.had.is_set():  # just now
                self._pending = None
                return True
            wait.wanted = False
            return False

    def release(self) -> None:
        fcntl.flock(self._fds[1], fcntl.LOCK_UN)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class _FlockWait(threading.Thread):
    """One blocking wait for :class:`ProcessTurnstile`'s lock, through its turnstile."""

    def __init__(self, turnstile: ProcessTurnstile, gate: int, lock: int) -> None:
        super().__init__(name="sqlite-write-lock-wait", daemon=True)
        self.turnstile, self.gate, self.lock = turnstile, gate, lock
        self.wanted = True  # whether a thread still waits for this wait (under the turnstile's mutex)
        self.had = threading.Event()

    def run(self) -> None:
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self.gate, fcntl.LOCK_UN)
        with self.turnstile._mutex:
            if self.wanted:
                self.had.set()
            else:  # under the mutex: a thread asking next must not find the lock "held" by this descriptor
                fcntl.flock(self.lock, fcntl.LOCK_UN)
                self.turnstile._pending = None


def _close_in(pid: int, fds: tuple[int, ...]) -> None:
    if os.getpid() == pid:  # a forked child's copies are its own to keep
        for fd in fds:
            os.close(fd)


class SqliteWriteLock:
    """The threads of this process in arrival order (:class:`FairLock`), then the processes
    (:class:`ProcessTurnstile`, for a database file): whoever holds it meets SQLite's busy
    handler only against writers outside :func:`write_tx` (a checkpoint, another program)."""

    def __init__(self, database: str | None) -> None:
        self.threads = FairLock()
        self.processes = ProcessTurnstile(database) if database and database != ":memory:" else None
        self.timeout_s = DEFAULT_WRITE_LOCK_TIMEOUT_S  # the longest wait for both, else WriteLockTimeout

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        if not self.threads.acquire(self.timeout_s):
            raise self._timed_out()
        if self.processes is not None:
            try:
                if not self.processes.acquire(max(0.0, deadline - time.monotonic())):
                    raise self._timed_out()
            except BaseException:
                self.threads.release()
                raise

    def _timed_out(self) -> WriteLockTimeout:
        return WriteLockTimeout(f"the database is busy: its write lock was not free within {self.timeout_s:g} s; "
                                "try again later")

    def release(self) -> None:
        try:
            if self.processes is not None:
                self.processes.release()
        finally:
            self.threads.release()

    @property
    def waiting(self) -> int:
        """How many threads of this process are queued for the lock."""
        return self.threads.waiting


_write_locks: weakref.WeakKeyDictionary[Engine, SqliteWriteLock] = weakref.WeakKeyDictionary()
_write_locks_guard = threading.Lock()


def sqlite_write_lock(engine: Engine) -> SqliteWriteLock:
    """The queue of ``engine``'s SQLite writers (one per engine)."""
    with _write_locks_guard:
        lock = _write_locks.get(engine)
        if lock is None:
            lock = _write_locks[engine] = SqliteWriteLock(engine.url.database)
        return lock


def set_write_lock_timeout(engine: Engine, seconds: float) -> None:
    """How long :func:`write_tx` on ``engine`` waits for the write lock (SQLite) before it
    raises :class:`WriteLockTimeout`."""
    if engine.dialect.name == "sqlite":
        sqlite_write_lock(engine).timeout_s = seconds


def in_write_tx() -> bool:
    """Whether this thread is inside :func:`write_tx` (on SQLite: holds the write lock). Code
    that could wait on another writer (e.g. for room in the audit queue) must not wait then."""
    return getattr(_local, "depth", 0) > 0


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction. On SQLite it takes the write lock at BEGIN (``BEGIN IMMEDIATE``), so a
    transaction that reads before it writes (conditional create, version checks) can never be
    overtaken by another writer between its read and its write. Writers queue before taking a
    connection, the threads of a process in arrival order and the processes on a database file
    by ``flock`` (:class:`SqliteWriteLock`), so the lock passes to the next writer as it is
    released instead of after a busy-handler sleep; a writer that waits longer than the lock's
    deadline (:func:`set_write_lock_timeout`) gets :class:`WriteLockTimeout`. PostgreSQL
    writers are not queued: its row locks let them run together."""
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
