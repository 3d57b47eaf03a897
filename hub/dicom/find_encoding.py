"""C-FIND responses encoded straight from the index rows (PS3.5 7.1: Little Endian, implicit or
explicit VR), instead of a pydicom ``Dataset`` per response encoded by pydicom.

Building the response ``Dataset`` (:func:`hub.dicom.attributes.find_response`) and having pydicom
write it cost about 0.6 ms of CPU per pending response, most of a C-FIND that matches many
studies. A :class:`ResponsePlan` is made once per C-FIND from its identifier: which elements the
responses carry, in tag order, and where each value comes from. Each response is then one
:class:`EncodedIdentifier`, whose bytes are written when pynetdicom encodes it for the accepted
transfer syntax (:func:`install` routes pynetdicom's C-FIND encoding through it). The bytes are
those pydicom writes for ``find_response``'s ``Dataset`` (the tests compare them); a response this
encoder does not cover (a value read from the stored header at the IMAGE level, a big-endian or
deflated transfer syntax, a return key of a VR it does not write) is ``find_response``'s
``Dataset``, encoded by pydicom as before.
"""

from __future__ import annotations

import logging
import struct

import pynetdicom
from pydicom.dataset import Dataset
from pynetdicom import service_class

from hub.dicom.attributes import QueryIdentifier, find_response
from hub.dicom.matching import KEYS

log = logging.getLogger("yilian.dicom")

_SUPPORTED_VERSIONS = ("3.0.",)
_UTF8 = "ISO_IR 192"  # PS3.5 6.1.2.5.3, as find_response sets it for a non-ASCII value
_SPECIFIC_CHARACTER_SET = 0x00080005
_QUERY_RETRIEVE_LEVEL = 0x00080052
_RETRIEVE_AE_TITLE = 0x00080054
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
                       "UI", "UR", "UT"})
_EMPTY_VRS = _TEXT_VRS | {"US", "UL", "SS", "SL", "FL", "FD", "AT", "OB", "OW", "SQ", "UN"}
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


