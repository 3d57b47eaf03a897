"""The durable outbox: every received item is committed here before it is acknowledged.

SQLite in WAL mode with ``synchronous=FULL`` (every commit is fsynced; sqlite.org/pragma.html
#pragma_synchronous), written by one thread that commits whatever is waiting as one
transaction (group commit), each operation in its own SAVEPOINT so one failing insert (e.g.
``SQLITE_FULL`` when ``max_page_count`` is reached) never takes the others down. A receiver
acknowledges only after :meth:`Outbox.add` has returned, i.e. after the commit.

Items leave the outbox only when the hub has confirmed them (state ``delivered``, deleted after
the retention period) or rejected them permanently (moved to ``dead_letters`` with the reason).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import queue
import sqlite3
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    feed TEXT NOT NULL,
    lane INTEGER NOT NULL,
    order_key TEXT,
    received_at TEXT NOT NULL,
    received_ts REAL NOT NULL,
    charset TEXT,
    filename TEXT,
    payload BLOB NOT NULL,
    dedup_key TEXT,
    ack BLOB,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    hub_message_id TEXT,
    hub_status TEXT,
    hub_ack_code TEXT,
    hub_ack BLOB,
    delivered_ts REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, lane, seq);
CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox (state, delivered_ts);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_dedup ON outbox (dedup_key) WHERE dedup_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    feed TEXT NOT NULL,
    order_key TEXT,
    received_at TEXT NOT NULL,
    charset TEXT,
    filename TEXT,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    hub_message_id TEXT,
    dead_ts REAL NOT NULL,
    replayed_as TEXT
);
CREATE TABLE IF NOT EXISTS file_items (id TEXT PRIMARY KEY, name TEXT, settled_ts REAL);
CREATE TABLE IF NOT EXISTS dicom_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    receiver TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    received_ts REAL NOT NULL,
    delivered_ts REAL
);
CREATE INDEX IF NOT EXISTS dicom_pending ON dicom_items (receiver, state, seq);
"""


class OutboxError(Exception):
    """The outbox could not store an item (I/O error, closed)."""


class OutboxFull(OutboxError):
    """The outbox could not store an item: the disk or the configured size limit is reached."""


@dataclass(slots=True)
class NewItem:
    """An item a receiver wants stored."""
    kind: str
    feed: str
    payload: bytes
    order_key: str | None = None
    charset: str | None = None
    filename: str | None = None
    dedup_key: str | None = None
    ack: bytes | None = None
    id: str = field(default_factory=lambda: new_item_id())
    received_ts: float = field(default_factory=time.time)


@dataclass(slots=True)
class Stored:
    """What :meth:`Outbox.add` did: stored anew, or found an earlier item with the same dedup key."""
    id: str
    seq: int
    duplicate: bool
    ack: bytes | None
    hub_ack: bytes | None = None


@dataclass(slots=True)
class PendingItem:
    seq: int
    id: str
    kind: str
    feed: str
    order_key: str | None
    received_at: str
    charset: str | None
    filename: str | None
    payload: bytes


class _ItemIds:
    """Item ids: a random 128-bit prefix drawn once per process, then a counter -- unique across
    restarts and nodes like UUIDs, without a system call per item."""

    def __init__(self):
        self._prefix: str | None = None
        self._counter = itertools.count()

    def __call__(self) -> str:
        if self._prefix is None:
            self._prefix = uuid.uuid4().hex
        return f"{self._prefix}-{next(self._counter)}"


new_item_id = _ItemIds()


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def content_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def lane_for(order_key: str | None, item_id: str, lanes: int) -> int:
    """One order key (one patient, one file) always maps to the same lane, so its items stay in order."""
    return zlib.crc32((order_key or item_id).encode("utf-8")) % lanes


class _Op:
    __slots__ = ("fn", "args", "future", "loop", "result", "error")

    def __init__(self, fn, args, future, loop):
        self.fn, self.args, self.future, self.loop = fn, args, future, loop
        self.result = self.error = None


