"""The hub's ingest log: raw messages in, normalized FHIR out (issue 3, "hub/ — the ingest log").

* :mod:`hub.ingest.api` — the HTTP contract (``/ingest/messages``, heartbeats, reprocessing);
* :mod:`hub.ingest.log` — the append-only raw log, deduplication, outcome views;
* :mod:`hub.ingest.normalize` — parse → map → one FHIR transaction with the stale-event guard, ACKs;
* :mod:`hub.ingest.service` — store first, normalize inline or queue; claiming; reprocessing; audit;
* :mod:`hub.ingest.workers` — worker threads and ``yilian ingest worker``;
* :mod:`hub.ingest.heartbeats` — front-end processor heartbeats.

See ``docs/ingest.md``.
"""