class _Unsupported(Exception):
    """This response is left to find_response and pydicom."""


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    if vr in _LONG_LENGTH_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    if length > 0xFFFF:
        raise _Unsupported
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _text_value(vr: str, value) -> str:
    if isinstance(value, (list, tuple)):
        return "\\".join(_text_value(vr, v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Unsupported
    if isinstance(value, int) and vr != "IS":
        raise _Unsupported
    return str(value)


class ResponsePlan:
    """The elements of every pending response to one C-FIND identifier (see module)."""

    def __init__(self, ident: QueryIdentifier, level: str, ae_title: str):
        self.ident = ident
        self.level = level
        self.ae_title = ae_title
        # (tag, vr, source): source is an index keyword, "" for an empty element, or None for
        # the element of a fixed value (RetrieveAETitle)
        self.elements: list[tuple[int, str, str | None]] = []
        self.header_keys = False  # a return key only the stored header may hold (IMAGE level)
        self.supported = True
        for tag, vr, kw in ident.elements:
            if kw in ("SpecificCharacterSet", "QueryRetrieveLevel") or not kw:
                continue
            if kw == "RetrieveAETitle":
                self.elements.append((_RETRIEVE_AE_TITLE, "AE", None))
            elif kw in KEYS:
                key = KEYS[kw]
                self.elements.append((key.tag, key.vr, kw))
            else:
                self.header_keys = self.header_keys or level == "IMAGE"
                if vr not in _EMPTY_VRS:
                    self.supported = False
                self.elements.append((tag, vr, ""))
        self.elements.append((_QUERY_RETRIEVE_LEVEL, "CS", "QueryRetrieveLevel"))
        self.elements.sort(key=lambda e: e[0])

    def response(self, row: dict) -> Dataset:
        """The identifier of the pending response for ``row``."""
        if not self.supported or (self.level == "IMAGE" and row.get("_meta") and (
                self.header_keys or any(src and src != "QueryRetrieveLevel" and src not in row for _, _, src in self.elements))):
            return find_response(self.ident.dataset, row, self.level, self.ae_title)
        return EncodedIdentifier(self, row)

    def encode(self, row: dict, implicit: bool) -> bytes:
        """The response's bytes: ASCII when every text value is, else UTF-8 with Specific
        Character Set ``ISO_IR 192`` first (as find_response sets it for a non-ASCII value)."""
        values = [self._value(row, source) for _, _, source in self.elements]
        try:
            return self._encoded(values, implicit, "ascii")
        except UnicodeEncodeError:  # a non-ASCII text value
            return (_element(_SPECIFIC_CHARACTER_SET, "CS", _UTF8, implicit, "utf-8")
                    + self._encoded(values, implicit, "utf-8"))

    def _value(self, row: dict, source: str | None):
        if source is None:
            return self.ae_title
        if source == "QueryRetrieveLevel":
            return self.level
        value = row.get(source) if source else None  # a key the index does not hold: returned empty
        return None if value == [] else value

    def _encoded(self, values: list, implicit: bool, codec: str) -> bytes:
        """The elements of ``values`` (in :attr:`elements`' order); a plain text value is written
        here, anything else by :func:`_element`."""
        out = []
        append = out.append
        for (tag, vr, _), value in zip(self.elements, values):
            if type(value) is str and value and vr in _TEXT_VRS:
                raw = value.encode(codec)
                if len(raw) % 2:
                    raw += b"\0" if vr == "UI" else b" "
                append(_header(tag, vr, len(raw), implicit))
                append(raw)
            else:
                append(_element(tag, vr, value, implicit, codec))
        return b"".join(out)


def _element(tag: int, vr: str, value, implicit: bool, codec: str) -> bytes:
    if value is None or value == "":
        raw = b""
    elif vr == "US":
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in values):
            raise _Unsupported
        raw = struct.pack(f"<{len(values)}H", *values)
    elif vr in _TEXT_VRS:
        raw = _text_value(vr, value).encode(codec)
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
    else:
        raise _Unsupported
    return _header(tag, vr, len(raw), implicit) + raw


class EncodedIdentifier(Dataset):
    """A pending C-FIND response of a :class:`ResponsePlan`, encoded when pynetdicom encodes it."""

    def __init__(self, plan: ResponsePlan, row: dict):
        super().__init__()
        object.__setattr__(self, "_yilian_plan", plan)
        object.__setattr__(self, "_yilian_row", row)

    def encoded(self, implicit: bool) -> bytes:
        try:
            return self._yilian_plan.encode(self._yilian_row, implicit)
        except _Unsupported:
            return _pydicom_encode(self.as_dataset(), implicit, True)

    def as_dataset(self) -> Dataset:
        plan = self._yilian_plan
        return find_response(plan.ident.dataset, self._yilian_row, plan.level, plan.ae_title)


_pydicom_encode = service_class.encode


def _encode(ds, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False):
    """pynetdicom's ``encode`` as its service classes call it, with an :class:`EncodedIdentifier`
    written directly (Little Endian, not deflated) or else as its ``Dataset``."""
    if isinstance(ds, EncodedIdentifier):
        if is_little_endian and not deflated:
            return ds.encoded(is_implicit_vr)
        ds = ds.as_dataset()
    return _pydicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> bool:
    """Route pynetdicom's C-FIND response encoding through :func:`_encode`; ``False`` (nothing
    changed: responses are then built as ``Dataset``) on another pynetdicom version."""
    if not pynetdicom.__version__.startswith(_SUPPORTED_VERSIONS):
        log.warning("pynetdicom %s: C-FIND responses encoded by pydicom (direct encoding written for %s)",
                    pynetdicom.__version__, ", ".join(v + "x" for v in _SUPPORTED_VERSIONS))
        return False
    service_class.encode = _encode
    return True
