"""File drop: a watched folder for the exports many HIS produce instead of HL7 (CSV, JSON, XML/CDA).

Only complete files are taken: a file is picked up once its size and modification time have not
changed for ``stable_s`` seconds (set 0 for senders that write elsewhere and rename in, the
atomic protocol); names starting with ``.`` or ending with ``.tmp``/``.part`` are never taken.

Life of a file ``inbox/x.csv``:

1. renamed (atomic, same file system) to ``inbox/.processing/<item id>__x.csv``;
2. its bytes are committed to the outbox as one item (order key: the file);
3. once the hub has confirmed it, moved to ``inbox/done/``; if the hub rejected it for good, to
   ``inbox/error/`` with ``x.csv.error.txt`` giving the reason. A file that cannot be read or is
   too large goes to ``error/`` at once.

After a crash, ``.processing/`` is reconciled with the outbox: a file whose item was never
committed goes back to the inbox, the others wait for their item's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path

from . import outbox as ob
from .config import FileDropConfig
from .status import NodeStats

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 40 * 1024 * 1024          # base64 in a 64 MiB request
_KINDS = {".csv": "csv", ".json": "json", ".xml": "xml", ".cda": "cda", ".hl7": "hl7v2"}
_SKIP_SUFFIXES = (".tmp", ".part", ".partial", ".filepart")


def kind_for(path: Path, data: bytes, configured: str | None) -> str | None:
    if configured:
        return configured
    kind = _KINDS.get(path.suffix.lower())
    if kind == "xml" and b"ClinicalDocument" in data[:4096]:
        return "cda"
    return kind


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unique_target(folder: Path, name: str) -> Path:
    target = folder / name
    if target.exists():
        stem = time.strftime("%Y%m%dT%H%M%S")
        target = folder / f"{stem}-{uuid.uuid4().hex[:6]}-{name}"
    return target


def item_states(conn: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """id -> (outbox state or 'dead', reason) for the ids the outbox knows."""
    out: dict[str, tuple[str, str | None]] = {}
    for item_id in ids:
        row = conn.execute("SELECT state FROM outbox WHERE id = ?", (item_id,)).fetchone()
        if row is not None:
            out[item_id] = (row[0], None)
            continue
        row = conn.execute("SELECT reason FROM dead_letters WHERE id = ?", (item_id,)).fetchone()
        if row is not None:
            out[item_id] = ("dead", row[0])
    return out


def was_committed(conn: sqlite3.Connection, item_id: str) -> bool:
    """Whether an item id was ever committed (it may since have been purged after confirmation)."""
    return conn.execute("SELECT 1 FROM file_items WHERE id = ?", (item_id,)).fetchone() is not None


def mark_settled(conn: sqlite3.Connection, ids: list[str], now: float) -> None:
    """The files of ``ids`` have left ``.processing/`` for good: their records' retention starts."""
    conn.executemany("UPDATE file_items SET settled_ts = ? WHERE id = ?", [(now, i) for i in ids])


def _record_file_item(conn: sqlite3.Connection, item: ob.NewItem, lane: int) -> ob.Stored:
    stored = ob.insert_item(conn, item, lane)
    if not stored.duplicate:
        conn.execute("INSERT INTO file_items (id, name) VALUES (?, ?)", (item.id, item.filename))
    return stored


