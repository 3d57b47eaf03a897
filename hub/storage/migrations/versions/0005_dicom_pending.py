"""DICOM: studies whose ImagingStudy is still to be written (hub.dicom.schema.dicom_study_pending)

Each new instance marks its study in the C-STORE's index transaction; the ImagingStudy written
after the burst clears the mark, and a start writes the ImagingStudy of every study still
marked, so a crash between the responses and that write loses nothing. Studies with instances
whose header has not been filled in yet (``meta IS NULL``: not synchronized since they came) are
marked here, which is what the previous version could have left unwritten.

Revision ID: 0005_dicom_pending
Revises: 0002_dicom
"""
from alembic import op
import sqlalchemy as sa

from hub.storage.schema import Str

revision = "0005_dicom_pending"
down_revision = "0002_dicom"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dicom_study_pending",
        sa.Column("study_uid", Str(64), primary_key=True),
        sa.Column("touched", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO dicom_study_pending (study_uid, touched) "
               "SELECT DISTINCT study_uid, 0 FROM dicom_instances WHERE meta IS NULL")


def downgrade() -> None:
    op.drop_table("dicom_study_pending")
