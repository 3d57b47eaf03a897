"""ingest log: claim leases and entries skipped as stale in the status table

Revision ID: 0003_ingest
Revises: 0002_ingest
"""
from alembic import op
import sqlalchemy as sa

revision = "0003_ingest"
down_revision = "0002_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ingest_status") as batch:
        batch.add_column(sa.Column("claimed_until", sa.BigInteger()))
        batch.add_column(sa.Column("skipped_stale", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("ingest_status") as batch:
        batch.drop_column("skipped_stale")
        batch.drop_column("claimed_until")
