"""The indexed attributes of a Part 10 object, read straight from the bytes of its header.

pydicom's reading of the header (its element generator, ``Tag`` objects, a ``Dataset`` of
``RawDataElement``s, then value conversion per attribute) was more than half of the CPU the hub
spent indexing a small instance. This reader walks the encoded elements of the first chunk of the
file with ``struct``, keeps the raw bytes of the indexed top-level attributes and decodes only
those, for the plain cases: little-endian syntaxes (Implicit VR, Explicit VR and the encapsulated
ones), values that are ASCII. Anything else (no preamble, a deflated or big-endian syntax, a
non-ASCII or ISO 2022 value, a header longer than the chunk, an unexpected structure) raises
:class:`Unhandled`, and the caller reads the object with pydicom as before, so the values
indexed are those pydicom's conversion gives (``tests/dicom/test_store_speed_header.py`` compares
both on varied headers).
"""

from __future__ import annotations

import struct
from functools import lru_cache

#: tag → (keyword, VR in the data dictionary) of the attributes the index keeps
#: (``hub.dicom.store._INDEXED``; a test checks these against pydicom's dictionary)
INDEXED_TAGS: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080021: ("SeriesDate", "DA"),
    0x00080030: ("StudyTime", "TM"),
    0x00080031: ("SeriesTime", "TM"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080090: ("ReferringPhysicianName", "PN"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100021: ("IssuerOfPatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200010: ("StudyID", "SH"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
}

#: pydicom's read stops at the pixel data (``filereader._at_pixel_data``); so does this one
_PIXEL_DATA = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
#: explicit VRs with two reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                       b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
#: VRs whose values are plain ASCII whatever the character set (PS3.5 6.1.2.3)
_ASCII_VRS = frozenset({"UI", "DA", "TM", "DT", "CS", "AS", "IS", "DS", "AE"})
#: VRs decoded with the character set, as pydicom's ``convert_text`` (values split on "\", each
#: stripped of trailing spaces and NULs) or ``convert_PN``
_TEXT_VRS = frozenset({"SH", "LO", "UC", "PN"})
_UNDEFINED = 0xFFFFFFFF
_IMPLICIT_LE = "1.2.840.10008.1.2"

_HH = struct.Struct("<HH")
_HHI = struct.Struct("<HHI")
_HH2SH = struct.Struct("<HH2sH")
_H = struct.Struct("<H")
_I = struct.Struct("<I")


class Unhandled(Exception):
    """Not a case this reader decodes: read the object with pydicom."""


@lru_cache(maxsize=64)
def _syntax_is_plain_le(ts: str) -> bool | None:
    """True for Implicit VR LE, False for an explicit little-endian (not deflated) syntax pydicom
    knows, None otherwise (big endian, deflated, unknown: pydicom reads those)."""
    if ts == _IMPLICIT_LE:
        return True
    from pydicom.uid import UID

    uid = UID(ts)
    if uid.is_transfer_syntax and not uid.is_deflated and uid.is_little_endian and not uid.is_implicit_VR:
        return False
    return None


class Header:
    """The transfer syntax, where the data set starts, and the indexed attributes' values."""

    __slots__ = ("transfer_syntax", "meta_end", "_values", "_present")

    def __init__(self, transfer_syntax: str, meta_end: int, values: dict[str, str | int | None],
                 present: set[str]):
        self.transfer_syntax = transfer_syntax
        self.meta_end = meta_end
        self._values = values
        self._present = present

    def text(self, kw: str, n: int = 255) -> str:
        v = self._values.get(kw)
        return v[:n] if isinstance(v, str) else ""

    def int(self, kw: str) -> int | None:
        v = self._values.get(kw)
        return v if isinstance(v, int) else None

    def has(self, kw: str) -> bool:
        return kw in self._present


def _explicit_vr(buf: bytes, pos: int) -> tuple[bytes, int, int]:
    """(VR, value length, value offset) of the explicit-VR element at ``pos``."""
    vr = buf[pos + 4:pos + 6]
    if vr in _SHORT_VRS:
        return vr, _H.unpack_from(buf, pos + 6)[0], pos + 8
    if vr in _LONG_VRS:
        return vr, _I.unpack_from(buf, pos + 8)[0], pos + 12
    raise Unhandled("unknown VR")


def element_header(buf: bytes, pos: int, implicit: bool) -> tuple[int, int, bytes | None, int, int]:
    """``(group, element, VR or None when implicit, value length, value offset)`` of the element
    whose header starts at ``pos``: one ``unpack`` per header (the readers' loops spend most of
    their time here); raises :class:`Unhandled` for an unknown explicit VR."""
    if implicit:
        group, elem, length = _HHI.unpack_from(buf, pos)
        return group, elem, None, length, pos + 8
    group, elem, vr, length = _HH2SH.unpack_from(buf, pos)
    if vr in _LONG_VRS:
        return group, elem, vr, _I.unpack_from(buf, pos + 8)[0], pos + 12
    if vr in _SHORT_VRS:
        return group, elem, vr, length, pos + 8
    raise Unhandled("unknown VR")


def _skip_sequence(buf: bytes, pos: int, implicit: bool) -> int:
    """Past the undefined-length sequence (or encapsulated value) whose first item is at ``pos``."""
    while True:
        group, elem, length = _HHI.unpack_from(buf, pos)
        pos += 8
        if group != 0xFFFE:
            raise Unhandled("not an item")
        if elem == 0xE0DD:
            return pos
        if elem != 0xE000:
            raise Unhandled("not an item")
        pos = _skip_item(buf, pos, implicit) if length == _UNDEFINED else pos + length
        if pos > len(buf):
            raise Unhandled("past the chunk")


def _skip_item(buf: bytes, pos: int, implicit: bool) -> int:
    """Past the undefined-length item whose first element is at ``pos``."""
    while True:
        group, elem = _HH.unpack_from(buf, pos)
        if group == 0xFFFE:
            if elem == 0xE00D:
                return pos + 8
            raise Unhandled("unexpected delimiter")
        if implicit:
            vr, length, pos = None, _I.unpack_from(buf, pos + 4)[0], pos + 8
        else:
            vr, length, pos = _explicit_vr(buf, pos)
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, pos, implicit or vr == b"UN")
        else:
            pos += length
        if pos > len(buf):
            raise Unhandled("past the chunk")


def _decode(raw: bytes, vr: str) -> str | int | None:
    if vr in _ASCII_VRS:
        return raw.decode("ascii", "replace").strip(" \x00")
    if vr in _TEXT_VRS:
        if not raw.isascii() or b"\x1b" in raw:
            raise Unhandled("text to decode with the character set")  # ISO 2022 escapes are ASCII bytes
        if vr == "PN":
            s = raw.rstrip(b"\x00 ").decode("ascii")
            if "=" in s:
                raise Unhandled("person name with component groups")  # PersonName drops empty ones
            return s
        return "\\".join(v.rstrip("\x00 ") for v in raw.decode("ascii").split("\\"))
    if vr == "US":
        if len(raw) == 2:
            return _H.unpack_from(raw)[0]
        if not raw:
            return None
    raise Unhandled(f"value of VR {vr}")


def _as_int(v: str | int | None) -> int | None:
    """As ``store._int``: an IS value's text as an integer, or None."""
    if isinstance(v, int) or v is None:
        return v
    try:
        return int(v) if v != "" else None
    except ValueError:
        return None


#: File Meta elements the callers read (PS3.10 7.1)
MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE, TRANSFER_SYNTAX = 0x00020002, 0x00020003, 0x00020010


def file_meta(buf: bytes) -> tuple[int, dict[int, bytes]]:
    """``(offset of the data set, raw value by tag)`` of the File Meta Information of the Part 10
    object whose first bytes are ``buf``: explicit VR little endian, up to the first element of
    another group (where pydicom's ``_read_file_meta_info`` stops, and where the data set that
    C-STORE sends and the hub hashes starts). Raises :class:`Unhandled` for no preamble, an
    unknown VR, an undefined length, or a group that does not end inside ``buf``."""
    n = len(buf)
    if n < 132 or buf[128:132] != b"DICM":
        raise Unhandled("no preamble")
    pos, values = 132, {}
    try:
        while pos + 8 <= n:
            group, elem = _HH.unpack_from(buf, pos)
            if group != 0x0002:
                return pos, values
            vr, length, start = _explicit_vr(buf, pos)
            if length == _UNDEFINED or start + length > n:
                raise Unhandled("file meta")
            values[group << 16 | elem] = buf[start:start + length]
            pos = start + length
    except struct.error:
        raise Unhandled("file meta") from None
    raise Unhandled("file meta reaches the end of the chunk")


def read(buf: bytes) -> Header:
    """The header of the Part 10 object whose first bytes are ``buf``; raises :class:`Unhandled`."""
    try:
        return _read(buf)
    except Unhandled:
        raise
    except (struct.error, UnicodeDecodeError, RecursionError) as e:  # truncated or malformed
        raise Unhandled(type(e).__name__) from None


def _read(buf: bytes) -> Header:
    n = len(buf)
    meta_end, meta = file_meta(buf)
    pos = meta_end
    ts = meta.get(TRANSFER_SYNTAX, b"").decode("ascii").rstrip("\x00 ")
    if not ts:
        raise Unhandled("no transfer syntax")
    implicit = _syntax_is_plain_le(ts)
    if implicit is None:
        raise Unhandled("transfer syntax")
    raw: dict[int, tuple[str, bytes]] = {}
    while pos < n:
        if pos + 8 > n:
            raise Unhandled("element header past the chunk")
        group, elem, vr, length, start = element_header(buf, pos, implicit)
        tag = group << 16 | elem
        if tag in _PIXEL_DATA:
            break
        wanted = INDEXED_TAGS.get(tag)
        if length == _UNDEFINED:
            if wanted is not None:
                raise Unhandled("undefined length")
            pos = _skip_sequence(buf, start, implicit or vr == b"UN")
            continue
        end = start + length
        if end > n:
            if tag > 0x00280011:  # past every indexed attribute: what follows is not needed
                break
            raise Unhandled("value past the chunk")
        if wanted is not None:
            # the dictionary's VR where the file gives none (implicit) or UN, as pydicom does
            raw[tag] = (wanted[1] if vr is None or vr == b"UN" else vr.decode("ascii"), buf[start:end])
        pos = end
    values: dict[str, str | int | None] = {}
    present: set[str] = set()
    for tag, (vr, value) in raw.items():
        kw, dict_vr = INDEXED_TAGS[tag]
        present.add(kw)
        v = _decode(value, vr)
        values[kw] = _as_int(v) if dict_vr in ("IS", "US") else v
    return Header(ts, meta_end, values, present)
