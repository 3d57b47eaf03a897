"""DICOM index: studies, series, instances, conflicting objects, peer AEs (hub.dicom.schema).

Revision ID: 0002_dicom
Revises: 0001
"""
from alembic import op

from hub.dicom.schema import dicom_aes, dicom_conflicts, dicom_instances, dicom_series, dicom_studies

revision = "0002_dicom"
down_revision = "0001"
branch_labels = ("dicom",)
depends_on = None

_TABLES = (dicom_studies, dicom_series, dicom_instances, dicom_conflicts, dicom_aes)


def upgrade() -> None:
    bind = op.get_bind()
    for table in _TABLES:
        # create the table and its indexes from the Core definition (one source of truth)
        table.create(bind, checkfirst=False)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(_TABLES):
        table.drop(bind)
