"""recognition: versioned reference data, offers and physicians' decisions

Revision ID: 0002_recognition
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_recognition"
down_revision = "0001"
branch_labels = ("recognition",)
depends_on = None


def _str(n: int):
    return sa.String(length=n).with_variant(sa.String(length=n, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "rec_reference",
        sa.Column("kind", _str(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.BigInteger(), nullable=False),
        sa.Column("loaded_at", sa.BigInteger(), nullable=False),
        sa.Column("loaded_by", _str(200), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("rows", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "version"),
    )
    op.create_table(
        "rec_offers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("requester", _str(100), nullable=True),
        sa.Column("performer", _str(100), nullable=True),
        sa.Column("item", _str(100), nullable=True),
        sa.Column("result_ref", _str(200), nullable=True),
        sa.Column("decision", _str(32), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rec_offers_at", "rec_offers", ["at"])
    op.create_table(
        "rec_decisions",
        sa.Column("task_id", _str(64), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("requester", _str(100), nullable=True),
        sa.Column("performer", _str(100), nullable=True),
        sa.Column("item", _str(100), nullable=True),
        sa.Column("result_ref", _str(200), nullable=True),
        sa.Column("order_ref", _str(200), nullable=True),
        sa.Column("outcome", _str(16), nullable=False),
        sa.Column("reason", _str(100), nullable=True),
        sa.Column("user_id", _str(200), nullable=True),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index("ix_rec_decisions_at", "rec_decisions", ["at"])


def downgrade() -> None:
    op.drop_index("ix_rec_decisions_at", table_name="rec_decisions")
    op.drop_table("rec_decisions")
    op.drop_index("ix_rec_offers_at", table_name="rec_offers")
    op.drop_table("rec_offers")
    op.drop_table("rec_reference")
