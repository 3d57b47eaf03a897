"""C-FIND responses encoded from the index rows (hub.dicom.find_encoding): byte for byte what pydicom
writes for find_response's Dataset, over real index rows of every level, both Little Endian
syntaxes, non-ASCII names, RetrieveAETitle, keys the index does not hold; and through dcmtk."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode

from hub.dicom import find_encoding, index
from hub.dicom.attributes import QueryIdentifier, find_response, identifier_keys
from hub.storage.db import read_tx
from tests.dicom import data
from tests.dicom.conftest import SCU, dicom_port, need, run
from tests.dicom.test_dimse import q, store, studies  # noqa: F401 (fixture)

IDENTIFIERS = [
    q("STUDY", StudyInstanceUID="", StudyDate="", StudyTime="", AccessionNumber="", PatientName="", PatientID="",
      StudyDescription="", ModalitiesInStudy="", NumberOfStudyRelatedInstances="", NumberOfStudyRelatedSeries="",
      ReferringPhysicianName="", RetrieveAETitle="", InstitutionName="", PatientSex=""),
    q("STUDY", PatientID="P100", StudyInstanceUID="", SeriesInstanceUID=""),
    q("SERIES", StudyInstanceUID="", SeriesInstanceUID="", Modality="", SeriesNumber="", SeriesDescription="",
      NumberOfSeriesRelatedInstances="", BodyPartExamined="", PatientName=""),
    q("IMAGE", StudyInstanceUID="", SeriesInstanceUID="", SOPInstanceUID="", SOPClassUID="", InstanceNumber="",
      Rows=None, Columns=None, NumberOfFrames=""),
    q("PATIENT", PatientName="", PatientID="", PatientBirthDate="", PatientSex="", NumberOfPatientRelatedStudies="",
      NumberOfPatientRelatedInstances=""),
]


@pytest.fixture(scope="module")
def non_ascii(pacs):
    ds = data.instance(study_uid=generate_uid(), series_uid=generate_uid(), patient_id="P300", name="Müller^Jürgen",
                       charset="ISO_IR 192")
    assert store(pacs, [ds]) == [0]
    return ds


@pytest.mark.parametrize("ident", IDENTIFIERS, ids=lambda i: i.QueryRetrieveLevel)
def test_responses_are_the_bytes_pydicom_writes(pacs, studies, non_ascii, ident):  # noqa: F811
    level = ident.QueryRetrieveLevel
    with read_tx(pacs.hub.dicom.server.engine) as conn:
        rows = index.query(conn, level, identifier_keys(ident))
    assert len(rows) >= 2
    plan = find_encoding.ResponsePlan(QueryIdentifier.from_dataset(ident), level, "YILIAN")
    for row in rows:
        response = plan.response(row)
        assert isinstance(response, find_encoding.EncodedIdentifier)
        reference = find_response(ident, row, level, "YILIAN")
        for implicit in (True, False):
            assert find_encoding._encode(response, implicit, True) == encode(reference, implicit, True)
    if level in ("STUDY", "PATIENT") and not ident.PatientID:
        assert any("Müller" in str(r.get("PatientName")) for r in rows)


def test_image_keys_from_the_stored_header_keep_the_dataset_path(pacs, studies):  # noqa: F811
    ident = q("IMAGE", StudyInstanceUID=studies["ct"][0].StudyInstanceUID, SOPInstanceUID="", WindowCenter="")
    pacs.hub.dicom.store.fill_metadata(studies["ct"][0].StudyInstanceUID)
    with read_tx(pacs.hub.dicom.server.engine) as conn:
        rows = index.query(conn, "IMAGE", identifier_keys(ident))
    plan = find_encoding.ResponsePlan(QueryIdentifier.from_dataset(ident), "IMAGE", "YILIAN")
    responses = [plan.response(r) for r in rows]
    assert responses and not any(isinstance(r, find_encoding.EncodedIdentifier) for r in responses)
    assert [float(r.WindowCenter) for r in responses] == [40] * len(rows)


def test_findscu_reads_the_encoded_responses(pacs, studies, non_ascii):  # noqa: F811
    r = run(need("findscu"), "-aet", SCU, "-aec", "YILIAN", "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", "PatientID=P300", "-k", "PatientName", "-k", "ModalitiesInStudy", "-k",
            "NumberOfStudyRelatedInstances", "127.0.0.1", dicom_port(pacs))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Pending") == 1
    assert "ISO_IR 192" in r.stderr and "(0020,1208) IS [1 ]" in r.stderr and "(0008,0061) CS [CT]" in r.stderr


def test_multi_valued_non_ascii_values_are_encoded_whatever_sequence_holds_them(pacs, non_ascii):
    ident = q("STUDY", PatientID="P300", PatientName="", StudyInstanceUID="", ModalitiesInStudy="")
    with read_tx(pacs.hub.dicom.server.engine) as conn:
        [row] = index.query(conn, "STUDY", identifier_keys(ident))
    plan = find_encoding.ResponsePlan(QueryIdentifier.from_dataset(ident), "STUDY", "YILIAN")
    as_tuples = {**row, "PatientName": (str(row["PatientName"]), "Schäfer^Anna")}
    as_lists = {**row, "PatientName": [str(row["PatientName"]), "Schäfer^Anna"]}
    for implicit in (True, False):
        assert plan.encode(as_tuples, implicit) == plan.encode(as_lists, implicit)
        assert "Schäfer".encode() in plan.encode(as_tuples, implicit)
