"""DICOM metadata index: patients' studies, series and instances (both engines).

One row per study, series and instance holds the attributes the Query/Retrieve information
models (PS3.4 C.6.1.1 Patient Root, C.6.2.1 Study Root) and QIDO-RS (PS3.18 10.6.1.2) match on
or must return; the instance row also keeps the header as DICOM JSON (PS3.18 F.2, without bulk
data) so that WADO-RS metadata and QIDO includefield never reopen the blobs.

Person names are indexed twice: as sent, and upper-cased for case-insensitive matching
(PS3.4 C.2.2.2.1 leaves PN case sensitivity to the SCP; configurable).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, Table, Text

from hub.storage.schema import Str, metadata
from hub.storage.types import JsonDocument

UID = Str(64)

dicom_studies = Table(
    "dicom_studies",
    metadata,
    Column("study_uid", UID, primary_key=True),
    Column("patient_id", Str(64), nullable=False, default=""),
    Column("issuer", Str(64), nullable=False, default=""),
    Column("patient_name", Str(255), nullable=False, default=""),
    Column("patient_name_norm", Str(255), nullable=False, default=""),
    Column("birth_date", Str(8), nullable=False, default=""),
    Column("sex", Str(16), nullable=False, default=""),
    Column("study_date", Str(8), nullable=False, default=""),
    Column("study_time", Str(16), nullable=False, default=""),
    Column("accession", Str(64), nullable=False, default=""),
    Column("study_id", Str(16), nullable=False, default=""),
    Column("description", Str(255), nullable=False, default=""),
    Column("referring", Str(255), nullable=False, default=""),
    Column("referring_norm", Str(255), nullable=False, default=""),
    Column("org", Str(64), nullable=False, default=""),
    Column("charset", Str(64), nullable=False, default=""),
    Column("updated", BigInteger, nullable=False),
    Index("ix_dicom_studies_pid", "patient_id", "issuer"),
    Index("ix_dicom_studies_name", "patient_name_norm"),
    Index("ix_dicom_studies_date", "study_date"),
    Index("ix_dicom_studies_accession", "accession"),
)

dicom_series = Table(
    "dicom_series",
    metadata,
    Column("series_uid", UID, primary_key=True),
    Column("study_uid", UID, nullable=False),
    Column("modality", Str(16), nullable=False, default=""),
    Column("series_number", Integer),
    Column("description", Str(255), nullable=False, default=""),
    Column("body_part", Str(64), nullable=False, default=""),
    Column("series_date", Str(8), nullable=False, default=""),
    Column("series_time", Str(16), nullable=False, default=""),
    Column("updated", BigInteger, nullable=False),
    Index("ix_dicom_series_study", "study_uid"),
)

dicom_instances = Table(
    "dicom_instances",
    metadata,
    Column("sop_uid", UID, primary_key=True),
    Column("series_uid", UID, nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("sop_class", UID, nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax", UID, nullable=False),
    Column("frames", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("blob_key", Str(128), nullable=False),
    Column("data_hash", Str(64), nullable=False),  # SHA-256 of the data set after the file meta
    Column("size", BigInteger, nullable=False),
    Column("received", BigInteger, nullable=False),
    Column("source_ae", Str(16), nullable=False, default=""),
    Column("meta", JsonDocument(), nullable=True),  # DICOM JSON without bulk data; NULL until filled in
    Index("ix_dicom_instances_series", "series_uid", "instance_number"),
    Index("ix_dicom_instances_study", "study_uid"),
)

#: studies whose ImagingStudy does not yet reflect their latest instances: upserted in each new
#: instance's index transaction, deleted once the ImagingStudy is written (if not touched since),
#: swept at start, so an ImagingStudy written after the burst is durable across a crash and
#: eventually exact (hub.dicom.imaging_study)
dicom_study_pending = Table(
    "dicom_study_pending",
    metadata,
    Column("study_uid", UID, primary_key=True),
    Column("touched", BigInteger, nullable=False),  # time (us) of the latest new instance
)

#: objects refused: a different object under a SOP Instance UID already stored ("conflict"), or
#: one that cannot be indexed ("invalid"). The raw object is kept in the blob store, never served.
dicom_conflicts = Table(
    "dicom_conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reason", Str(16), nullable=False),
    Column("sop_uid", UID, nullable=False, default=""),
    Column("blob_key", Str(128), nullable=False),
    Column("data_hash", Str(64), nullable=False),
    Column("source_ae", Str(16), nullable=False, default=""),
    Column("received", BigInteger, nullable=False),
    Index("ix_dicom_conflicts_sop", "sop_uid"),
)

#: peers added at run time (``yilian dicom ae add``), beside those in the settings
dicom_aes = Table(
    "dicom_aes",
    metadata,
    Column("ae_title", Str(16), primary_key=True),
    Column("host", Str(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("org", Str(64)),
    Column("description", Text),
)
