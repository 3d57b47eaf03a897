"""FHIR search index: fewer rows and B-trees per resource

1. Parameters whose rows are all rows of other parameters of the same type as well
   (``SearchParam.stored_with``: Observation ``combo-code`` holds every ``code`` and
   ``component-code`` row, Patient ``phonetic`` every ``name`` row) keep only the rows the
   others lack; searches read both (hub.fhir.search.query). The rows that are now read from the
   other parameter are deleted.
2. Every index table gets the primary key (res_id, res_type, param, seq), ``seq`` numbering a
   resource's rows; it replaces the index by resource. On SQLite the tables become
   ``WITHOUT ROWID`` (rebuilt, rows copied), so each row lives in two B-trees instead of three.

Revision ID: 0003_fhir_index
Revises: 0002_fhir_perf
"""
from alembic import op
import sqlalchemy as sa

revision = "0003_fhir_index"
down_revision = "0002_fhir_perf"
branch_labels = None
depends_on = None


def _str(n: int) -> sa.String:
    return sa.String(n).with_variant(sa.String(n, collation="C"), "postgresql")


#: value columns of each index table, in order, with the value index's columns after ``param``
TABLES: dict[str, tuple[tuple[tuple[str, sa.types.TypeEngine], ...], tuple[str, ...]]] = {
    "sp_string": ((("value_norm", _str(255)), ("value_exact", _str(255))), ("value_norm",)),
    "sp_token": ((("system", _str(255)), ("code", _str(255)), ("text_norm", _str(255)),
                  ("type_system", _str(255)), ("type_code", _str(255))), ("code", "system")),
    "sp_reference": ((("target_type", _str(64)), ("target_id", _str(64)), ("url", _str(255)),
                      ("id_system", _str(255)), ("id_value", _str(255))), ("target_id", "target_type")),
    "sp_date": ((("low", sa.BigInteger()), ("high", sa.BigInteger())), ("low", "high")),
    "sp_number": ((("value", sa.Float()),), ("value",)),
    "sp_quantity": ((("value", sa.Float()), ("system", _str(255)), ("code", _str(255)), ("unit", _str(255))),
                    ("value",)),
    "sp_uri": ((("uri", _str(255)),), ("uri",)),
    "sp_composite": ((("c1_system", _str(255)), ("c1_code", _str(255)), ("c2_system", _str(255)),
                      ("c2_code", _str(255)), ("c2_number", sa.Float()), ("c2_low", sa.BigInteger()),
                      ("c2_high", sa.BigInteger())), ("c1_code", "c1_system")),
}
#: further indexes, as in hub.storage.schema
EXTRA_INDEXES = {
    "sp_reference": (("ix_sp_reference_target", ("target_type", "target_id", "param")),),
    "sp_string": (("ix_sp_string_exact", ("param", "value_exact")),),
}

#: (table, resource type, parameter, the parameters that hold the rest of its rows), as the R4
#: registry gives them (hub.fhir.search.registry.covering_params) when this revision was made
COVERED = (
    ("sp_token", "CapabilityStatement", "version", ("fhirversion",)),
    ("sp_uri", "CodeSystem", "url", ("system",)),
    ("sp_reference", "Coverage", "patient", ("beneficiary",)),
    ("sp_reference", "EnrollmentRequest", "subject", ("patient",)),
    ("sp_string", "InsurancePlan", "name", ("phonetic",)),
    ("sp_reference", "Linkage", "source", ("item",)),
    ("sp_token", "Observation", "combo-code", ("code", "component-code")),
    ("sp_token", "Observation", "combo-data-absent-reason", ("component-data-absent-reason", "data-absent-reason")),
    ("sp_token", "Observation", "combo-value-concept", ("component-value-concept", "value-concept")),
    ("sp_quantity", "Observation", "combo-value-quantity", ("component-value-quantity", "value-quantity")),
    ("sp_composite", "Observation", "combo-code-value-concept", ("code-value-concept", "component-code-value-concept")),
    ("sp_composite", "Observation", "combo-code-value-quantity", ("code-value-quantity", "component-code-value-quantity")),
    ("sp_string", "Organization", "name", ("phonetic",)),
    ("sp_string", "Patient", "phonetic", ("name",)),
    ("sp_string", "Person", "phonetic", ("name",)),
    ("sp_string", "Practitioner", "phonetic", ("name",)),
    ("sp_string", "RelatedPerson", "phonetic", ("name",)),
    ("sp_reference", "ResearchSubject", "patient", ("individual",)),
)


