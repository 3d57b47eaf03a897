"""Tables of the master patient index (Alembic branch ``mpi``, migration ``0002_mpi``).

The FHIR store keeps the resources (source Patients and golden records); these tables keep what
an EMPI needs beside them: who belongs to which person, why, and since when; the blocking keys
that make candidate lookup an indexed equality search; the review queue; manual decisions;
and what each merge moved, so that it can be undone.

Times are microseconds since 1970 UTC, like the rest of the schema.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, Table, Text

from hub.storage.schema import Str, metadata

ID = Str(64)

#: one row per person (golden record); ``person_id`` is the id of the golden Patient resource
mpi_person = Table(
    "mpi_person", metadata,
    Column("person_id", ID, primary_key=True),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
)

#: each indexed source Patient: its demographic snapshot (the elements matching reads, as FHIR
#: JSON), its state and its current link to a person. ``source`` is ``auto`` or ``manual`` (a
#: manual link is never changed by automatic matching); ``rule`` says which rule or score
#: decided it. ``state`` is ``active``, ``merged`` (replaced by another Patient) or ``deleted``.
mpi_record = Table(
    "mpi_record", metadata,
    Column("patient_id", ID, primary_key=True),
    Column("person_id", ID, nullable=False),
    Column("state", Str(16), nullable=False),
    Column("source", Str(16), nullable=False),
    Column("rule", Str(64), nullable=False),
    Column("score", Float),
    Column("org", Str(255)),
    Column("demo", Text, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Index("ix_mpi_record_person", "person_id"),
)

#: every change of a link, append-only: linked, unlinked, merged, unmerged, review decisions
mpi_link_event = Table(
    "mpi_link_event", metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column("ts", BigInteger, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("person_id", ID),
    Column("action", Str(32), nullable=False),
    Column("source", Str(32), nullable=False),
    Column("actor", Str(100)),
    Column("score", Float),
    Column("detail", Text),
    Index("ix_mpi_link_event_patient", "patient_id", "ts"),
)

#: blocking keys (hub.mpi.blocking) of each indexed source Patient
mpi_block = Table(
    "mpi_block", metadata,
    Column("key", Str(255), primary_key=True),
    Column("patient_id", ID, primary_key=True),
    Index("ix_mpi_block_patient", "patient_id"),
)

#: pairs a person decided are different people (a rejected review, a manual unlink);
#: ``patient_a < patient_b``
mpi_nonmatch = Table(
    "mpi_nonmatch", metadata,
    Column("patient_a", ID, primary_key=True),
    Column("patient_b", ID, primary_key=True),
    Column("actor", Str(100)),
    Column("ts", BigInteger, nullable=False),
)

#: possible matches waiting for a person; ``version`` is the optimistic-concurrency token
mpi_review = Table(
    "mpi_review", metadata,
    Column("review_id", ID, primary_key=True),
    Column("patient_id", ID, nullable=False),
    Column("candidate_id", ID, nullable=False),
    Column("score", Float, nullable=False),
    Column("detail", Text),
    Column("status", Str(16), nullable=False),  # open | accepted | rejected | obsolete
    Column("version", Integer, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("decided", BigInteger),
    Column("decided_by", Str(100)),
    Index("ix_mpi_review_status", "status", "created"),
    Index("ix_mpi_review_patient", "patient_id"),
    Index("ix_mpi_review_candidate", "candidate_id"),
)

#: patient merges (Patient/$merge, HL7 ADT A40); ``undone`` is set by unmerge
mpi_merge = Table(
    "mpi_merge", metadata,
    Column("merge_id", ID, primary_key=True),
    Column("survivor_id", ID, nullable=False),
    Column("merged_id", ID, nullable=False),
    Column("source", Str(32), nullable=False),
    Column("actor", Str(100)),
    Column("ts", BigInteger, nullable=False),
    Column("undone", BigInteger),
    Index("ix_mpi_merge_merged", "merged_id"),
    Index("ix_mpi_merge_survivor", "survivor_id"),
)

#: which reference elements of which resources a merge re-pointed (JSON list of paths)
mpi_merge_move = Table(
    "mpi_merge_move", metadata,
    Column("merge_id", ID, primary_key=True),
    Column("res_type", Str(64), primary_key=True),
    Column("res_id", ID, primary_key=True),
    Column("paths", Text, nullable=False),
)
