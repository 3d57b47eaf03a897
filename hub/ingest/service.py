"""The ingest service: store first, then normalize (inline for waiting senders, else by workers).

A request's items are committed to the raw log in one transaction before anything else (the
sender may delete them from its outbox once it has the 200). With ``wait=true`` the request
thread then claims its own new messages and normalizes them at once, in transactions of up to
``ingest_batch`` messages with one savepoint each (a message's FHIR transaction stays atomic;
the commit is shared), and answers with their ACKs; messages a worker claimed first are waited
for up to ``ingest_wait_s``. With ``wait=false``, or when a message hit a database hiccup, the
workers (:mod:`hub.ingest.workers`) take them from the queue.

Claiming is the processing transaction itself: on PostgreSQL ``SELECT … FOR UPDATE SKIP LOCKED``
(concurrent workers skip each other's rows and never process one twice); on SQLite the write
transaction starts with ``BEGIN IMMEDIATE``, so only one claimer runs at a time. A crash rolls
the claim back with the work: the message is simply still ``received``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence

import orjson
from sqlalchemy import bindparam, select, update

from hub.audit import build_event
from hub.fhir.model import now_us
from hub.ingest import log as rawlog
from hub.ingest.normalize import Normalizer, Outcome, RawMessage, Transient
from hub.ingest.schema import ingest_messages as M
from hub.ingest.schema import ingest_status as S
from hub.security.access import Access
from hub.storage.db import read_tx, write_tx

log = logging.getLogger("yilian.ingest")

_IMPORT = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110107", "display": "Import"}
_STATUS_UPDATE = (update(S).where(S.c.message_id == bindparam("b_id"))
                  .values({c: bindparam(f"b_{c}") for c in (
                      "status", "attempts", "next_attempt_at", "updated_at", "processed_by", "ack_code", "ack",
                      "permanent", "error_code", "error_text", "error_segment", "error_field", "resources")}))


class IngestService:
    def __init__(self, engine, fhir, *, audit=None, batch: int = 100, wait_s: float = 5.0,
                 max_attempts: int = 5, normalizer: Normalizer | None = None):
        self.engine = engine
        self.fhir = fhir
        self.audit = audit
        self.batch = batch
        self.wait_s = wait_s
        self.max_attempts = max_attempts
        self.normalizer = normalizer or Normalizer(fhir)
        self.pg = engine.dialect.name == "postgresql"
        self.queued = threading.Event()  # set when work was queued: wakes this process's workers
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    # ------------------------------------------------------------------ receiving
    def receive(self, access: Access, organization: str, items: Sequence[rawlog.Incoming], *,
                wait: bool = True) -> list[dict]:
        """Store ``items`` (durably), normalize them if ``wait``, return the per-item results."""
        stored = rawlog.store_items(self.engine, organization, access.principal.client_id, items)
        new = [s for s in stored if s.new and s.raw is not None and s.raw.kind == "hl7v2"]
        if new and wait:
            self._normalize_now([s.raw for s in new])
        elif new:
            self.queued.set()
        with read_tx(self.engine) as conn:
            status = rawlog.outcomes(conn, [s.outcome_id for s in stored])
        if wait:
            status = self._await(status)
        results = [rawlog.item_result(s.item_id, s.outcome_id if s.duplicate else s.message_id, s.duplicate,
                                      status.get(s.outcome_id)) for s in stored]
        self._audit(access, stored, status)
        return results

    def _normalize_now(self, raws: list[RawMessage]) -> None:
        for i in range(0, len(raws), self.batch):
            chunk = raws[i:i + self.batch]
            self.process(ids=[r.id for r in chunk], known={r.id: r for r in chunk}, worker=f"{self.name}:request")

    def _await(self, status: dict[int, dict]) -> dict[int, dict]:
        """Wait (up to ``wait_s``) for messages a worker is still normalizing."""
        deadline = time.monotonic() + self.wait_s
        pending = [mid for mid, st in status.items() if st["status"] == "received" and st["attempts"] == 0]
        while pending and time.monotonic() < deadline:
            time.sleep(0.05)
            with read_tx(self.engine) as conn:
                fresh = rawlog.outcomes(conn, pending)
            status.update(fresh)
            pending = [mid for mid in pending if fresh[mid]["status"] == "received" and fresh[mid]["attempts"] == 0]
        return status

    # ------------------------------------------------------------------ the queue
    def process(self, *, ids: Sequence[int] | None = None, limit: int | None = None,
                known: dict[int, RawMessage] | None = None, worker: str | None = None) -> list[int]:
        """Claim up to ``limit`` received messages (of ``ids``, if given) and normalize them in
        one transaction; returns the ids processed."""
        limit = limit or self.batch
        now = now_us()
        worker = worker or self.name
        with write_tx(self.engine) as conn:
            q = select(S.c.message_id, S.c.attempts).where(S.c.status == "received")
            if ids is not None:
                q = q.where(S.c.message_id.in_(list(ids)))
            else:
                q = q.where(S.c.next_attempt_at <= now)
            q = q.order_by(S.c.message_id).limit(limit)
            if self.pg:
                q = q.with_for_update(skip_locked=True)
            claimed = {r.message_id: r.attempts for r in conn.execute(q)}
            if not claimed:
                return []
            raws = dict(known or {})
            missing = [mid for mid in claimed if mid not in raws]
            if missing:
                raws.update(_read_raw(conn, missing))
            rows = []
            for mid, attempts in claimed.items():
                outcome = self._normalize_one(conn, raws[mid], attempts + 1)
                rows.append(_status_row(mid, outcome, attempts + 1, worker, self._retry_at(attempts + 1)))
            conn.execute(_STATUS_UPDATE, rows)
        return list(claimed)

    def _normalize_one(self, conn, raw: RawMessage, attempt: int) -> Outcome:
        for tries in (1, 2):  # a concurrent writer's conflict usually clears at once
            try:
                return self.normalizer.normalize(conn, raw)
            except Transient as e:
                reason = str(e)
        log.warning("ingest: message %s hit a transient error (attempt %d)", raw.id, attempt)
        if attempt >= self.max_attempts:
            return Outcome("failed", error_text=f"gave up after {attempt} attempts: {reason}", error_code=207)
        return Outcome("received", error_text=f"attempt {attempt} failed, will retry: {reason}")

    def _retry_at(self, attempts: int) -> int:
        return now_us() + int(min(2 ** attempts, 300) * 1_000_000)

    def drain(self, *, worker: str | None = None) -> int:
        """Process the queue until nothing is due; returns how many messages were processed."""
        n = 0
        while True:
            done = self.process(worker=worker)
            if not done:
                return n
            n += len(done)

    # ------------------------------------------------------------------ reprocessing
    def requeue(self, ids: Sequence[int]) -> int:
        """Put messages back in the queue (after a mapping fix); content duplicates are left out
        (their first copy is what is processed). Returns how many were queued."""
        ids = list(ids)
        if not ids:
            return 0
        with write_tx(self.engine) as conn:
            n = 0
            for i in range(0, len(ids), 500):
                res = conn.execute(update(S).where(S.c.message_id.in_(ids[i:i + 500]))
                                   .values(status="received", attempts=0, next_attempt_at=0, updated_at=now_us()))
                n += res.rowcount
        self.queued.set()
        return n

    def select_ids(self, conds: list, limit: int = 100_000) -> list[int]:
        with read_tx(self.engine) as conn:
            q = (select(M.c.id).select_from(M.join(S, S.c.message_id == M.c.id)).where(*conds)
                 .order_by(M.c.id).limit(limit))
            return [r[0] for r in conn.execute(q)]

    def reprocess(self, ids: Sequence[int], *, wait: bool = True) -> int:
        n = self.requeue(ids)
        if wait:
            for i in range(0, len(ids), self.batch):
                self.process(ids=list(ids)[i:i + self.batch], worker=f"{self.name}:reprocess")
        return n

    # ------------------------------------------------------------------ audit
    def _audit(self, access: Access, stored, status: dict[int, dict]) -> None:
        """One AuditEvent per ingest request (DICOM 110107 Import): who delivered, which raw-log
        messages, which patients' records they touched; never message content."""
        if self.audit is None:
            return
        patients: list[str] = []
        for st in status.values():
            for ref in orjson.loads(st["resources"]) if st.get("resources") else ():
                if ref.startswith("Patient/"):
                    patients.append(ref[8:])
        p = access.principal
        ev = build_event(interaction="create", status=200, who=p.subject, client_id=p.client_id,
                         organization=p.organization, address=access.address, resources=[], patients=patients,
                         query=None, observer=self.fhir.base_url)
        ev["type"] = _IMPORT
        ev["subtype"] = [{"system": "urn:yilian:audit-subtype", "code": "hl7v2-ingest"}]
        ev.setdefault("entity", []).extend(
            {"what": {"identifier": {"system": "urn:yilian:ingest-message", "value": str(s.message_id)}},
             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "3"},
             **({"detail": [{"type": "duplicate", "valueString": "true"}]} if s.duplicate else {})}
            for s in stored)
        self.audit.record(ev)


