"""Recognition wired into the hub: reference data, the mark hook, the FHIR operations."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine

from hub.errors import InvalidRequest
from hub.fhir.service import FhirService
from hub.recognition import decision, marks, recognizable
from hub.recognition.offers import OfferLog
from hub.recognition.reference import Reference, parse, split_release
from hub.recognition.store import ReferenceStore, effective_us
from hub.storage.db import write_tx

log = logging.getLogger("yilian.recognition")


class RecognitionService:
    def __init__(self, engine: Engine, fhir: FhirService, *, watch_s: float = 30.0):
        self.engine = engine
        self.fhir = fhir
        # reference data published with a future effective date changes the marks when it comes
        # into force: a watcher compares the versions in force every ``watch_s`` seconds
        self.watch_s = watch_s
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.reference = ReferenceStore()
        self.offers = OfferLog(engine)
        self._retag_lock = threading.Lock()
        self._retag_pending = False
        self._retag_thread: threading.Thread | None = None

    def install(self) -> None:
        """Hook into every FHIR write and register the operations (hub.recognition.recognizable, hub.recognition.decision)."""
        self.fhir.store.before_write.append(marks.before_write_hook(self.snapshot))
        self.fhir.store.after_write.append(decision.index_decisions)
        self.fhir.register_operation(
            "recognizable", lambda svc, req, access, rtype, rid: recognizable.recognizable(svc, self, req, access, rtype, rid),
            types=("Patient", "ServiceRequest"))
        self.fhir.register_operation(
            "recognition-decision",
            lambda svc, req, access, rtype, rid: decision.record_decision(svc, self, req, access, rtype, rid),
            types=("ServiceRequest",))

    def snapshot(self, conn: Connection, at: int | None = None) -> Reference:
        return self.reference.snapshot(conn, at)

    def start_watching(self) -> None:
        """Re-mark stored results whenever another version of some reference data comes into
        force (one published earlier with a later effective date, by this or another process)."""
        if self.watch_s <= 0 or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="recognition-watch", daemon=True)
        self._watcher.start()

    def _in_force(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return self.reference.in_force(conn)

    def _watch(self) -> None:
        seen = None
        while not self._watch_stop.wait(self.watch_s if seen is not None else 0):
            try:
                now = self._in_force()
            except Exception:  # database busy or restarting: look again next round
                log.warning("could not read the recognition reference versions in force; will retry")
                continue
            if seen is not None and now != seen:
                log.info("recognition reference data came into force: %s; re-marking stored results", now)
                self.retag_later()
            seen = now

    def publish(self, kind: str | None, data: bytes | str, *, fmt: str = "csv", effective_from: str | None = None,
                source: str | None = None, loaded_by: str | None = None, retag: str = "wait") -> dict:
        """Check and store a new version of one kind (or, with ``kind=None``, a JSON release of
        several kinds); then refresh the marks of stored results: ``retag`` "wait" (now, the
        count is returned), "background" (a thread; a store of millions of results takes a
        while) or "none". Returns what was stored."""
        if retag not in ("wait", "background", "none"):
            raise InvalidRequest(f"retag {retag!r}: wait, background or none")
        sections = split_release(data) if kind is None else {kind: parse(kind, data, fmt)}
        at = effective_us(effective_from)
        out = {"effective_from": at, "versions": {}}
        with write_tx(self.engine) as conn:
            for k, rows in sections.items():
                out["versions"][k] = self.reference.publish(conn, k, rows, effective_from=at, source=source,
                                                            loaded_by=loaded_by)
                out.setdefault("rows", {})[k] = len(rows)
        self.reference.invalidate()
        if retag == "wait":
            out["retagged"] = self.retag()
        elif retag == "background":
            self.retag_later()
            out["retagged"] = "started"
        log.info("recognition reference data published: %s", out["versions"])
        return out

    def close(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        self.offers.close()
        thread = self._retag_thread
        if thread is not None:  # an unfinished refresh resumes with `yilian recognition retag`
            thread.join(10)

    def retag(self) -> int:
        return marks.retag(self.engine, self.fhir.store, self.snapshot)

    def retag_later(self) -> None:
        """Refresh the marks in a background thread; requests while one runs coalesce into one more run."""
        with self._retag_lock:
            self._retag_pending = True
            if self._retag_thread is not None and self._retag_thread.is_alive():
                return
            self._retag_thread = threading.Thread(target=self._retag_loop, name="recognition-retag", daemon=True)
            self._retag_thread.start()

    def _retag_loop(self) -> None:
        while True:
            with self._retag_lock:
                if not self._retag_pending:
                    return
                self._retag_pending = False
            try:
                self.retag()
            except Exception:
                log.exception("refreshing the recognition marks failed; run `yilian recognition retag`")