def _settle(op: _Op) -> None:
    if op.future.done():
        return
    if op.error is not None:
        op.future.set_exception(op.error)
    else:
        op.future.set_result(op.result)


class Outbox:
    """The outbox file and its single writer thread.

    Async callers use :meth:`add`, :meth:`call`; synchronous tools (the ``yilian fep`` commands)
    use :meth:`call_sync`, threads that must not wait for each commit :meth:`submit`. An item's
    lane is stored with it: the node calls :func:`assign_lanes` at start, for a changed ``lanes``.
    """

    def __init__(self, path: Path, *, lanes: int = 1, max_pages: int | None = None):
        self.path = Path(path)
        self.lanes = lanes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(SCHEMA)
        _migrate(self._conn)
        self.max_pages = int(max_pages) if max_pages else None
        if self.max_pages:
            self._conn.execute(f"PRAGMA max_page_count={self.max_pages}")
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fep-outbox", daemon=True)
        self._closed = False
        self.listeners: list[Callable[[int], None]] = []   # called (in the loop) with the lane of a new item
        self._thread.start()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        conn = self._conn
        while True:
            op = self._queue.get()
            if op is None:
                break
            ops = [op]
            stop = False
            while len(ops) < 1000:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                ops.append(nxt)
            try:
                self._execute(conn, ops)
            except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
                log.exception("outbox writer: unexpected error")
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                for op in ops:
                    op.error, op.result = OutboxError(f"outbox error: {type(exc).__name__}"), None
                self._settle_all(ops)
            if stop:
                break
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        conn.close()

    def _execute(self, conn: sqlite3.Connection, ops: list[_Op]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for op in ops:
                op.error = _translate(exc)
            self._settle_all(ops)
            return
        for op in ops:
            conn.execute("SAVEPOINT op")
            try:
                op.result = op.fn(conn, *op.args)
                conn.execute("RELEASE op")
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                op.error = _translate(exc)
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (it may on SQLITE_FULL / IOERR):
                    # nothing of this group is stored, so nobody may be told it is
                    for other in ops:
                        other.error, other.result = op.error, None
                    self._settle_all(ops)
                    return
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            err = _translate(exc)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for op in ops:
                op.error, op.result = err, None
        self._settle_all(ops)

    @staticmethod
    def _settle_all(ops: list[_Op]) -> None:
        for op in ops:
            if op.loop is None:
                op.future.set()  # threading.Event for call_sync
            else:
                op.loop.call_soon_threadsafe(_settle, op)

    # -- calling it ----------------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args) -> Any:
        """Run ``fn(conn, *args)`` in the writer thread, inside the next committed transaction."""
        if self._closed:
            raise OutboxError("outbox is closed")
        loop = asyncio.get_running_loop()
        op = _Op(fn, args, loop.create_future(), loop)
        self._queue.put(op)
        return await op.future

    async def call_reserved(self, fn: Callable[..., Any], *args) -> Any:
        """Like :meth:`call`, allowed a reserve beyond ``max_pages``: recording the hub's
        confirmations must work when receivers have filled the outbox to its cap, or nothing
        would ever leave it."""
        if not self.max_pages:
            return await self.call(fn, *args)
        return await self.call(_with_reserve, self.max_pages, fn, *args)

    def call_sync(self, fn: Callable[..., Any], *args) -> Any:
        return self.submit(fn, *args)()

    def submit(self, fn: Callable[..., Any], *args, reserved: bool = False) -> Callable[[], Any]:
        """Queue ``fn(conn, *args)`` for the next group commit without waiting for it; the
        returned function waits for that commit and returns the result (or raises). From any
        thread; ``reserved`` as in :meth:`call_reserved`."""
        if self._closed:
            raise OutboxError("outbox is closed")
        if reserved and self.max_pages:
            fn, args = _with_reserve, (self.max_pages, fn, *args)
        done = threading.Event()
        op = _Op(fn, args, done, None)
        self._queue.put(op)

        def wait() -> Any:
            done.wait()
            if op.error is not None:
                raise op.error
            return op.result
        return wait

    def close(self) -> None:
        """Finish queued operations, checkpoint the WAL and close the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    # -- operations ----------------------------------------------------------------------

    async def add(self, item: NewItem) -> Stored:
        """Commit ``item`` (or find the earlier item with its dedup key); returns after the commit."""
        stored = await self.call(insert_item, item, lane_for(item.order_key, item.id, self.lanes))
        if not stored.duplicate:
            lane = lane_for(item.order_key, item.id, self.lanes)
            for listener in self.listeners:
                listener(lane)
        return stored


RESERVE_PAGES = 256


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an outbox file written by an earlier version up to this schema."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(file_items)")}
    if "settled_ts" not in columns:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE file_items ADD COLUMN settled_ts REAL")
        # rows of that version were never purged: those whose item is no longer pending were settled
        # (their file moved out of .processing) or are settled by the file drop's next look, which
        # stamps them again; from now their retention runs
        conn.execute("UPDATE file_items SET settled_ts = ? WHERE NOT EXISTS"
                     " (SELECT 1 FROM outbox o WHERE o.id = file_items.id AND o.state = 'pending')", (time.time(),))
        conn.execute("COMMIT")
    # housekeeping purges by settled_ts every second: without an index each purge read every
    # record of the files the drop has taken (the column is newer than the table, hence here)
    conn.execute("CREATE INDEX IF NOT EXISTS file_items_settled ON file_items (settled_ts)")


def assign_lanes(conn: sqlite3.Connection, lanes: int) -> int:
    """Give pending items the lanes of ``lanes`` lanes (the count may have changed since they were
    stored): a lane that no longer exists would never be sent again, and one order key's items must
    share a lane to stay in order (their seq order is kept within the new lane). For the node to
    run before anything is forwarded; a scan of the pending items. Returns how many moved."""
    conn.create_function("fep_lane", 2, lambda key, item_id: lane_for(key, item_id, lanes), deterministic=True)
    return conn.execute("UPDATE outbox SET lane = fep_lane(order_key, id) WHERE state = 'pending'"
                        " AND lane != fep_lane(order_key, id)").rowcount


def _with_reserve(conn: sqlite3.Connection, max_pages: int, fn, *args):
    conn.execute(f"PRAGMA max_page_count={max_pages + RESERVE_PAGES}")
    try:
        return fn(conn, *args)
    finally:
        # never below the current size (SQLite keeps the larger): the cap applies again to receivers
        conn.execute(f"PRAGMA max_page_count={max_pages}")


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.OperationalError) or isinstance(exc, sqlite3.DatabaseError):
        msg = str(exc).lower()
        if "full" in msg or "disk" in msg:
            return OutboxFull(f"outbox full: {exc}")
        return OutboxError(f"outbox error: {exc}")
    return exc


def insert_item(conn: sqlite3.Connection, item: NewItem, lane: int) -> Stored:
    if item.dedup_key is not None:
        row = conn.execute("SELECT id, seq, ack, hub_ack FROM outbox WHERE dedup_key = ?", (item.dedup_key,)).fetchone()
        if row is not None:
            return Stored(row[0], row[1], True, row[2], row[3])
    cur = conn.execute(
        "INSERT INTO outbox (id, kind, feed, lane, order_key, received_at, received_ts, charset, filename, payload,"
        " dedup_key, ack) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (item.id, item.kind, item.feed, lane, item.order_key, iso(item.received_ts), item.received_ts, item.charset,
         item.filename, item.payload, item.dedup_key, item.ack))
    return Stored(item.id, cur.lastrowid, False, item.ack)


def set_ack(conn: sqlite3.Connection, item_id: str, ack: bytes) -> None:
    """Remember the ACK a sender was given (answered again to a duplicate)."""
    conn.execute("UPDATE outbox SET ack = ? WHERE id = ?", (ack, item_id))


def fetch_pending(conn: sqlite3.Connection, lane: int, limit: int, max_bytes: int) -> list[PendingItem]:
    """The lane's oldest pending items, in arrival order, at most ``limit`` items / ``max_bytes``
    (at least one item, whatever its size)."""
    rows = conn.execute(
        "SELECT seq, id, kind, feed, order_key, received_at, charset, filename, payload FROM outbox"
        " WHERE state = 'pending' AND lane = ? ORDER BY seq LIMIT ?", (lane, limit)).fetchall()
    out: list[PendingItem] = []
    total = 0
    for r in rows:
        total += len(r[8])
        if out and total > max_bytes:
            break
        out.append(PendingItem(*r))
    return out


def mark_attempt_failed(conn: sqlite3.Connection, ids: list[str], error: str) -> None:
    conn.executemany("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                     [(error, i) for i in ids])


def record_results(conn: sqlite3.Connection, items: list[PendingItem], results: list[dict], now: float,
                   compact: bool = False) -> list[str]:
    """Apply the hub's per-item results; returns the ids that were dead-lettered.

    ``compact`` is for a full outbox, where even an UPDATE may need a page: confirmed items are
    deleted at once (retention is given up to make room) and rejected ones stay pending until
    there is room to move them to the dead letters.
    """
    dead: list[str] = []
    for item, res in zip(items, results):
        if compact:
            if not res.get("permanent"):
                conn.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
            continue
        if res.get("permanent"):
            _to_dead_letters(conn, item.id, res.get("error") or f"rejected by the hub ({res.get('status')})", "hub",
                             res.get("message_id"), now)
            dead.append(item.id)
            continue
        ack = res.get("ack")
        conn.execute(
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, hub_message_id = ?, hub_status = ?,"
            " hub_ack_code = ?, hub_ack = ?, delivered_ts = ?, last_error = ? WHERE id = ? AND state = 'pending'",
            (res.get("message_id"), res.get("status"), res.get("ack_code"), _b64(ack), now, res.get("error"),
             item.id))
    return dead


def dead_letter(conn: sqlite3.Connection, item_id: str, reason: str, now: float) -> None:
    """Move one pending item to the dead letters (the hub refused the request holding it alone)."""
    _to_dead_letters(conn, item_id, reason, "hub", None, now)


def _to_dead_letters(conn, item_id: str, reason: str, source: str, hub_message_id: str | None, now: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO dead_letters (id, kind, feed, order_key, received_at, charset, filename, payload,"
        " reason, source, hub_message_id, dead_ts) SELECT id, kind, feed, order_key, received_at, charset, filename,"
        " payload, ?, ?, ?, ? FROM outbox WHERE id = ?", (reason[:2000], source, hub_message_id, now, item_id))
    conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))


def add_dead_letter(conn: sqlite3.Connection, item: NewItem, reason: str, source: str) -> None:
    """Keep input the front-end processor itself refused (unparseable), with the reason."""
    conn.execute(
        "INSERT INTO dead_letters (id, kind, feed, order_key, received_at, charset, filename, payload, reason, source,"
        " dead_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (item.id, item.kind, item.feed, item.order_key, iso(item.received_ts), item.charset, item.filename,
         item.payload, reason[:2000], source, time.time()))


def list_dead_letters(conn: sqlite3.Connection, limit: int = 100) -> list[dict]:
    rows = conn.execute(
        "SELECT id, kind, feed, received_at, filename, length(payload), reason, source, hub_message_id, dead_ts,"
        " replayed_as FROM dead_letters ORDER BY dead_ts LIMIT ?", (limit,)).fetchall()
    keys = ("id", "kind", "feed", "received_at", "filename", "size", "reason", "source", "hub_message_id", "dead_ts",
            "replayed_as")
    return [dict(zip(keys, r)) for r in rows]


def get_dead_letter(conn: sqlite3.Connection, item_id: str) -> dict | None:
    row = conn.execute(
        "SELECT id, kind, feed, order_key, received_at, charset, filename, payload, reason, source, hub_message_id,"
        " dead_ts, replayed_as FROM dead_letters WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        return None
    keys = ("id", "kind", "feed", "order_key", "received_at", "charset", "filename", "payload", "reason", "source",
            "hub_message_id", "dead_ts", "replayed_as")
    return dict(zip(keys, row))


def replay_dead_letter(conn: sqlite3.Connection, item_id: str, lanes: int) -> str | None:
    """Put a dead letter back in the outbox under a new id (the hub answers an id it has seen with
    its first result, so a replay must be a new item); returns the new id, None if unknown or
    already replayed."""
    row = conn.execute("SELECT kind, feed, order_key, charset, filename, payload FROM dead_letters"
                       " WHERE id = ? AND replayed_as IS NULL", (item_id,)).fetchone()
    if row is None:
        return None
    if row[0] == "dicom":
        # the instance is still kept as a file: the DICOM forwarder takes it again
        conn.execute("UPDATE dicom_items SET state = 'pending' WHERE id = ?", (item_id,))
        conn.execute("UPDATE dead_letters SET replayed_as = ? WHERE id = ?", (item_id, item_id))
        return item_id
    new_id = str(uuid.uuid4())
    now = time.time()
    conn.execute(
        "INSERT INTO outbox (id, kind, feed, lane, order_key, received_at, received_ts, charset, filename, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (new_id, row[0], row[1], lane_for(row[2], new_id, lanes), row[2], iso(now), now, row[3], row[4], row[5]))
    conn.execute("UPDATE dead_letters SET replayed_as = ? WHERE id = ?", (new_id, item_id))
    return new_id


PURGE_LIMIT = 5000


def purge_delivered(conn: sqlite3.Connection, older_than_ts: float, limit: int = PURGE_LIMIT) -> int:
    """Delete confirmed items past retention (bounded per call so the writer is never held long)."""
    cur = conn.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE state = 'delivered'"
                       " AND delivered_ts < ? LIMIT ?)", (older_than_ts, limit))
    return cur.rowcount


def purge_file_items(conn: sqlite3.Connection, older_than_ts: float, limit: int = PURGE_LIMIT) -> int:
    """Delete the file drop's records of files settled before ``older_than_ts``. A record is what
    tells a restart that a file left in ``.processing/`` was stored, so it goes only once the file
    drop has moved the file out (``settled_ts``) and never while its item waits for the hub."""
    cur = conn.execute("DELETE FROM file_items WHERE id IN (SELECT id FROM file_items f WHERE settled_ts < ?"
                       " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.id = f.id AND o.state = 'pending') LIMIT ?)",
                       (older_than_ts, limit))
    return cur.rowcount


def stats(conn: sqlite3.Connection, now: float) -> dict:
    depth, oldest = conn.execute("SELECT count(*), min(received_ts) FROM outbox WHERE state = 'pending'").fetchone()
    dicom, dicom_oldest = conn.execute("SELECT count(*), min(received_ts) FROM dicom_items"
                                       " WHERE state = 'pending'").fetchone()
    depth += dicom
    oldest = min(t for t in (oldest, dicom_oldest, now) if t is not None)
    dead = conn.execute("SELECT count(*) FROM dead_letters WHERE replayed_as IS NULL").fetchone()[0]
    delivered = conn.execute("SELECT count(*) FROM outbox WHERE state = 'delivered'").fetchone()[0]
    return {"depth": depth, "oldest_pending_age_s": round(now - oldest, 3),
            "dead_letters": dead, "delivered_kept": delivered}


def feed_pending(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT feed, count(*) FROM outbox WHERE state = 'pending' GROUP BY feed").fetchall())


def _b64(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None