def _status_row(mid: int, o: Outcome, attempts: int, worker: str, retry_at: int) -> dict:
    return {"b_id": mid, "b_status": o.status, "b_attempts": attempts,
            "b_next_attempt_at": retry_at if o.transient else 0, "b_updated_at": now_us(),
            "b_processed_by": worker[:100], "b_ack_code": o.ack_code, "b_ack": o.ack, "b_permanent": o.permanent,
            "b_error_code": o.error_code, "b_error_text": o.error_text, "b_error_segment": o.error_segment,
            "b_error_field": o.error_field,
            "b_resources": orjson.dumps(o.resources).decode() if o.resources else None}


def _read_raw(conn, ids: list[int]) -> dict[int, RawMessage]:
    q = select(M.c.id, M.c.organization, M.c.kind, M.c.payload, M.c.charset_hint, M.c.sending_facility).where(
        M.c.id.in_(ids))
    return {r.id: RawMessage(r.id, r.organization, r.kind, r.payload, r.charset_hint, r.sending_facility)
            for r in conn.execute(q)}


def make_ingest_service(engine, fhir, settings, *, audit=None) -> IngestService:
    """The service as configured by :class:`hub.config.HubSettings` (``ingest_*``)."""
    from hub.ingest.profiles import ProfileFile

    profiles = ProfileFile(settings.ingest_profiles_file)
    normalizer = Normalizer(fhir, profile_for=profiles.profile_for)
    return IngestService(engine, fhir, audit=audit, batch=settings.ingest_batch, wait_s=settings.ingest_wait_s,
                         max_attempts=settings.ingest_max_attempts, normalizer=normalizer)
