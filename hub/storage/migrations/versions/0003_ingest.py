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
    # between commits bad5032 and 8eaa2ef these columns were created by 0002_ingest itself:
    # such a database already has them
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("ingest_status")}
    missing = [c for c in (sa.Column("claimed_until", sa.BigInteger()), sa.Column("skipped_stale", sa.Text()))
               if c.name not in have]
    if missing:
        with op.batch_alter_table("ingest_status") as batch:
            for column in missing:
                batch.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("ingest_status") as batch:
        batch.drop_column("skipped_stale")
        batch.drop_column("claimed_until")
