"""FHIR search index: fewer B-trees written per index row

Every index row of a write lands in a different leaf page of each B-tree of its table (the
resource and target ids are random), and every such page is written to the WAL at commit and
copied again by the checkpoint. Two indexes are dropped:

- ``ix_sp_reference_target`` (target_type, target_id, param): ``ix_sp_reference_value`` now
  starts with the target (target_id, param, target_type, res_type) and so serves the searches
  by param and target as before, and also the lookups by target alone (_revinclude, _has,
  $everything, the master patient index's merge). References without a target id (canonical
  URLs, ``:identifier``) get partial indexes that hold only the rows that have one.
- ``ix_sp_string_exact`` (param, value_exact): ``:exact`` searches bind value_norm too and use
  ``ix_sp_string_value``.

Revision ID: 0004_fhir_write
Revises: 0003_fhir_index
"""
from alembic import op
import sqlalchemy as sa

revision = "0004_fhir_write"
down_revision = "0003_fhir_index"
branch_labels = None
depends_on = None


def _partial(column: str) -> dict:
    where = sa.text(f"{column} IS NOT NULL")
    return {"sqlite_where": where, "postgresql_where": where}


def upgrade() -> None:
    op.drop_index("ix_sp_reference_target", table_name="sp_reference")
    op.drop_index("ix_sp_reference_value", table_name="sp_reference")
    op.create_index("ix_sp_reference_value", "sp_reference", ["target_id", "param", "target_type", "res_type"])
    op.create_index("ix_sp_reference_url", "sp_reference", ["param", "url"], **_partial("url"))
    op.create_index("ix_sp_reference_identifier", "sp_reference", ["param", "id_value"], **_partial("id_value"))
    op.drop_index("ix_sp_string_exact", table_name="sp_string")
    _analyze()


def downgrade() -> None:
    op.create_index("ix_sp_string_exact", "sp_string", ["param", "value_exact"])
    op.drop_index("ix_sp_reference_identifier", table_name="sp_reference")
    op.drop_index("ix_sp_reference_url", table_name="sp_reference")
    op.drop_index("ix_sp_reference_value", table_name="sp_reference")
    op.create_index("ix_sp_reference_value", "sp_reference", ["param", "target_id", "target_type", "res_type"])
    op.create_index("ix_sp_reference_target", "sp_reference", ["target_type", "target_id", "param"])
    _analyze()


def _analyze() -> None:
    """Statistics for the new indexes at once (a populated SQLite store that had been analyzed
    keeps none for them until the checkpointer's next ANALYZE, and plans without them)."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        if bind.execute(sa.text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'")).first():
            bind.execute(sa.text("PRAGMA analysis_limit=2000"))
            bind.execute(sa.text("ANALYZE sp_reference"))
            bind.execute(sa.text("ANALYZE sp_string"))
    else:
        bind.execute(sa.text("ANALYZE sp_reference"))
        bind.execute(sa.text("ANALYZE sp_string"))
