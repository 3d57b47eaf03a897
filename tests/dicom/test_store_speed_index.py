"""hub.dicom.index's C-STORE inserts on the driver's cursor and through SQLAlchemy (the path
kept for values SQLAlchemy must process) give the same answers, on both engines."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from hub.dicom import index
from hub.dicom.schema import dicom_instances, dicom_study_pending, dicom_studies
from hub.storage.db import write_tx
from hub.storage.engine import make_engine
from hub.storage.schema import metadata


def _rows(n: int, study: str):
    st = dict(study_uid=study, patient_id="P", issuer="", patient_name="A^B", patient_name_norm="A^B",
              birth_date="", sex="", study_date="20240101", study_time="", accession="", study_id="",
              description="", referring="", referring_norm="", org="hub", charset="", updated=1)
    se = dict(series_uid=study + ".1", study_uid=study, modality="CT", series_number=1, description="",
              body_part="", series_date="", series_time="", updated=1)
    inst = dict(sop_uid=f"{study}.1.{n}", series_uid=study + ".1", study_uid=study, sop_class="1.2",
                instance_number=n, transfer_syntax="1.2.840.10008.1.2.1", frames=1, rows=1, columns=1,
                blob_key="k" * 64, data_hash="h" * 64, size=1, received=1, source_ae="X", meta=None)
    return st, se, inst


@pytest.mark.parametrize("driver", [True, False])
def test_inserts_tell_new_from_known_and_the_mark_keeps_the_latest_time(db_url, monkeypatch, driver):
    if not driver:
        monkeypatch.setattr(index, "_driver_insert", lambda *a: None)
    engine = make_engine(db_url)
    metadata.create_all(engine)
    study = f"1.2.3.{int(driver)}"
    try:
        answers = []
        for n, touched in ((1, 10), (1, 20), (2, 30)):
            st, se, inst = _rows(n, study)
            with write_tx(engine) as conn:
                index.upsert_study_series(conn, st, se)
                answers.append(index.insert_instance(conn, inst))
                index.mark_pending(conn, study, touched)
        assert answers == [True, False, True]
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(dicom_studies)
                                .where(dicom_studies.c.study_uid == study)).scalar() == 1
            assert conn.execute(select(func.count()).select_from(dicom_instances)
                                .where(dicom_instances.c.study_uid == study)).scalar() == 2
            assert conn.execute(select(dicom_study_pending.c.touched)
                                .where(dicom_study_pending.c.study_uid == study)).scalar() == 30
    finally:
        engine.dispose()
