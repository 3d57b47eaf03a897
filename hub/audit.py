"""Audit trail: one AuditEvent per FHIR interaction, in the IHE BALP pattern.

Events are queued by the request and written in batches by a background thread (one transaction
per batch, at most ``flush_interval`` seconds late), so that auditing every read does not make
every read a database write. The queue is bounded: when the writer falls behind, requests wait
for room (back-pressure) rather than the backlog growing without limit or events being dropped.
``close()`` flushes what is queued.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading

from sqlalchemy import Engine

from hub.fhir.model import instant, now_us
from hub.fhir.store import FhirStore
from hub.storage.db import write_tx

log = logging.getLogger("yilian.audit")

_ACTIONS = {"create": "C", "read": "R", "vread": "R", "update": "U", "patch": "U", "delete": "D",
            "search-type": "E", "search-system": "E", "history-instance": "R", "history-type": "R",
            "history-system": "R", "operation": "E", "batch": "E", "transaction": "E", "capabilities": "R"}
_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "Restful Operation"}


def outcome_code(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (client error), 8 serious failure (server)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def build_event(*, interaction: str, status: int, who: str, client_id: str, organization: str | None,
                address: str | None, resources: list[str], patients: list[str], query: str | None,
                observer: str) -> dict:
    ev: dict = {
        "resourceType": "AuditEvent",
        "type": _REST,
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": _ACTIONS.get(interaction, "E"),
        "recorded": instant(now_us()),
        "outcome": outcome_code(status),
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP" if client_id else "AUT"}]},
            "who": {"identifier": {"system": "urn:yilian:principal", "value": who}},
            "altId": client_id or None,
            "requestor": True,
            **({"network": {"address": address, "type": "2"}} if address else {}),
        }],
        "source": {"observer": {"display": observer},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4"}]},
    }
    if not ev["agent"][0]["altId"]:
        del ev["agent"][0]["altId"]
    if organization:
        ev["agent"][0]["who"]["display"] = organization
    entities = []
    for pid in dict.fromkeys(patients):
        entities.append({"what": {"reference": f"Patient/{pid}"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})
    for ref in dict.fromkeys(resources):
        if ref.startswith("Patient/") and ref.split("/")[1] in patients:
            continue
        entities.append({"what": {"reference": ref},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"}})
    if query:
        entities.append({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
                         "query": base64.b64encode(query.encode()).decode()})
    if entities:
        ev["entity"] = entities
    return ev


class AuditSink:
    """Queues AuditEvents and writes them in batches from a background thread."""

    def __init__(self, engine: Engine, *, flush_interval: float = 0.2, max_batch: int = 500,
                 max_queued: int = 5000):
        self.engine = engine
        self.store = FhirStore()
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._q: queue.Queue[dict | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._stopped = threading.Event()
        self._thread.start()

    def record(self, event: dict) -> None:
        self._q.put(event)

    def _run(self) -> None:
        while True:
            batch: list[dict] = []
            try:
                item = self._q.get(timeout=self.flush_interval)
            except queue.Empty:
                continue
            stop = item is None
            if item is not None:
                batch.append(item)
            while len(batch) < self.max_batch:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            if batch:
                self._write(batch)
            if stop:
                self._stopped.set()
                return

    def _write(self, batch: list[dict]) -> None:
        try:
            with write_tx(self.engine) as conn:
                self.store.write(conn, [self.store.prepare_create("AuditEvent", ev) for ev in batch])
        except Exception:  # the audit trail must not take the API down; loudly report instead
            log.exception("could not write %d audit events", len(batch))

    def close(self, timeout: float = 10.0) -> None:
        self._q.put(None)
        self._stopped.wait(timeout)
