"""The ingest log's tables: the append-only raw log, its processing status, node heartbeats.

``ingest_messages`` is insert-only: a row is the message exactly as received (payload bytes,
SHA-256, what could be read of MSH) and is never updated. What happens to it lives in
``ingest_status`` (one row per processed message, keyed by the raw-log id), so a mapping fix can
be replayed over history from unchanged raw data. A message that is a content duplicate of an
earlier one (same organization, MSH-10 and hash under a new sender item id) is stored too, with
``duplicate_of`` naming the first; it has no status row of its own and answers with the first's.

Times are microseconds since 1970-01-01 UTC, as in the rest of the schema.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, LargeBinary, Table, Text,
                        UniqueConstraint, text)

from hub.storage.schema import Str, metadata

#: an auto-incrementing 64-bit key (SQLite only auto-increments an INTEGER PRIMARY KEY)
ROW_ID = BigInteger().with_variant(Integer(), "sqlite")

ingest_messages = Table(
    "ingest_messages",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("organization", Str(100), nullable=False),
    Column("item_id", Str(200), nullable=False),  # the sender's unique id for the item (outbox id)
    Column("kind", Str(16), nullable=False),  # hl7v2 | csv | json | xml | cda | dicom-meta
    Column("feed", Str(100)),
    Column("received_at", BigInteger),  # when the sender received it
    Column("stored_at", BigInteger, nullable=False),  # when the hub committed it
    Column("client_id", Str(100)),  # the OAuth2 client that delivered it
    Column("payload", LargeBinary, nullable=False),
    Column("sha256", Str(64), nullable=False),
    Column("charset_hint", Str(40)),  # the sender's charset override, if any
    Column("filename", Text),
    # what could be read of MSH (adapters.hl7v2.read_header), for routing, dedup and filters
    Column("sending_app", Str(255)),
    Column("sending_facility", Str(255)),
    Column("control_id", Str(200)),
    Column("message_type", Str(20)),  # MSH-9.1^MSH-9.2, e.g. ORU^R01
    Column("version", Str(20)),
    Column("charset", Str(40)),  # the codec the header was decoded with
    Column("duplicate_of", BigInteger),  # raw-log id of the first message with this content
    UniqueConstraint("organization", "item_id", name="uq_ingest_messages_item"),
    Index("ix_ingest_messages_content", "organization", "control_id", "sha256"),
    Index("ix_ingest_messages_stored", "stored_at"),
    # one first message per content; a concurrent second copy fails here and is retried as a duplicate
    Index("uq_ingest_messages_first", "organization", "control_id", "sha256", unique=True,
          sqlite_where=text("duplicate_of IS NULL AND control_id IS NOT NULL"),
          postgresql_where=text("duplicate_of IS NULL AND control_id IS NOT NULL")),
)

ingest_status = Table(
    "ingest_status",
    metadata,
    Column("message_id", ROW_ID, primary_key=True),
    # received | processing (claimed by a worker; "received" to senders) | normalized | rejected | failed | unsupported
    Column("status", Str(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", BigInteger, nullable=False, default=0),  # queue order / retry back-off
    Column("updated_at", BigInteger, nullable=False),
    Column("processed_by", Str(100)),  # the worker holding the claim / that produced the outcome
    Column("claimed_until", BigInteger),  # lease of a "processing" claim; past it, another worker may take over
    Column("ack_code", Str(2)),
    Column("ack", LargeBinary),
    Column("permanent", Boolean, nullable=False, default=False),
    Column("error_code", Integer),  # HL7 table 0357
    Column("error_text", Text),
    Column("error_segment", Str(10)),
    Column("error_field", Str(200)),  # field position, or the FHIR element path of a validation error
    Column("resources", Text),  # JSON list of "Type/id" written by the message's transaction
    Column("skipped_stale", Text),  # JSON list of "Type/id" left alone: the store holds a newer event
    Index("ix_ingest_status_queue", "status", "next_attempt_at", "message_id"),
)

ingest_heartbeats = Table(
    "ingest_heartbeats",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("organization", Str(100), nullable=False),
    Column("node", Str(200), nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("body", Text, nullable=False),  # the heartbeat JSON as sent
    Index("ix_ingest_heartbeats_node", "organization", "node", "id"),
)
