"""The DICOM JSON (PS3.18 F.2) of a header read by pydicom, without pydicom's per-element conversion.

``Dataset.to_json_dict`` converts every element (a ``DataElement`` from the ``RawDataElement``,
value conversion with validation, ``MultiValue``, ``PersonName``...) and was three quarters of the
CPU the hub spent after a C-STORE burst, competing for the GIL with the queries that follow. Here
the raw bytes of the common cases are encoded directly: explicit VRs or the data dictionary's,
little-endian, ASCII values of the text VRs (under a character set in which ASCII bytes mean
ASCII), binary numbers, and binary values (InlineBinary or BulkDataURI). Every other element
(sequences, person names with component groups, non-ASCII text, odd VRs, deferred values) goes
through pydicom's own ``to_json_dict``, so the result is the one pydicom gives
(``tests/dicom/test_dicom_json.py`` compares both on varied headers).
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from functools import lru_cache

#: character sets in which a value of ASCII bytes (no ESC) decodes as ASCII, as pydicom decodes it
_ASCII_COMPATIBLE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6", "ISO_IR 100", "ISO_IR 192", "GB18030", "GBK"})
#: how pydicom's converters (pydicom.values) strip and split each text VR:
#: whole value right-stripped of " \0" then split on "\"
_SPLIT_AFTER_STRIP = frozenset({"UI", "CS", "AS", "DA", "TM", "DT"})
#: split on "\", each value right-stripped of "\0 " (convert_text)
_SPLIT_THEN_STRIP = frozenset({"LO", "SH", "UC"})
#: one value, right-stripped of "\0 " (convert_single_string)
_SINGLE = frozenset({"LT", "ST", "UT"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")
_DECIMAL_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_UNDEFINED_LENGTH = 0xFFFFFFFF


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    """The VR of a public tag in pydicom's dictionary; None for private, unknown or ambiguous ones."""
    from pydicom.datadict import dictionary_VR

    if tag >> 16 & 1:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if len(vr) == 2 else None


def _text_values(vr: str, value: bytes) -> list | None:
    """The JSON values of an ASCII text value as pydicom gives them, None for pydicom to do."""
    if not value.isascii() or b"\x1b" in value:
        return None
    s = value.decode("ascii")
    if vr in _SPLIT_AFTER_STRIP:
        items = s.rstrip(" \x00").split("\\")
    elif vr in _SPLIT_THEN_STRIP:
        items = [v.rstrip("\x00 ") for v in s.split("\\")]
    elif vr in _SINGLE:
        items = [s.rstrip("\x00 ")]
    elif vr == "UR":
        items = [s.rstrip()]
    elif vr == "AE":
        items = [v.strip() for v in s.split("\\")]
    elif vr == "IS" or vr == "DS":
        items = s.strip().rstrip(" \x00").split("\\")
        pattern = _INT_TEXT if vr == "IS" else _DECIMAL_TEXT
        if not all(pattern.match(v) for v in items):
            return None  # empty values in a list, or pydicom's lenient forms: its own conversion
        return [int(v) for v in items] if vr == "IS" else [float(v) for v in items]
    elif vr == "PN":
        items = s.rstrip("\x00 ").split("\\")
        if any(not v or "=" in v for v in items):
            return None  # component groups, empty names: PersonName's rules
        return [{"Alphabetic": v} for v in items]
    else:
        return None
    if len(items) == 1 and not items[0]:
        return []  # no value
    return items


def header_json(ds, bulk_threshold: int, bulk_uri: Callable[[object], str]) -> dict:
    """``ds.to_json_dict(bulk_threshold, bulk_uri)`` for a data set read by pydicom's ``dcmread``."""
    from pydicom.dataelem import RawDataElement

    implicit, little = ds.original_encoding
    charset = ds.get("SpecificCharacterSet", "")  # converted here, as pydicom's decoding needs it
    if not little or not isinstance(charset, str) or charset not in _ASCII_COMPATIBLE:
        return ds.to_json_dict(bulk_threshold, bulk_uri)
    inline_max = (bulk_threshold // 4) * 3
    out: dict = {}
    for tag in ds.keys():
        raw = ds.get_item(tag)
        element = _encode_raw(raw, implicit, inline_max, bulk_uri) if isinstance(raw, RawDataElement) else None
        if element is None:
            element = ds[tag].to_json_dict(bulk_uri, bulk_threshold)
        out[f"{tag:08X}"] = element
    return out


def _encode_raw(raw, implicit: bool, inline_max: int, bulk_uri) -> dict | None:
    """The JSON of one raw element in the cases handled here, else None."""
    value = raw.value
    if value is None or raw.length == _UNDEFINED_LENGTH:
        return None  # deferred or undefined length (sequences, encapsulated data)
    vr = _dictionary_vr(raw.tag) if implicit or raw.VR is None else raw.VR
    if vr is None:
        return None
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize("<" + fmt)
        if len(value) % size:
            return None
        if not value:
            return {"vr": vr}
        numbers = list(struct.unpack(f"<{len(value) // size}{fmt}", value))
        if fmt in "fd":
            numbers = [float(n) for n in numbers]
        return {"vr": vr, "Value": numbers}
    if vr in _BINARY:
        if not value:
            return {"vr": vr}
        if len(value) > inline_max:
            return {"vr": vr, "BulkDataURI": bulk_uri(raw)}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    items = _text_values(vr, value)
    if items is None:
        return None
    return {"vr": vr, "Value": items} if items else {"vr": vr}
