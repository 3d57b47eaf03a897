"""The offer log for the statistics, written off the request path.

``$recognizable`` must answer in milliseconds, and a write transaction on the request path would
wait behind every other writer (on SQLite, one at a time). Offers are queued and written in
batches by a background thread, at most ``flush_interval`` seconds late; the statistics call
:meth:`OfferLog.flush` first, so within one process they are always complete, and other hub
processes' offers are at most ``flush_interval`` late. The queue is bounded (back-pressure, as
the audit journal does); ``close()`` writes what is queued.
"""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy import Engine

from hub.recognition.schema import rec_offers
from hub.storage.db import write_tx

log = logging.getLogger("yilian.recognition")


class OfferLog:
    def __init__(self, engine: Engine, *, flush_interval: float = 0.2, max_queued: int = 10_000):
        self.engine = engine
        self.flush_interval = flush_interval
        self._q: queue.Queue[list[dict]] = queue.Queue(maxsize=max_queued)
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def record(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="recognition-offers", daemon=True)
                    self._thread.start()
        self._q.put(rows)

    def _drain(self) -> list[dict]:
        """Everything queued now (taken only under the write lock, so that a flush() that
        returns has written every row recorded before it was called)."""
        rows: list[dict] = []
        while True:
            try:
                rows.extend(self._q.get_nowait())
            except queue.Empty:
                return rows

    def _write(self, rows: list[dict]) -> None:
        if not rows:
            return
        try:
            with write_tx(self.engine) as conn:
                conn.execute(rec_offers.insert(), rows)
        except Exception:  # statistics must never cost the physician the answer; say so loudly
            log.exception("could not record %d recognition offers", len(rows))

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Write what is queued now (before statistics are read)."""
        with self._write_lock:
            self._write(self._drain())

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()
