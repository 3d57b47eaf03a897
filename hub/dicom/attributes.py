"""From C-FIND identifiers to matching keys, and from index rows to C-FIND responses and QIDO-RS
DICOM JSON (PS3.18 F.2). Return keys the index does not hold are returned empty (PS3.4
C.4.1.1.3.2), or at the IMAGE level from the instance's stored header.

pydicom is imported where a function needs it, not with this module: importing pydicom imports
numpy, Pillow and its pixel handlers (about 40 MB), which a hub process that only answers QIDO-RS
from the index never needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from hub.dicom.matching import BY_TAG, KEYS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class QueryIdentifier:
    """A C-FIND / C-GET / C-MOVE identifier as the SCP uses it: its Query/Retrieve Level, its
    match keys (:func:`identifier_keys`), its elements in tag order ``(tag, VR, keyword)``, and
    the pydicom ``Dataset``, decoded only when asked for (a response
    :mod:`hub.dicom.find_encoding` leaves to :func:`find_response`). :meth:`from_request` reads
    the request's bytes with :mod:`adapters.dicom.identifier` where it can, and otherwise decodes
    them with pydicom; both give the same level, keys and elements."""

    __slots__ = ("_dataset", "_decode", "elements", "keys", "level")

    def __init__(self, level: str, keys: dict[str, str], elements: list[tuple[int, str, str]],
                 dataset: Dataset | None = None, decode=None):
        self.level = level
        self.keys = keys
        self.elements = elements
        self._dataset = dataset
        self._decode = decode

    @classmethod
    def from_dataset(cls, ident: Dataset) -> QueryIdentifier:
        elements = [(int(el.tag), el.VR, el.keyword) for el in ident if el.keyword]
        return cls(str(ident.get("QueryRetrieveLevel", "")).upper(), identifier_keys(ident), elements, ident)

    @classmethod
    def from_request(cls, event) -> QueryIdentifier:
        """The identifier of a pynetdicom C-FIND / C-GET / C-MOVE event."""
        from adapters.dicom import identifier

        syntax = event.context.transfer_syntax
        raw = event.request.Identifier
        if raw is not None and syntax.is_little_endian and not syntax.is_deflated:
            try:
                elements = identifier.read(raw.getvalue(), syntax.is_implicit_VR)
            except identifier.Unhandled:
                pass
            else:
                level = next((el.value for el in elements if el.keyword == "QueryRetrieveLevel"), "")
                if "\\" not in level:  # pydicom's text of several levels is a list's (an invalid level either way)
                    keys = {el.keyword: el.value for el in elements
                            if el.vr != "SQ" and el.tag != 0x00080005 and el.keyword != "QueryRetrieveLevel"}
                    return cls(level.upper(), keys, [(el.tag, el.vr, el.keyword) for el in elements],
                               decode=lambda: event.identifier)
        return cls.from_dataset(event.identifier)

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = self._decode()
        return self._dataset


def identifier_keys(ident: Dataset) -> dict[str, str]:
    """keyword → match value for each element of a C-FIND/MOVE/GET identifier."""
    from pydicom.multival import MultiValue

    out: dict[str, str] = {}
    for el in ident:
        if el.VR == "SQ" or el.tag.group == 0x0008 and el.tag.element == 0x0005:
            continue
        kw = el.keyword
        if not kw or kw == "QueryRetrieveLevel":
            continue
        v = el.value
        if v is None:
            out[kw] = ""
        elif isinstance(v, (list, tuple, MultiValue)):
            out[kw] = "\\".join(str(x) for x in v)
        else:
            out[kw] = str(v)
    return out


def _ascii(s) -> bool:
    return not isinstance(s, str) or s.isascii()


def find_response(ident: Dataset, row: dict, level: str, ae_title: str) -> Dataset:
    from pydicom import config
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    ds = Dataset()
    meta = None
    non_ascii = False
    for el in ident:
        kw = el.keyword
        if kw in ("SpecificCharacterSet", "QueryRetrieveLevel") or not kw:
            continue
        if kw == "RetrieveAETitle":
            ds.RetrieveAETitle = ae_title
            continue
        if kw in row and kw in KEYS:
            v = row[kw]
            if v is None:
                v = ""
            if isinstance(v, list):
                v = list(v) if v else ""
            key = KEYS[kw]
            if key.vr == "US" and v == "":
                v = None  # an empty binary value
            # the index's own values need no validation: skip pydicom's regular expressions, the
            # larger part of building a response
            ds[key.tag] = DataElement(key.tag, key.vr, v, validation_mode=config.IGNORE)
            non_ascii = non_ascii or not _ascii(v)
            continue
        if level == "IMAGE" and row.get("_meta"):
            if meta is None:
                meta = orjson.loads(row["_meta"])
            item = meta.get(f"{el.tag:08X}")
            if item and "Value" in item and item.get("vr") not in ("SQ", "PN"):
                try:
                    ds.add_new(el.tag, item["vr"], item["Value"] if len(item["Value"]) > 1 else item["Value"][0])
                    continue
                except Exception:
                    pass
        ds.add_new(el.tag, el.VR, None)
    ds.QueryRetrieveLevel = level
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 (PS3.5 6.1.2.5.3)
    return ds


# ---------------------------------------------------------------------- DICOM JSON (QIDO-RS)
def json_value(tag: int, vr: str, value) -> dict:
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in values]}
    if vr in ("IS", "US", "UL", "SL", "SS"):
        return {"vr": vr, "Value": [int(v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


#: PS3.18 Table 10.6.3-3/4/5: attributes returned by default per level
DEFAULT_FIELDS = {
    "STUDY": ["SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances", "RetrieveURL"],
    "SERIES": ["SpecificCharacterSet", "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
               "NumberOfSeriesRelatedInstances", "StudyInstanceUID", "RetrieveURL", "SeriesDate", "SeriesTime"],
    "IMAGE": ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
              "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID", "RetrieveURL"],
}


def qido_json(row: dict, level: str, fields: list[str], retrieve_url: str, include_all: bool = False) -> dict:
    out: dict[str, dict] = {}
    meta = None
    names = list(dict.fromkeys(DEFAULT_FIELDS[level] + fields))
    if include_all:
        names += [k for k, key in KEYS.items() if key.level in _LEVELS_AT[level] and k not in names]
    for kw in names:
        if kw == "SpecificCharacterSet":
            continue
        if kw == "RetrieveURL":
            out["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
            continue
        key = KEYS.get(kw)
        if key is not None and kw in row:
            out[f"{key.tag:08X}"] = json_value(key.tag, key.vr, row[kw])
            continue
        if not (level == "IMAGE" and row.get("_meta")):
            continue  # neither in the index nor in a stored header: not returned
        tag = _tag_of(kw)
        if tag is None:
            continue
        meta = meta or orjson.loads(row["_meta"])
        if f"{tag:08X}" in meta:
            out[f"{tag:08X}"] = meta[f"{tag:08X}"]
            continue
    if any(not v.get("Value") is None and any(not _ascii(x if not isinstance(x, dict) else x.get("Alphabetic"))
                                                for x in v.get("Value", [])) for v in out.values()):
        out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    return dict(sorted(out.items()))


_LEVELS_AT = {"STUDY": ("PATIENT", "STUDY"), "SERIES": ("SERIES",), "IMAGE": ("IMAGE",)}


def _is_hex(s: str) -> bool:
    return len(s) == 8 and all(c in "0123456789abcdefABCDEF" for c in s)


def _tag_of(kw: str) -> int | None:
    if _is_hex(kw):
        return int(kw, 16)
    key = KEYS.get(kw)
    if key is not None:
        return key.tag
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(kw)


def keyword_of(name: str) -> str | None:
    """A QIDO-RS attribute as keyword or 8-hex tag (PS3.18 8.3.4.1) → keyword."""
    if _is_hex(name):
        key = BY_TAG.get(int(name, 16))
        if key is not None:
            return key.keyword
        from pydicom.datadict import keyword_for_tag

        return keyword_for_tag(int(name, 16)) or None
    return name if _tag_of(name) is not None else None


def vr_of(keyword: str) -> str:
    key = KEYS.get(keyword)
    if key is not None:
        return key.vr
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    return dictionary_VR(tag_for_keyword(keyword))


__all__ = ["QueryIdentifier", "identifier_keys", "find_response", "qido_json", "keyword_of", "BY_TAG"]
