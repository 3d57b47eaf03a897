"""FHIR search index: fewer rows per resource

Parameters whose rows are all rows of other parameters of the same type as well
(``SearchParam.stored_with``: Observation ``combo-code`` holds every ``code`` and
``component-code`` row, Patient ``phonetic`` every ``name`` row) keep only the rows the others
lack; searches read both (hub.fhir.search.query). The rows now read from the other parameters
are deleted. The layout of the tables is unchanged: WITHOUT ROWID tables keyed by resource were
measured and left out: half again as much CPU per inserted row and a larger file, the rows being
too wide for SQLite's index B-trees, whose interior cells hold whole rows.

Revision ID: 0003_fhir_index
Revises: 0002_fhir_perf
"""
from alembic import op
import sqlalchemy as sa

revision = "0003_fhir_index"
down_revision = "0002_fhir_perf"
branch_labels = None
depends_on = None


#: value columns of the index tables that hold covered parameters
COLUMNS = {
    "sp_string": ("value_norm", "value_exact"),
    "sp_token": ("system", "code", "text_norm", "type_system", "type_code"),
    "sp_reference": ("target_type", "target_id", "url", "id_system", "id_value"),
    "sp_quantity": ("value", "system", "code", "unit"),
    "sp_uri": ("uri",),
    "sp_composite": ("c1_system", "c1_code", "c2_system", "c2_code", "c2_number", "c2_low", "c2_high"),
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


def upgrade() -> None:
    bind = op.get_bind()
    same = "IS" if bind.dialect.name == "sqlite" else "IS NOT DISTINCT FROM"
    for table, res_type, param, bases in COVERED:
        match = " AND ".join(f"b.{c} {same} {table}.{c}" for c in COLUMNS[table])
        bind.execute(sa.text(
            f"DELETE FROM {table} WHERE res_type = :t AND param = :p AND EXISTS ("
            f"SELECT 1 FROM {table} b WHERE b.res_type = {table}.res_type AND b.res_id = {table}.res_id "
            f"AND b.param IN :bases AND {match})").bindparams(sa.bindparam("bases", expanding=True)),
            {"t": res_type, "p": param, "bases": list(bases)})


def downgrade() -> None:
    """The covered parameters hold their whole rows again."""
    bind = op.get_bind()
    for table, res_type, param, bases in COVERED:
        names = ", ".join(COLUMNS[table])
        bind.execute(sa.text(
            f"INSERT INTO {table} (res_type, res_id, param, {names}) "
            f"SELECT DISTINCT res_type, res_id, :p, {names} FROM {table} WHERE res_type = :t AND param IN :bases")
            .bindparams(sa.bindparam("bases", expanding=True)),
            {"t": res_type, "p": param, "bases": list(bases)})
