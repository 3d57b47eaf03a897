"""adapters.dicom.dicom_json (the DICOM JSON of stored headers, encoded from the raw elements)
against pydicom's Dataset.to_json_dict, the encoding it replaced and falls back to: the same
bytes on varied headers (CT, MR, sequences, person names with component groups, GB18030 and
ISO 2022 character sets, multi-valued and empty values, private tags, bulk data, both VR
encodings, odd number strings) and on pydicom's own test files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from adapters.dicom.dicom_json import header_json
from hub.dicom import store

from tests.dicom import data


def _read(path):
    return dcmread(path, stop_before_pixels=True, defer_size=store._BULK_THRESHOLD * 64)


def _assert_same(path) -> None:
    try:
        expected = orjson.dumps(_read(path).to_json_dict(store._BULK_THRESHOLD, store._bulk_uri))
    except Exception:  # a value pydicom cannot convert: fill_metadata stores {} either way
        with pytest.raises(Exception):
            header_json(_read(path), store._BULK_THRESHOLD, store._bulk_uri)
        return
    assert orjson.dumps(header_json(_read(path), store._BULK_THRESHOLD, store._bulk_uri)) == expected


def _with_everything(ds: Dataset) -> Dataset:
    ds.ImagePositionPatient, ds.ImageOrientationPatient = ["-125.0", "-125", "0.5"], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.LargestImagePixelValue = ["0.48828125", "0.48828125"], 4095
    ds.add_new(0x00181150, "IS", "12")  # ExposureTime
    ds.add_new(0x00189306, "FD", 1.5)
    ds.add_new(0x00189307, "FD", [0.1, 2.0])
    ds.add_new(0x0018602C, "FD", [])
    ds.add_new(0x00280106, "US", 0)
    ds.add_new(0x00186020, "SL", [-1, 2])
    ds.add_new(0x00189305, "FL", 0.3)
    ds.add_new(0x00201206, "IS", "")
    ds.add_new(0x00080008, "CS", ["ORIGINAL", "PRIMARY", "AXIAL"])
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091000, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "UN", b"\x01\x02\x03\x04")
    ds.add_new(0x00291010, "OB", b"\x00" * 3000)  # bulk data
    ds.add_new(0x00291011, "OB", b"\x01\x02")  # inline binary
    ds.add_new(0x00282000, "OB", b"")
    ds.add_new(0x00080016, "UI", ds.SOPClassUID)
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, generate_uid()
    item.add_new(0x00081160, "IS", "1\\2")
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D0050", "SRT", "Tissue"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.add_new(0x00081140 + 2, "SQ", Sequence([]))
    return ds


#: character set → (Python codec, a patient name in it)
_CHARSETS = {None: ("ascii", "WANG^XIAOMING"), "ISO_IR 192": ("utf-8", "王^小明=王^小明=wang^xiaoming"),
             "GB18030": ("gb18030", "王^小明=王^小明=wang^xiaoming"), "ISO_IR 100": ("latin-1", "Müller^Jürgen"),
             "ISO 2022 IR 87": ("iso2022_jp", "YAMADA^TAROU=山田^太郎=やまだ^たろう")}


def _raw(ds: Dataset, tag: int, vr: str, text: str, codec: str) -> None:
    """An element of exactly these bytes (pydicom writes a RawDataElement as it is)."""
    from pydicom.dataelem import RawDataElement

    value = text.encode(codec)
    if len(value) % 2:
        value += b" "
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_same_json_as_pydicom_on_varied_headers(tmp_path: Path, ts, modality) -> None:
    texts = ["", " ", "A", "A ", " A", "A\\B", "A\\\\B", "A\\", "\\", "A\x00", "1.2.840\x00", "A \\ B "]
    numbers = ["", "1", " 12 ", "+3", "-4\\5", "1.5", "-1.25e3", ".5", "1.", "7\\", "1\\\\2", " 0.0 "]
    names = ["", "A^B", "A^B=C^D", "A^B==E^F", "A^B\\X^Y", "A^B="]
    failed_in_pydicom = 0
    for case in range(24):
        charset = list(_CHARSETS)[case % len(_CHARSETS)]
        codec, name = _CHARSETS[charset]
        ds = _with_everything(data.instance(study_uid="1.2.3", series_uid="1.2.3.4", number=case, modality=modality))
        if charset:
            ds.SpecificCharacterSet = charset
        t, n = texts[case % len(texts)], numbers[case % len(numbers)]
        for tag, vr in ((0x00081030, "LO"), (0x0008103E, "LO"), (0x00080080, "LO"), (0x00080050, "SH"),
                        (0x00204000, "LT"), (0x00081010, "SH"), (0x00181030, "LO"), (0x00080081, "ST")):
            _raw(ds, tag, vr, t if case % 2 else name.split("=")[-1] + t, codec)
        for tag, vr in ((0x00080008, "CS"), (0x00080020, "DA"), (0x00080033, "TM"), (0x00200052, "UI"),
                        (0x00200020, "CS"), (0x0008103F, "UR"), (0x00080054, "AE"), (0x0008002A, "DT")):
            _raw(ds, tag, vr, t, "ascii")
        for tag, vr in ((0x00180050, "DS"), (0x00201041, "DS"), (0x00200012, "IS"), (0x00181150, "IS")):
            _raw(ds, tag, vr, n, "ascii")
        _raw(ds, 0x00100010, "PN", name, codec)
        _raw(ds, 0x00081060, "PN", names[case % len(names)], "ascii")
        ds.file_meta.TransferSyntaxUID = ts
        path = tmp_path / f"{case}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)  # pydicom converts the values to write them
        except Exception:
            failed_in_pydicom += 1  # e.g. its PN decoding of an empty component group under ISO 2022
            continue
        _assert_same(path)
    assert failed_in_pydicom <= 4


@pytest.mark.parametrize("path", get_testdata_files("*.dcm"), ids=lambda p: Path(p).name)
def test_same_json_as_pydicom_on_pydicoms_test_files(path) -> None:
    try:
        _read(path).to_json_dict(store._BULK_THRESHOLD, store._bulk_uri)
    except Exception:
        pytest.skip("pydicom cannot express this header as JSON (fill_metadata stores {})")
    _assert_same(path)
