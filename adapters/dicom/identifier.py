"""The elements of a C-FIND / C-GET / C-MOVE identifier, read straight from its encoded bytes.

pydicom's decoding of an identifier (a ``Dataset`` of raw elements, each converted when read)
and the walk over it that gives the match keys and the response plan were about a third of the
hub's CPU for a C-FIND inside an association. A query identifier is a short list of plain
elements, most of them empty return keys, so this reader walks the bytes with ``struct`` and
decodes the few values, for the plain cases only: a little-endian syntax (the caller checks the
transfer syntax), values that are ASCII, single-valued person names, no sequence with items.
Anything else raises :class:`adapters.dicom.header.Unhandled`, and the caller decodes the
identifier with pydicom as before, so the keys are those pydicom's conversion gives
(``tests/dicom/test_identifier.py`` compares both on varied identifiers).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import NamedTuple

from adapters.dicom.header import _ASCII_VRS, _TEXT_VRS, _UNDEFINED, Unhandled, _decode, element_header

#: the ASCII VRs whose values this reader gives as pydicom's ``str`` does; IS and DS values
#: become pydicom number types whose text may differ from the bytes (left to pydicom)
_PLAIN_ASCII_VRS = _ASCII_VRS - {"IS", "DS"}


class Element(NamedTuple):
    """One element of an identifier: its value as text, ``""`` when empty (as
    ``hub.dicom.attributes.identifier_keys`` gives it), multiple values joined by ``\\``."""

    tag: int
    vr: str
    keyword: str
    value: str


@lru_cache(maxsize=1024)
def _dictionary(tag: int) -> tuple[str, str] | None:
    """(keyword, VR) of a tag in pydicom's dictionary; None for a private or unknown tag, which
    has no keyword (pydicom's ``DataElement.keyword`` is then empty, and the hub skips it)."""
    from pydicom.datadict import dictionary_has_tag, dictionary_keyword, dictionary_VR

    if not dictionary_has_tag(tag):
        return None
    return dictionary_keyword(tag), dictionary_VR(tag)


def _value(raw: bytes, vr: str) -> str:
    if not raw:
        return ""
    if vr in _PLAIN_ASCII_VRS:
        if not raw.isascii():
            raise Unhandled("non-ASCII value")
        value = _decode(raw, vr)
        if "\\" in value and any(v != v.strip(" \x00") for v in value.split("\\")):
            raise Unhandled("padded values of a multi-valued element")
        return value
    if vr in _TEXT_VRS:
        if vr == "PN" and b"\\" in raw:
            raise Unhandled("multi-valued person name")
        return _decode(raw, vr)
    raise Unhandled(f"value of VR {vr}")


def read(raw: bytes, implicit: bool) -> list[Element]:
    """The elements of an identifier encoded in a little-endian syntax (``implicit``: Implicit VR
    Little Endian), in tag order, without those that have no keyword; raises :class:`Unhandled`
    for anything it does not decode as pydicom would."""
    try:
        return _read(raw, implicit)
    except Unhandled:
        raise
    except (struct.error, UnicodeDecodeError) as e:  # truncated or malformed: pydicom says what is wrong
        raise Unhandled(type(e).__name__) from None


def _read(raw: bytes, implicit: bool) -> list[Element]:
    n = len(raw)
    pos = 0
    out: dict[int, Element] = {}
    while pos < n:
        group, elem, vr_bytes, length, start = element_header(raw, pos, implicit)
        vr = None if vr_bytes is None else vr_bytes.decode("ascii")
        if length == _UNDEFINED or group == 0xFFFE:
            raise Unhandled("undefined length or item")
        end = start + length
        if end > n:
            raise Unhandled("value past the end")
        pos = end
        tag = group << 16 | elem
        known = _dictionary(tag)
        if known is None:
            continue
        keyword, dictionary_vr = known
        if vr is None:
            if " or " in dictionary_vr:
                raise Unhandled("ambiguous VR")
            vr = dictionary_vr
        elif vr == "UN":
            raise Unhandled("VR UN")
        if vr == "SQ" and length:
            raise Unhandled("sequence with items")
        if tag in out:
            raise Unhandled("repeated element")
        out[tag] = Element(tag, vr, keyword, _value(raw[start:end], vr) if vr != "SQ" else "")
    return [out[tag] for tag in sorted(out)]