class FileDrop:
    def __init__(self, cfg: FileDropConfig, outbox: ob.Outbox, stats: NodeStats):
        self.cfg, self.outbox, self.stats = cfg, outbox, stats
        self.inbox = cfg.path
        self.processing = self.inbox / ".processing"
        self.done = self.inbox / "done"
        self.error = self.inbox / "error"
        self._seen: dict[str, tuple[int, int, float]] = {}     # name -> (size, mtime_ns, first seen stable)
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    @property
    def connections(self) -> int:
        return 0

    async def start(self) -> None:
        for d in (self.inbox, self.processing, self.done, self.error):
            d.mkdir(parents=True, exist_ok=True)
        self.stats.receivers[self.cfg.name] = {"kind": "file-drop", "path": str(self.inbox)}
        await self._recover()
        self._task = asyncio.create_task(self._run(), name=f"file-drop-{self.cfg.name}")
        log.info("file drop %s watching %s", self.cfg.name, self.inbox)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.scan()
                await self.settle()
            except ob.OutboxError as exc:
                log.warning("file drop %s: %s", self.cfg.name, exc)
            except OSError as exc:
                log.error("file drop %s: %s", self.cfg.name, exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.cfg.poll_s)
            except asyncio.TimeoutError:
                pass

    async def _recover(self) -> None:
        """Files left in .processing by a crash whose item was never committed go back to the inbox."""
        for path in sorted(self.processing.iterdir()):
            item_id, _, name = path.name.partition("__")
            if not await self.outbox.call(was_committed, item_id):
                os.replace(path, _unique_target(self.inbox, name))
                log.info("file drop %s: %s was not stored before a restart; taken again", self.cfg.name, name)

    def _complete_files(self) -> list[Path]:
        now = time.monotonic()
        ready, present = [], set()
        for entry in os.scandir(self.inbox):
            name = entry.name
            if name.startswith(".") or name.lower().endswith(_SKIP_SUFFIXES) or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            present.add(name)
            seen = self._seen.get(name)
            if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
                self._seen[name] = (st.st_size, st.st_mtime_ns, now)
                if self.cfg.stable_s > 0:
                    continue
                seen = self._seen[name]
            if now - seen[2] >= self.cfg.stable_s:
                ready.append(Path(entry.path))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return sorted(ready)

    async def scan(self) -> None:
        for path in self._complete_files():
            self._seen.pop(path.name, None)
            await self._take(path)

    async def _take(self, path: Path) -> None:
        counters = self.stats.feed(self.cfg.feed)
        item_id = str(uuid.uuid4())
        claimed = self.processing / f"{item_id}__{path.name}"
        try:
            os.replace(path, claimed)
        except FileNotFoundError:
            return                                # taken away meanwhile
        try:
            size = claimed.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ValueError(f"file larger than {MAX_FILE_BYTES} bytes")
            data = claimed.read_bytes()
            kind = kind_for(path, data, self.cfg.kind)
            if kind is None:
                raise ValueError(f"unknown export type {path.suffix!r} (set kind in the file_drop section)")
            if not data:
                raise ValueError("empty file")
        except (OSError, ValueError) as exc:
            counters.failed += 1
            self._to_error(claimed, path.name, str(exc))
            return
        item = ob.NewItem(kind=kind, feed=self.cfg.feed, payload=data, order_key=f"file:{self.cfg.name}:{path.name}",
                          charset=self.cfg.charset, filename=path.name, id=item_id,
                          dedup_key=f"file|{self.cfg.name}|{path.name}|{ob.content_hash(data)}")
        try:
            stored = await self.outbox.call(_record_file_item, item, ob.lane_for(item.order_key, item.id,
                                                                                 self.outbox.lanes))
        except (ob.OutboxFull, ob.OutboxError) as exc:
            # not stored: give the file back, it is taken again on a later scan (under another name
            # if the sender has dropped a new file of that name meanwhile, which must not be lost)
            os.replace(claimed, _unique_target(self.inbox, path.name))
            log.error("file drop %s: %s not stored (%s); will retry", self.cfg.name, path.name, exc)
            return
        if stored.duplicate:
            log.info("file drop %s: %s already stored as %s; moved to done", self.cfg.name, path.name, stored.id)
            os.replace(claimed, _unique_target(self.done, path.name))
            return
        for listener in self.outbox.listeners:
            listener(ob.lane_for(item.order_key, item.id, self.outbox.lanes))
        counters.received += 1
        log.info("file drop %s: %s stored as item %s (%s, %d bytes)", self.cfg.name, path.name, item_id, kind,
                 len(data))

    async def settle(self) -> None:
        """Move files whose items the hub confirmed to done/, rejected ones to error/; once the moves
        are on disk, their records may be purged after the retention (:func:`mark_settled`)."""
        claimed = {p.name.partition("__")[0]: p for p in self.processing.iterdir()}
        if not claimed:
            return
        states = await self.outbox.call(item_states, list(claimed))
        settled = []
        for item_id, path in claimed.items():
            name = path.name.partition("__")[2]
            state, reason = states.get(item_id, ("purged", None))
            if state in ("delivered", "purged"):
                os.replace(path, _unique_target(self.done, name))
                settled.append(item_id)
            elif state == "dead":
                self._to_error(path, name, reason or "rejected")
                settled.append(item_id)
        if settled:
            _fsync_dir(self.done)
            _fsync_dir(self.processing)
            await self.outbox.call(mark_settled, settled, time.time())

    def _to_error(self, path: Path, name: str, reason: str) -> None:
        target = _unique_target(self.error, name)
        os.replace(path, target)
        target.with_name(target.name + ".error.txt").write_text(reason + "\n", "utf-8")
        _fsync_dir(self.error)
        log.warning("file drop %s: %s moved to error/: %s", self.cfg.name, name, reason)
