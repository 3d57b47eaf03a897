"""master patient index tables (hub.mpi.tables)

Revision ID: 0002_mpi
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

from hub.storage.schema import Str

revision = "0002_mpi"
down_revision = "0001"
branch_labels = ("mpi",)
depends_on = None


def _id():
    return Str(64)


def upgrade() -> None:
    op.create_table(
        "mpi_person",
        sa.Column("person_id", _id(), primary_key=True),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "mpi_record",
        sa.Column("patient_id", _id(), primary_key=True),
        sa.Column("person_id", _id(), nullable=False),
        sa.Column("state", Str(16), nullable=False),
        sa.Column("source", Str(16), nullable=False),
        sa.Column("rule", Str(64), nullable=False),
        sa.Column("score", sa.Float()),
        sa.Column("org", Str(255)),
        sa.Column("demo", sa.Text(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_mpi_record_person", "mpi_record", ["person_id"])
    op.create_table(
        "mpi_link_event",
        sa.Column("event_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("patient_id", _id(), nullable=False),
        sa.Column("person_id", _id()),
        sa.Column("action", Str(32), nullable=False),
        sa.Column("source", Str(32), nullable=False),
        sa.Column("actor", Str(100)),
        sa.Column("score", sa.Float()),
        sa.Column("detail", sa.Text()),
    )
    op.create_index("ix_mpi_link_event_patient", "mpi_link_event", ["patient_id", "ts"])
    op.create_table(
        "mpi_block",
        sa.Column("key", Str(255), primary_key=True),
        sa.Column("patient_id", _id(), primary_key=True),
    )
    op.create_index("ix_mpi_block_patient", "mpi_block", ["patient_id"])
    op.create_table(
        "mpi_nonmatch",
        sa.Column("patient_a", _id(), primary_key=True),
        sa.Column("patient_b", _id(), primary_key=True),
        sa.Column("actor", Str(100)),
        sa.Column("ts", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "mpi_review",
        sa.Column("review_id", _id(), primary_key=True),
        sa.Column("patient_id", _id(), nullable=False),
        sa.Column("candidate_id", _id(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("status", Str(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("decided", sa.BigInteger()),
        sa.Column("decided_by", Str(100)),
    )
    op.create_index("ix_mpi_review_status", "mpi_review", ["status", "created"])
    op.create_index("ix_mpi_review_patient", "mpi_review", ["patient_id"])
    op.create_index("ix_mpi_review_candidate", "mpi_review", ["candidate_id"])
    op.create_table(
        "mpi_merge",
        sa.Column("merge_id", _id(), primary_key=True),
        sa.Column("survivor_id", _id(), nullable=False),
        sa.Column("merged_id", _id(), nullable=False),
        sa.Column("source", Str(32), nullable=False),
        sa.Column("actor", Str(100)),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("undone", sa.BigInteger()),
    )
    op.create_index("ix_mpi_merge_merged", "mpi_merge", ["merged_id"])
    op.create_index("ix_mpi_merge_survivor", "mpi_merge", ["survivor_id"])
    op.create_table(
        "mpi_merge_move",
        sa.Column("merge_id", _id(), primary_key=True),
        sa.Column("res_type", Str(64), primary_key=True),
        sa.Column("res_id", _id(), primary_key=True),
        sa.Column("paths", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for t in ("mpi_merge_move", "mpi_merge", "mpi_review", "mpi_nonmatch", "mpi_block",
              "mpi_link_event", "mpi_record", "mpi_person"):
        op.drop_table(t)
