"""The ingest service: store first, then normalize (inline for waiting senders, else by workers).

A request's items are committed to the raw log in one transaction before anything else (the
sender may delete them from its outbox once it has the 200). With ``wait=true`` that transaction
also claims the new messages for the request thread, which then normalizes them at once and
answers with their ACKs; with ``wait=false``, or when a message hit a database hiccup, the
workers (:mod:`hub.ingest.workers`) take them from the queue.

Processing a batch is three steps, so that the CPU-heavy part runs outside any write
transaction (SQLite has one writer at a time; PostgreSQL row locks are held briefly):

1. **claim** (short write transaction): due ``received`` rows, or ``processing`` rows whose
   lease ran out (a crashed worker), become ``processing`` under this worker's name and a lease
   — on PostgreSQL chosen with ``SELECT … FOR UPDATE SKIP LOCKED``, so concurrent workers never
   take the same row; on SQLite the transaction starts with ``BEGIN IMMEDIATE``;
2. **prepare** (no transaction): parse and map each message;
3. **apply** (one write transaction for the batch): only the rows still held under this claim
   are written — each message's FHIR transaction, then all statuses, ACKs and errors. A message
   that fails takes the batch's transaction back, and the batch is applied again with a
   savepoint per message, so that each message stays atomic. The messages applied without a
   savepoint leave their store writes to one :class:`SharedWrite` where they can.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence

import orjson
from sqlalchemy import and_, bindparam, or_, select, update

from hub.audit import build_event
from hub.fhir.model import now_us
from hub.ingest import log as rawlog
from hub.ingest.normalize import (NeedsSavepoint, Normalizer, Outcome, RawMessage, SharedWrite, SharedWriteFailed,
                                  Transient)
from hub.ingest.schema import ingest_messages as M
from hub.ingest.schema import ingest_status as S
from hub.security.access import Access
from hub.storage.db import read_tx, write_tx

log = logging.getLogger("yilian.ingest")

_IMPORT = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110107", "display": "Import"}
_EXPORT = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110106", "display": "Export"}
_STATUS_UPDATE = (update(S).where(S.c.message_id == bindparam("b_id"))
                  .values({c: bindparam(f"b_{c}") for c in (
                      "status", "attempts", "next_attempt_at", "updated_at", "processed_by", "claimed_until",
                      "ack_code", "ack",
                      "permanent", "error_code", "error_text", "error_segment", "error_field", "resources",
                      "skipped_stale")}))


class IngestService:
    def __init__(self, engine, fhir, *, audit=None, batch: int = 100, wait_s: float = 5.0,
                 max_attempts: int = 5, normalizer: Normalizer | None = None, lease_s: float = 120.0):
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
        self.lease_s = lease_s
        self._claims = itertools.count(1)

    # ------------------------------------------------------------------ receiving
    def receive(self, access: Access, organization: str, items: Sequence[rawlog.Incoming], *,
                wait: bool = True) -> list[dict]:
        """Store ``items`` (durably), normalize them if ``wait``, return the per-item results."""
        claim = self._new_claim("request") if wait else None
        stored = rawlog.store_items(self.engine, organization, access.principal.client_id, items, claim=claim)
        new = [s for s in stored if s.new and s.raw is not None and s.raw.kind == "hl7v2"]
        if new and claim:
            raws = {s.message_id: s.raw for s in new}
            retry: list[int] = []
            for i in range(0, len(new), self.batch):
                chunk = new[i:i + self.batch]
                retry += self._run_claimed(claim, {s.message_id: 0 for s in chunk}, raws)[1]
            for _ in range(2):  # deadlocks and conflicts with concurrent batches: again, on their own
                if not retry:
                    break
                again = self._new_claim("request")
                retry = self._run_claimed(again, self._claim(again, retry, len(retry)), raws)[1]
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

    def _await(self, status: dict[int, dict]) -> dict[int, dict]:
        """Wait (up to ``wait_s``) for first attempts another worker is still making."""
        def pending(st: dict) -> bool:
            return st["status"] in ("received", "processing") and st["attempts"] == 0

        deadline = time.monotonic() + self.wait_s
        waiting = [mid for mid, st in status.items() if pending(st)]
        while waiting and time.monotonic() < deadline:
            time.sleep(0.05)
            with read_tx(self.engine) as conn:
                fresh = rawlog.outcomes(conn, waiting)
            status.update(fresh)
            waiting = [mid for mid in waiting if pending(fresh[mid])]
        return status

    # ------------------------------------------------------------------ the queue
    def _new_claim(self, role: str) -> rawlog.Claim:
        return rawlog.Claim(f"{self.name}:{role}-{next(self._claims)}"[:100], now_us() + int(self.lease_s * 1e6))

    def process(self, *, ids: Sequence[int] | None = None, limit: int | None = None,
                worker: str | None = None) -> list[int]:
        """Claim up to ``limit`` due messages (of ``ids``, if given), prepare them, apply them;
        returns the ids this call processed."""
        claim = rawlog.Claim(worker[:100], now_us() + int(self.lease_s * 1e6)) if worker else self._new_claim("worker")
        claimed = self._claim(claim, ids, limit or self.batch)
        if not claimed:
            return []
        with read_tx(self.engine) as conn:
            raws = _read_raw(conn, list(claimed))
        return self._run_claimed(claim, claimed, raws)[0]

    def _claim(self, claim: rawlog.Claim, ids: Sequence[int] | None, limit: int) -> dict[int, int]:
        now = now_us()
        with write_tx(self.engine) as conn:
            # named messages are taken whatever their retry time; the queue's only when due
            received = S.c.status == "received" if ids is not None else and_(S.c.status == "received",
                                                                             S.c.next_attempt_at <= now)
            q = select(S.c.message_id, S.c.attempts).where(
                or_(received, and_(S.c.status == "processing", S.c.claimed_until < now)))
            if ids is not None:
                q = q.where(S.c.message_id.in_(list(ids)))
            q = q.order_by(S.c.message_id).limit(limit)
            if self.pg:
                q = q.with_for_update(skip_locked=True)
            claimed = {r.message_id: r.attempts for r in conn.execute(q)}
            if claimed:
                conn.execute(update(S).where(S.c.message_id.in_(list(claimed))).values(
                    status="processing", processed_by=claim.worker, claimed_until=claim.until, updated_at=now))
        return claimed

    def _run_claimed(self, claim: rawlog.Claim, claimed: dict[int, int],
                     raws: dict[int, RawMessage]) -> tuple[list[int], list[int]]:
        """Prepare and apply claimed messages; returns (ids processed, ids left to retry)."""
        prepared = {mid: self.normalizer.prepare(raws[mid]) for mid in claimed if mid in raws}
        # Optimistically without a savepoint per message: on SQLite a savepoint's release cost
        # about as much as the rest of the ingest's statements. A message that fails rolls
        # the batch back, and the batch runs again with a savepoint for that message alone (the
        # others applied, or may well apply, cleanly); should another fail then, with a savepoint
        # per message.
        try:
            return self._apply_claimed(claim, prepared, savepoints=frozenset())
        except NeedsSavepoint as e:
            failed = e.message_id
        if failed is not None:
            try:
                return self._apply_claimed(claim, prepared, savepoints=frozenset((failed,)))
            except NeedsSavepoint:
                pass
        return self._apply_claimed(claim, prepared, savepoints=None)

    def _apply_claimed(self, claim: rawlog.Claim, prepared: dict, *,
                       savepoints: frozenset[int] | None) -> tuple[list[int], list[int]]:
        """Apply the prepared messages still held under ``claim`` in one write transaction,
        ``savepoints``: the messages applied inside a savepoint of their own (None: all)."""
        with write_tx(self.engine) as conn:
            q = select(S.c.message_id, S.c.attempts).where(
                S.c.message_id.in_(list(prepared)), S.c.status == "processing",
                S.c.processed_by == claim.worker, S.c.claimed_until == claim.until)
            if self.pg:
                q = q.with_for_update()
            held = {r.message_id: r.attempts for r in conn.execute(q)}  # a claim may have been taken over
            rows, retry = [], []
            # the store writes of the messages applied without a savepoint, made together
            shared = SharedWrite(self.fhir.store) if savepoints is not None else None
            # in the order of the resources they lock first (their patient), then of arrival: concurrent
            # batches then take row locks in one order, which keeps PostgreSQL deadlocks rare
            for mid in sorted(held, key=lambda m: (_lock_key(prepared[m]), m)):
                attempt = held[mid] + 1
                if savepoints is None or mid in savepoints:
                    if shared is not None:
                        shared.flush(conn)  # before the savepoint: the message reads what they wrote
                    outcome = self._apply_one(conn, prepared[mid], attempt)
                else:
                    try:
                        outcome = self.normalizer.apply(conn, prepared[mid], savepoint=False, shared=shared)
                    except SharedWriteFailed:
                        raise  # for no message in particular: all in savepoints
                    except NeedsSavepoint as e:
                        e.message_id = mid
                        raise
                rows.append(_status_row(mid, outcome, attempt, claim.worker, self._retry_at(attempt)))
                if outcome.transient:
                    retry.append(mid)
            if shared is not None:
                shared.flush(conn)
            if rows:
                conn.execute(_STATUS_UPDATE, rows)
        return sorted(held), retry

    def _apply_one(self, conn, p, attempt: int) -> Outcome:
        for _ in (1, 2):  # a concurrent writer's conflict usually clears at once
            try:
                return self.normalizer.apply(conn, p)
            except Transient as e:
                reason = str(e)
        log.warning("ingest: message %s hit a transient error (attempt %d)", p.raw.id, attempt)
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
    def requeue(self, ids: Sequence[int], *, claim: rawlog.Claim | None = None) -> dict[int, int]:
        """Put messages back in the queue (after a mapping fix), or straight under ``claim`` for a
        caller that processes them itself. Returns {id: attempts} of the messages requeued
        (content duplicates have no status of their own: their first copy is what is processed)."""
        ids = list(ids)
        out: dict[int, int] = {}
        values = ({"status": "processing", "processed_by": claim.worker, "claimed_until": claim.until} if claim
                  else {"status": "received", "processed_by": None, "claimed_until": None})
        with write_tx(self.engine) as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                out.update({r.message_id: 0 for r in conn.execute(
                    select(S.c.message_id).where(S.c.message_id.in_(chunk)))})
                conn.execute(update(S).where(S.c.message_id.in_(chunk))
                             .values(attempts=0, next_attempt_at=0, updated_at=now_us(), **values))
        if claim is None:
            self.queued.set()
        return out

    def select_ids(self, conds: list, limit: int = 100_000) -> list[int]:
        with read_tx(self.engine) as conn:
            q = (select(M.c.id).select_from(M.join(S, S.c.message_id == M.c.id)).where(*conds)
                 .order_by(M.c.id).limit(limit))
            return [r[0] for r in conn.execute(q)]

    def reprocess(self, ids: Sequence[int], *, wait: bool = True) -> int:
        """Requeue ``ids``; with ``wait``, process them here and now (in batches)."""
        ids = list(ids)
        if not wait:
            return len(self.requeue(ids))
        n = 0
        for i in range(0, len(ids), self.batch):
            claim = self._new_claim("reprocess")
            claimed = self.requeue(ids[i:i + self.batch], claim=claim)
            with read_tx(self.engine) as conn:
                raws = _read_raw(conn, list(claimed))
            self._run_claimed(claim, claimed, raws)  # what hit a transient error waits in the queue
            n += len(claimed)
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
        self._record(access, "create", _IMPORT, "hl7v2-ingest", [(s.message_id, s.duplicate) for s in stored],
                     patients)

    def audit_payload_read(self, access: Access, message_ids: Sequence[int]) -> None:
        """An administrator read raw payloads (patient data): one AuditEvent (DICOM 110106 Export)."""
        if self.audit is not None and message_ids:
            self._record(access, "read", _EXPORT, "ingest-payload-read", [(m, False) for m in message_ids], [])

    def _record(self, access: Access, interaction: str, type_: dict, subtype: str,
                messages: list[tuple[int, bool]], patients: list[str]) -> None:
        p = access.principal
        ev = build_event(interaction=interaction, status=200, who=p.subject, client_id=p.client_id,
                         organization=p.organization, address=access.address, resources=[], patients=patients,
                         query=None, observer=self.fhir.base_url)
        ev["type"] = type_
        ev["subtype"] = [{"system": "urn:yilian:audit-subtype", "code": subtype}]
        ev.setdefault("entity", []).extend(
            {"what": {"identifier": {"system": "urn:yilian:ingest-message", "value": str(mid)}},
             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "3"},
             **({"detail": [{"type": "duplicate", "valueString": "true"}]} if dup else {})}
            for mid, dup in messages)
        self.audit.record(ev)


def _status_row(mid: int, o: Outcome, attempts: int, worker: str, retry_at: int) -> dict:
    return {"b_id": mid, "b_status": o.status, "b_attempts": attempts,
            "b_next_attempt_at": retry_at if o.transient else 0, "b_updated_at": now_us(),
            "b_processed_by": worker[:100], "b_claimed_until": None, "b_ack_code": o.ack_code, "b_ack": o.ack, "b_permanent": o.permanent,
            "b_error_code": o.error_code, "b_error_text": o.error_text, "b_error_segment": o.error_segment,
            "b_error_field": o.error_field,
            "b_resources": orjson.dumps(o.resources).decode() if o.resources else None,
            "b_skipped_stale": orjson.dumps(o.skipped_stale).decode() if o.skipped_stale else None}


def _lock_key(p) -> str:
    entries = (p.result.bundle.get("entry") or []) if p.result is not None else []
    return str((entries[0].get("request") or {}).get("url", "")) if entries else ""


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
