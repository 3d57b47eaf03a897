"""FHIR store: an integer key per resource (``res_pk``) for its search-index rows

The index tables found a resource's rows by ``ix_<table>_res`` (res_type, res_id). Ids are
hash-like, so every new resource's rows went to a random leaf of each of those B-trees: about
half the pages an HL7 ORU message wrote. ``resources`` gets ``res_pk`` (unique; new resources
take increasing values, from the sequence ``resources_res_pk_seq`` on PostgreSQL, max + 1 on
SQLite, whose writers take turns), every index row the key of its resource, and the index by
resource is ``ix_<table>_pk`` (res_pk): a new resource's rows are appended.

Existing resources are numbered in table order (SQLite's rowid, PostgreSQL's sequence), and
index rows of no resource, if any, are dropped (none are written so, and no search reaches
them). SQLite cannot add a NOT NULL column without a default: the column is added, filled, and
the table rebuilt with the constraint (Alembic's batch mode).

Revision ID: 0006_fhir_res_pk
Revises: 0004_fhir_history
"""
from alembic import op
import sqlalchemy as sa

revision = "0006_fhir_res_pk"
down_revision = "0004_fhir_history"
branch_labels = None
depends_on = None

INDEX_TABLES = ("sp_string", "sp_token", "sp_reference", "sp_date", "sp_number", "sp_quantity", "sp_uri",
                "sp_composite")
SEQUENCE = "resources_res_pk_seq"


def _partial(column: str) -> dict:
    where = sa.text(f"{column} IS NOT NULL")
    return {"sqlite_where": where, "postgresql_where": where}


#: partial indexes (0004_fhir_write), made again after SQLite's rebuild of their table
PARTIAL = {"sp_reference": (("ix_sp_reference_url", ["param", "url"], "url"),
                            ("ix_sp_reference_identifier", ["param", "id_value"], "id_value"))}


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    op.add_column("resources", sa.Column("res_pk", sa.BigInteger(), nullable=True))
    if sqlite:
        bind.execute(sa.text("UPDATE resources SET res_pk = rowid"))
    else:
        bind.execute(sa.text(f"CREATE SEQUENCE {SEQUENCE}"))
        bind.execute(sa.text(f"UPDATE resources SET res_pk = nextval('{SEQUENCE}')"))
    _not_null(sqlite, "resources")
    op.create_index("ix_resources_pk", "resources", ["res_pk"], unique=True)
    for table in INDEX_TABLES:
        op.drop_index(f"ix_{table}_res", table_name=table)
        op.add_column(table, sa.Column("res_pk", sa.BigInteger(), nullable=True))
        if sqlite:
            bind.execute(sa.text(
                f"UPDATE {table} SET res_pk = (SELECT r.res_pk FROM resources r "
                f"WHERE r.res_type = {table}.res_type AND r.res_id = {table}.res_id)"))
        else:
            bind.execute(sa.text(
                f"UPDATE {table} SET res_pk = r.res_pk FROM resources r "
                f"WHERE r.res_type = {table}.res_type AND r.res_id = {table}.res_id"))
        bind.execute(sa.text(f"DELETE FROM {table} WHERE res_pk IS NULL"))
        _not_null(sqlite, table)
        op.create_index(f"ix_{table}_pk", table, ["res_pk"])
    _analyze(bind)


def _not_null(sqlite: bool, table: str) -> None:
    if not sqlite:
        op.alter_column(table, "res_pk", existing_type=sa.BigInteger(), nullable=False)
        return
    partial = PARTIAL.get(table, ())
    for name, _cols, _col in partial:  # not carried over by the rebuild: made again below
        op.drop_index(name, table_name=table)
    with op.batch_alter_table(table, recreate="always") as batch:
        batch.alter_column("res_pk", existing_type=sa.BigInteger(), nullable=False)
    for name, cols, col in partial:
        op.create_index(name, table, cols, **_partial(col))


def downgrade() -> None:
    """The index tables are looked up by (res_type, res_id) again; ``res_pk`` is dropped."""
    bind = op.get_bind()
    for table in INDEX_TABLES:
        op.drop_index(f"ix_{table}_pk", table_name=table)
        op.drop_column(table, "res_pk")
        op.create_index(f"ix_{table}_res", table, ["res_type", "res_id"])
    op.drop_index("ix_resources_pk", table_name="resources")
    op.drop_column("resources", "res_pk")
    if bind.dialect.name != "sqlite":
        bind.execute(sa.text(f"DROP SEQUENCE {SEQUENCE}"))
    _analyze(bind)


def _analyze(bind) -> None:
    """Statistics for the new indexes at once (a populated store that had been analyzed keeps
    none for them until the checkpointer's next ANALYZE, and plans without them)."""
    if bind.dialect.name == "sqlite":
        if not bind.execute(sa.text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'")).first():
            return
        bind.execute(sa.text("PRAGMA analysis_limit=2000"))
    for table in ("resources", *INDEX_TABLES):
        bind.execute(sa.text(f"ANALYZE {table}"))
