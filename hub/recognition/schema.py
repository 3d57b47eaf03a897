"""Recognition tables (Alembic branch ``recognition``, migration ``0002_recognition``).

``rec_reference`` keeps every published version of each kind of reference data whole (JSON
rows), with the date it takes effect; the version in force at time *t* is the highest one whose
``effective_from`` ≤ *t*. ``rec_offers`` and ``rec_decisions`` hold the statistics: what was
offered to a requesting organization and what its physicians decided (the decisions themselves
are FHIR ``Task`` resources; this is their index for counting).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, Table, Text

from hub.storage.schema import Str, metadata

rec_reference = Table(
    "rec_reference",
    metadata,
    Column("kind", Str(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("effective_from", BigInteger, nullable=False),  # µs since epoch, UTC
    Column("loaded_at", BigInteger, nullable=False),
    Column("loaded_by", Str(200)),
    Column("source", Text),  # file name or "api"
    Column("rows", Text, nullable=False),  # JSON list in the normal form of hub.recognition.reference.parse
)

rec_offers = Table(
    "rec_offers",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("requester", Str(100)),
    Column("performer", Str(100)),
    Column("item", Str(100)),
    Column("result_ref", Str(200)),
    Column("decision", Str(32), nullable=False),
    Column("reasons", Text),  # space-separated reason codes
    Index("ix_rec_offers_at", "at"),
)

rec_decisions = Table(
    "rec_decisions",
    metadata,
    Column("task_id", Str(64), primary_key=True),
    Column("at", BigInteger, nullable=False),
    Column("requester", Str(100)),
    Column("performer", Str(100)),
    Column("item", Str(100)),
    Column("result_ref", Str(200)),
    Column("order_ref", Str(200)),
    Column("outcome", Str(16), nullable=False),  # accepted | rejected
    Column("reason", Str(100)),
    Column("user_id", Str(200)),
    Index("ix_rec_decisions_at", "at"),
)
