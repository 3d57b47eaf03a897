"""FHIR server performance: the compact audit journal (hub.audit.audit_journal)

One narrow row per recorded access; rows become AuditEvent resources later (hub.audit.materialize).
Only adds a table, so existing data is untouched.

Revision ID: 0002_fhir_perf
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_fhir_perf"
down_revision = "0001"
branch_labels = ("fhir_perf",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_journal",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("recorded", sa.BigInteger(), nullable=False),
        sa.Column("interaction", sa.String(32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("who", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text()),
        sa.Column("organization", sa.Text()),
        sa.Column("address", sa.Text()),
        sa.Column("patients", sa.Text(), nullable=False),
        sa.Column("resources", sa.Text(), nullable=False),
        sa.Column("query", sa.Text()),
        sa.Column("observer", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_journal")
