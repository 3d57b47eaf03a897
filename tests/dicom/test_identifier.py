"""adapters.dicom.identifier (the C-FIND / C-GET / C-MOVE identifier read from its bytes) against
pydicom's decoding (QueryIdentifier.from_dataset, the path it replaced and still falls back to):
the same level, match keys and elements on varied identifiers in both Little Endian syntaxes,
and every case it does not decode left to pydicom (Unhandled), never guessed."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from adapters.dicom import identifier
from hub.dicom.attributes import QueryIdentifier
from tests.dicom.test_dimse import q

SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian]

PLAIN = [
    q("STUDY", StudyInstanceUID="", StudyDate="", StudyTime="", AccessionNumber="", PatientName="", PatientID="",
      StudyDescription="", ModalitiesInStudy="", NumberOfStudyRelatedInstances="", RetrieveAETitle=""),
    q("study", PatientID="PAT00007 ", StudyInstanceUID=""),
    q("STUDY", PatientName="SMI*", StudyDate="20230101-20230131", StudyTime="-120000", ModalitiesInStudy="CT\\MR"),
    q("SERIES", StudyInstanceUID="1.2.3.4", SeriesInstanceUID="", Modality="", SeriesNumber="",
      NumberOfSeriesRelatedInstances=""),
    q("IMAGE", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4\\1.2.3.5", SOPInstanceUID="", Rows=None,
      Columns=None, WindowCenter="", ReferencedImageSequence=Sequence()),
    q("PATIENT", PatientName="Wang^Fang", PatientID="P?00", PatientBirthDate="", IssuerOfPatientID="HOSP_A",
      OtherPatientIDs="A\\B "),
    q("STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="WANG*", PatientID=""),
    q("STUDY", AccessionNumber="  ACC-1  ", StudyDescription="CT  HEAD ", ReferringPhysicianName=""),
]


class _Event:
    """What QueryIdentifier reads of a pynetdicom C-FIND event: the context's transfer syntax,
    the request's encoded identifier, and ``identifier``, pynetdicom's decoding (counted)."""

    def __init__(self, ds: Dataset, syntax):
        self.raw = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        self.syntax = syntax
        self.context = SimpleNamespace(transfer_syntax=syntax)
        self.request = SimpleNamespace(Identifier=BytesIO(self.raw))
        self.decoded = 0

    @property
    def identifier(self) -> Dataset:
        self.decoded += 1
        s = self.syntax
        return decode(BytesIO(self.raw), s.is_implicit_VR, s.is_little_endian, s.is_deflated)


def _both(ds: Dataset, syntax):
    event = _Event(ds, syntax)
    fast = QueryIdentifier.from_request(event)
    slow = QueryIdentifier.from_dataset(event.identifier)
    return fast, slow, event


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
@pytest.mark.parametrize("ds", PLAIN, ids=lambda d: d.QueryRetrieveLevel)
def test_plain_identifiers_are_read_from_their_bytes_as_pydicom_reads_them(ds, syntax):
    fast, slow, event = _both(ds, syntax)
    assert (fast.level, fast.keys, fast.elements) == (slow.level, slow.keys, slow.elements)
    assert event.decoded == 1  # only the reference above: the fast path decoded nothing
    assert fast.dataset == slow.dataset and event.decoded == 2  # decoded when asked for


OTHER = {
    "non-ASCII name": q("STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen"),
    "ISO 2022 escape": q("STUDY", SpecificCharacterSet="\\ISO 2022 IR 87", PatientName="\x1b$B\x1b(B"),
    "name with component groups": q("STUDY", PatientName="Yamada^Tarou=Yamada"),
    "several names": q("STUDY", PatientName="A\\B"),
    "number value": q("SERIES", SeriesNumber="3"),
    "binary value": q("IMAGE", Rows=512),
    "sequence with an item": q("STUDY", ReferencedStudySequence=Sequence([Dataset()])),
    "padded values": q("STUDY", ModalitiesInStudy="CT \\MR"),
    "several levels": q("STUDY\\SERIES", PatientID=""),
}


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
@pytest.mark.parametrize("name", OTHER)
def test_everything_else_is_left_to_pydicom_with_the_same_result(name, syntax):
    ds = OTHER[name]
    raw = encode(ds, syntax.is_implicit_VR, True, False)
    if name != "several levels":
        with pytest.raises(identifier.Unhandled):
            identifier.read(raw, syntax.is_implicit_VR)
    fast, slow, _ = _both(ds, syntax)
    assert (fast.level, fast.keys, fast.elements) == (slow.level, slow.keys, slow.elements)


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian], ids=lambda s: s.name)
def test_other_syntaxes_are_decoded_by_pydicom(syntax):
    fast, slow, event = _both(PLAIN[0], syntax)
    assert (fast.level, fast.keys, fast.elements) == (slow.level, slow.keys, slow.elements)
    assert event.decoded == 2  # the reference and the fallback


def test_private_and_group_length_elements_are_skipped_as_pydicom_gives_them_no_keyword():
    ds = q("STUDY", PatientID="P1")
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "secret")
    for syntax in SYNTAXES:
        fast, slow, _ = _both(ds, syntax)
        assert fast.keys == slow.keys == {"PatientID": "P1"}
        assert fast.elements == slow.elements


def test_truncated_bytes_are_left_to_pydicom():
    raw = encode(PLAIN[1], False, True, False)
    for cut in (3, 7, len(raw) - 1):
        with pytest.raises(identifier.Unhandled):
            identifier.read(raw[:cut], False)