def _same(dialect: str) -> str:
    return "IS" if dialect == "sqlite" else "IS NOT DISTINCT FROM"


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    for table, res_type, param, bases in COVERED:
        cols = [c for c, _ in TABLES[table][0]]
        same = " AND ".join(f"b.{c} {_same(dialect)} {table}.{c}" for c in cols)
        bind.execute(sa.text(
            f"DELETE FROM {table} WHERE res_type = :t AND param = :p AND EXISTS ("
            f"SELECT 1 FROM {table} b WHERE b.res_type = {table}.res_type AND b.res_id = {table}.res_id "
            f"AND b.param IN :bases AND {same})").bindparams(sa.bindparam("bases", expanding=True)),
            {"t": res_type, "p": param, "bases": list(bases)})
    for table, (cols, value_index) in TABLES.items():
        names = [c for c, _ in cols]
        if dialect == "sqlite":
            new = f"{table}_new"
            op.create_table(
                new,
                sa.Column("res_type", sa.String(64), nullable=False),
                sa.Column("res_id", sa.String(64), nullable=False),
                sa.Column("param", sa.String(100), nullable=False),
                sa.Column("seq", sa.Integer(), nullable=False, autoincrement=False),
                *[sa.Column(c, t) for c, t in cols],
                sa.PrimaryKeyConstraint("res_id", "res_type", "param", "seq"),
                sqlite_with_rowid=False,
            )
            bind.execute(sa.text(
                f"INSERT INTO {new} (res_type, res_id, param, seq, {', '.join(names)}) "
                f"SELECT res_type, res_id, param, "
                f"row_number() OVER (PARTITION BY res_type, res_id ORDER BY rowid) - 1, {', '.join(names)} "
                f"FROM {table}"))
            op.drop_table(table)
            op.rename_table(new, table)
            op.create_index(f"ix_{table}_value", table, ["param", *value_index, "res_type"])
            for name, icols in EXTRA_INDEXES.get(table, ()):
                op.create_index(name, table, list(icols))
        else:
            op.add_column(table, sa.Column("seq", sa.Integer()))
            bind.execute(sa.text(
                f"UPDATE {table} SET seq = n.rn FROM (SELECT ctid AS row_ref, "
                f"row_number() OVER (PARTITION BY res_type, res_id ORDER BY ctid) - 1 AS rn FROM {table}) n "
                f"WHERE {table}.ctid = n.row_ref"))
            op.alter_column(table, "seq", nullable=False)
            op.create_primary_key(f"{table}_pkey", table, ["res_id", "res_type", "param", "seq"])
            op.drop_index(f"ix_{table}_res", table_name=table)


def downgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    for table, (cols, value_index) in TABLES.items():
        names = [c for c, _ in cols]
        if dialect == "sqlite":
            old = f"{table}_old"
            op.create_table(
                old,
                sa.Column("res_type", sa.String(64), nullable=False),
                sa.Column("res_id", sa.String(64), nullable=False),
                sa.Column("param", sa.String(100), nullable=False),
                *[sa.Column(c, t) for c, t in cols],
            )
            bind.execute(sa.text(
                f"INSERT INTO {old} (res_type, res_id, param, {', '.join(names)}) "
                f"SELECT res_type, res_id, param, {', '.join(names)} FROM {table} ORDER BY res_type, res_id, seq"))
            op.drop_table(table)
            op.rename_table(old, table)
            op.create_index(f"ix_{table}_value", table, ["param", *value_index, "res_type"])
            for name, icols in EXTRA_INDEXES.get(table, ()):
                op.create_index(name, table, list(icols))
        else:
            op.drop_constraint(f"{table}_pkey", table, type_="primary")
            op.drop_column(table, "seq")
        op.create_index(f"ix_{table}_res", table, ["res_type", "res_id"])
    # the covered parameters hold their whole rows again
    for table, res_type, param, bases in COVERED:
        names = ", ".join(c for c, _ in TABLES[table][0])
        bind.execute(sa.text(
            f"INSERT INTO {table} (res_type, res_id, param, {names}) "
            f"SELECT DISTINCT res_type, res_id, :p, {names} FROM {table} WHERE res_type = :t AND param IN :bases")
            .bindparams(sa.bindparam("bases", expanding=True)),
            {"t": res_type, "p": param, "bases": list(bases)})
