"""ingest log: raw messages, processing status, front-end processor heartbeats

Revision ID: 0002_ingest
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_ingest"
down_revision = "0001"
branch_labels = ("ingest",)
depends_on = None


def _str(n: int):
    return sa.String(n).with_variant(sa.String(n, collation="C"), "postgresql")


def _row_id():
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ingest_messages",
        sa.Column("id", _row_id(), primary_key=True, autoincrement=True),
        sa.Column("organization", _str(100), nullable=False),
        sa.Column("item_id", _str(200), nullable=False),
        sa.Column("kind", _str(16), nullable=False),
        sa.Column("feed", _str(100)),
        sa.Column("received_at", sa.BigInteger()),
        sa.Column("stored_at", sa.BigInteger(), nullable=False),
        sa.Column("client_id", _str(100)),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", _str(64), nullable=False),
        sa.Column("charset_hint", _str(40)),
        sa.Column("filename", sa.Text()),
        sa.Column("sending_app", _str(255)),
        sa.Column("sending_facility", _str(255)),
        sa.Column("control_id", _str(200)),
        sa.Column("message_type", _str(20)),
        sa.Column("version", _str(20)),
        sa.Column("charset", _str(40)),
        sa.Column("duplicate_of", sa.BigInteger()),
        sa.UniqueConstraint("organization", "item_id", name="uq_ingest_messages_item"),
    )
    op.create_index("ix_ingest_messages_content", "ingest_messages", ["organization", "control_id", "sha256"])
    op.create_index("ix_ingest_messages_stored", "ingest_messages", ["stored_at"])
    # one first message per content: a concurrent second copy fails here and is retried as a duplicate
    op.create_index("uq_ingest_messages_first", "ingest_messages", ["organization", "control_id", "sha256"],
                    unique=True, sqlite_where=sa.text("duplicate_of IS NULL AND control_id IS NOT NULL"),
                    postgresql_where=sa.text("duplicate_of IS NULL AND control_id IS NOT NULL"))
    op.create_table(
        "ingest_status",
        sa.Column("message_id", _row_id(), primary_key=True, autoincrement=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("processed_by", _str(100)),
        sa.Column("ack_code", _str(2)),
        sa.Column("ack", sa.LargeBinary()),
        sa.Column("permanent", sa.Boolean(), nullable=False),
        sa.Column("error_code", sa.Integer()),
        sa.Column("error_text", sa.Text()),
        sa.Column("error_segment", _str(10)),
        sa.Column("error_field", _str(200)),
        sa.Column("resources", sa.Text()),
    )
    op.create_index("ix_ingest_status_queue", "ingest_status", ["status", "next_attempt_at", "message_id"])
    op.create_table(
        "ingest_heartbeats",
        sa.Column("id", _row_id(), primary_key=True, autoincrement=True),
        sa.Column("organization", _str(100), nullable=False),
        sa.Column("node", _str(200), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )
    op.create_index("ix_ingest_heartbeats_node", "ingest_heartbeats", ["organization", "node", "id"])


def downgrade() -> None:
    op.drop_table("ingest_heartbeats")
    op.drop_table("ingest_status")
    op.drop_table("ingest_messages")
