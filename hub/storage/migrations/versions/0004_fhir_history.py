"""FHIR store: the current version of a resource is kept in ``resources`` only

``resource_history`` held every version, the current one too, so that each create wrote its
document twice and took a leaf of both tables' random-keyed (res_type, res_id) primary keys.
It now holds the earlier versions: an update moves the version it replaces there
(hub.fhir.store.FhirStore.write), and vread and history read both tables. ``resources`` gets
the ``method`` of its version (POST, PUT, PATCH, DELETE, as history answers it) and an index on
``last_updated`` for the system-level history.

Revision ID: 0004_fhir_history
Revises: 0004_fhir_write
"""
from alembic import op
import sqlalchemy as sa

revision = "0004_fhir_history"
down_revision = "0004_fhir_write"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("resources", sa.Column("method", sa.String(length=8), nullable=True))
    bind = op.get_bind()
    # every current version has its row in the history (the old layout wrote both together);
    # PUT for one that had none, as an update of an unknown id would have been
    bind.execute(sa.text(
        "UPDATE resources SET method = COALESCE((SELECT h.method FROM resource_history h "
        "WHERE h.res_type = resources.res_type AND h.res_id = resources.res_id "
        "AND h.version = resources.version), 'PUT')"))
    bind.execute(sa.text(
        "DELETE FROM resource_history WHERE EXISTS (SELECT 1 FROM resources r "
        "WHERE r.res_type = resource_history.res_type AND r.res_id = resource_history.res_id "
        "AND r.version = resource_history.version)"))
    op.create_index("ix_resources_updated", "resources", ["last_updated"])


def downgrade() -> None:
    """The history holds the current versions again."""
    bind = op.get_bind()
    bind.execute(sa.text(
        "INSERT INTO resource_history (res_type, res_id, version, last_updated, deleted, method, content) "
        "SELECT res_type, res_id, version, last_updated, deleted, COALESCE(method, 'PUT'), content FROM resources"))
    op.drop_index("ix_resources_updated", table_name="resources")
    op.drop_column("resources", "method")
