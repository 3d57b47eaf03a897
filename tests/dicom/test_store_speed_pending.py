"""The ImagingStudy written after a burst, not in each C-STORE, is still durable: each new
instance marks its study (dicom_study_pending) in its index transaction, the sync clears the mark
only if no instance touched it since it was read, and a start writes every study still marked.
Both engines; a hub stopped before its sync stands for a crash between response and sync."""

from __future__ import annotations

import io

from pydicom.uid import generate_uid
from sqlalchemy import select, update

from hub.dicom.schema import dicom_study_pending
from mappings.identity import imaging_study_id
from tests.conftest import RunningHub, make_settings
from tests.dicom import data
from tests.dicom.conftest import poll


def _part10(**kw) -> bytes:
    buf = io.BytesIO()
    data.instance(**kw).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _marks(hub) -> dict:
    with hub.engine.connect() as conn:
        return dict(conn.execute(select(dicom_study_pending.c.study_uid, dicom_study_pending.c.touched)).all())


def _imaging_study(running, uid: str, n: int):
    with running.client() as fhir:
        def get():
            r = fhir.get(f"/ImagingStudy/{imaging_study_id(uid)}")
            return r.json() if r.status_code == 200 and r.json().get("numberOfInstances") == n else None
        return poll(get)


def test_a_study_indexed_but_not_synchronized_is_written_at_the_next_start(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path / "data")
    uid, series = generate_uid(), generate_uid()
    with RunningHub(settings) as first:
        dicom = first.hub.dicom
        dicom.store.on_stored = None  # the notification is lost, as in a crash before the sync
        parts = [_part10(study_uid=uid, series_uid=series, number=i) for i in (1, 2)]
        for part in parts:
            assert dicom.store.ingest_bytes(part).status == 0
        touched = _marks(first.hub).get(uid)
        assert touched is not None
        # a re-sent instance changes nothing, its study's mark included
        assert dicom.store.ingest_bytes(parts[0]).status == 0
        assert _marks(first.hub)[uid] == touched
        with first.client() as fhir:
            assert fhir.get(f"/ImagingStudy/{imaging_study_id(uid)}").status_code == 404
    with RunningHub(make_settings(db_url, tmp_path / "data")) as second:
        study = _imaging_study(second, uid, 2)
        assert study is not None, "the study left pending was not written at start"
        assert poll(lambda: uid not in _marks(second.hub)), "the mark stays after the write"


def test_an_instance_arriving_during_the_sync_keeps_the_mark(db_url, tmp_path):
    with RunningHub(make_settings(db_url, tmp_path / "data")) as running:
        dicom = running.hub.dicom
        dicom.store.on_stored = None  # this test drives the sync itself
        uid, series = generate_uid(), generate_uid()
        assert dicom.store.ingest_bytes(_part10(study_uid=uid, series_uid=series)).status == 0
        build = dicom.imaging.build

        def build_while_an_instance_lands(conn, study_uid):
            with running.hub.engine.begin() as w:  # what a C-STORE committed meanwhile does to the mark
                w.execute(update(dicom_study_pending).where(dicom_study_pending.c.study_uid == study_uid)
                          .values(touched=dicom_study_pending.c.touched + 1))
            return build(conn, study_uid)

        dicom.imaging.build = build_while_an_instance_lands
        try:
            dicom.imaging.sync(uid)
        finally:
            dicom.imaging.build = build
        assert uid in _marks(running.hub)  # written, but not known to include the later instance
        dicom.imaging.sync(uid)
        assert uid not in _marks(running.hub)
        assert _imaging_study(running, uid, 1) is not None
