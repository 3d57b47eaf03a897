"""adapters.dicom.header (the C-STORE path's reader of the indexed attributes) against pydicom's
reading (store._DatasetHeader, the path it replaced and still falls back to): the same values on
varied headers, and every case it does not decode left to pydicom (Unhandled), never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from adapters.dicom import header
from hub.dicom import store

from tests.dicom import data

_INTS = {"SeriesNumber", "InstanceNumber", "NumberOfFrames", "Rows", "Columns"}


def _write(ds: Dataset, path: Path, ts: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


def _both(path: Path):
    return header.read(path.read_bytes()), store._DatasetHeader(path)


def _assert_same(path: Path) -> None:
    fast, slow = _both(path)
    assert (fast.transfer_syntax, fast.meta_end) == (slow.transfer_syntax, slow.meta_end)
    for kw in store._INDEXED:
        assert fast.has(kw) == slow.has(kw), kw
        if kw in _INTS:
            assert fast.int(kw) == slow.int(kw), kw
        else:
            assert fast.text(kw) == slow.text(kw), kw
            assert fast.text(kw, 3) == slow.text(kw, 3), kw


def _ds(**kw) -> Dataset:
    return data.instance(study_uid=generate_uid(), series_uid=generate_uid(), **kw)


def test_the_tag_table_is_the_indexed_keywords_of_pydicoms_dictionary():
    assert [kw for kw, _ in header.INDEXED_TAGS.values()] == store._INDEXED
    for tag, (kw, vr) in header.INDEXED_TAGS.items():
        assert tag_for_keyword(kw) == tag and dictionary_VR(tag) == vr


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_plain_headers_read_as_pydicom_reads_them(tmp_path, ts):
    ds = _ds(issuer="HOSP_A", accession="ACC 1", description="CHEST  ", charset="ISO_IR 100")
    ds.PatientName = "WANG^WU^^DR^  "  # trailing spaces dropped, inner carets kept
    ds.PatientID = " 00123"  # a leading space is part of an LO value
    ds.StudyDescription = "A\\B \\C"  # multi-valued text
    ds.NumberOfFrames = "3"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDate, ds.SeriesTime = "20240315", "101600.123"
    ds.SpecificCharacterSet = ["ISO_IR 100", "ISO_IR 6"]
    _assert_same(_write(ds, tmp_path / "a.dcm", ts))
    fast = header.read((tmp_path / "a.dcm").read_bytes())
    assert fast.text("PatientName") == "WANG^WU^^DR^" and fast.int("NumberOfFrames") == 3


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_sequences_of_undefined_length_are_skipped_not_read(tmp_path, ts):
    ds = _ds()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "X1", "99TEST"
    # a StudyInstanceUID inside an item must not be taken for the object's own
    inner.StudyInstanceUID = "1.2.3.4"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, generate_uid()
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.ProcedureCodeSequence = Sequence([inner])
    for el in (ds["ReferencedImageSequence"], ds["ProcedureCodeSequence"], item["PurposeOfReferenceCodeSequence"]):
        el.is_undefined_length = True
        for it in el.value:
            it.is_undefined_length_sequence_item = True
    _assert_same(_write(ds, tmp_path / "s.dcm", ts))
    assert header.read((tmp_path / "s.dcm").read_bytes()).text("StudyInstanceUID") == ds.StudyInstanceUID


def test_encapsulated_pixel_data_and_missing_attributes(tmp_path):
    ds = _ds(ts=RLELossless)
    del ds.SeriesNumber, ds.StudyTime
    ds.InstanceNumber = None  # present, empty
    _assert_same(_write(ds, tmp_path / "r.dcm", RLELossless))
    fast = header.read((tmp_path / "r.dcm").read_bytes())
    assert not fast.has("SeriesNumber") and fast.has("InstanceNumber") and fast.int("InstanceNumber") is None


def test_empty_rows_still_count_as_present(tmp_path):
    ds = _ds()
    ds.Rows = None
    _assert_same(_write(ds, tmp_path / "e.dcm"))


@pytest.mark.parametrize("case", ["latin1", "utf8", "iso2022", "pn_groups", "unknown_vr"])
def test_what_it_does_not_decode_is_left_to_pydicom(tmp_path, case):
    ds = _ds()
    if case == "latin1":
        ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 100", "MÜLLER^JÖRG"
    elif case == "utf8":
        ds.SpecificCharacterSet, ds.StudyDescription = "ISO_IR 192", "胸部 CT"
    elif case == "iso2022":
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    elif case == "pn_groups":
        ds.add_new(0x00100010, "PN", b"YAMADA^TAROU==")  # as sent: pydicom's PersonName drops the "="
    path = _write(ds, tmp_path / f"{case}.dcm")
    raw = path.read_bytes()
    if case == "unknown_vr":
        i = raw.index(b"PN", 132)  # the first PN element's VR, made unknown
        raw = raw[:i] + b"ZZ" + raw[i + 2:]
    with pytest.raises(header.Unhandled):
        header.read(raw)
    if case != "unknown_vr":
        slow = store._DatasetHeader(path)
        assert slow.text("SOPInstanceUID") == ds.SOPInstanceUID
        if case == "pn_groups":
            assert slow.text("PatientName") == "YAMADA^TAROU"


@pytest.mark.parametrize("ts", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_syntaxes_are_left_to_pydicom(tmp_path, ts):
    path = _write(_ds(), tmp_path / "o.dcm", ts)
    with pytest.raises(header.Unhandled):
        header.read(path.read_bytes())
    assert store._DatasetHeader(path).text("Modality") == "CT"


def test_truncated_or_not_part10_is_unhandled(tmp_path):
    raw = _write(_ds(), tmp_path / "t.dcm").read_bytes()
    for cut in (100, 140, 300, 600):
        with pytest.raises(header.Unhandled):
            header.read(raw[:cut])
    with pytest.raises(header.Unhandled):
        header.read(raw[128:])  # no preamble: the store adds it, then reads again
    with pytest.raises(header.Unhandled):
        header.read(b"not dicom at all" * 20)


def test_a_header_longer_than_the_chunk_is_left_to_pydicom(tmp_path):
    ds = _ds()
    ds.add_new(0x00091010, "LO", "x")  # private, before the indexed group 0010
    ds.add_new(0x00091011, "OB", b"\x00" * 4096)
    raw = _write(ds, tmp_path / "l.dcm").read_bytes()
    cut = raw.index(b"\x09\x00\x11\x10") + 100  # inside the long value, before PatientName
    with pytest.raises(header.Unhandled):
        header.read(raw[:cut])
    _assert_same(tmp_path / "l.dcm")


def test_the_store_indexes_what_pydicom_read(tmp_path):
    """Both readers through DicomStore: the same rows for the same object."""
    from sqlalchemy import select

    from hub.dicom.blobs import LocalBlobStore
    from hub.dicom.schema import dicom_instances, dicom_series, dicom_studies
    from hub.storage.engine import make_engine
    from hub.storage.schema import metadata

    ds = _ds(issuer="HOSP_A", accession="A1")
    ds.NumberOfFrames = 2
    src = _write(ds, tmp_path / "x.dcm")
    rows = []
    for fast in (True, False):
        engine = make_engine(f"sqlite:///{tmp_path}/db{fast}.sqlite")
        metadata.create_all(engine)
        s = store.DicomStore(engine, LocalBlobStore(tmp_path / f"blobs{fast}"), org_of=lambda i, ae: i or "hub")
        p = tmp_path / f"in{fast}.dcm"
        p.write_bytes(src.read_bytes())
        if not fast:
            real, store.header.read = store.header.read, lambda head: (_ for _ in ()).throw(header.Unhandled())
        try:
            assert s.ingest_path(p).status == 0
        finally:
            if not fast:
                store.header.read = real
        with engine.connect() as conn:
            got = [dict(conn.execute(select(t)).one()._mapping) for t in (dicom_studies, dicom_series, dicom_instances)]
        for r in got:
            for k in ("updated", "received"):
                r.pop(k, None)
        rows.append(got)
        engine.dispose()
    assert rows[0] == rows[1]
    assert rows[0][2]["frames"] == 2 and rows[0][0]["issuer"] == "HOSP_A"
