"""Front-end processor (前置机): receive from hospital systems, buffer durably, forward to the hub.

Receivers (HL7 v2 over MLLP, DICOM C-STORE, a file-drop folder) commit every item to a local
SQLite outbox before acknowledging it; a forwarder sends the outbox to the hub's ingest HTTP
endpoint in batches, idempotently (each item has its own id), in order per patient. It never
imports ``hub``: it speaks to the hub over the network only.
"""

__version__ = "0.1.0"
