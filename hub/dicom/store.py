"""The one ingest path for DICOM objects (C-STORE, STOW-RS): blob first, index second.

"Store first, acknowledge second" (ARCHITECTURE.md): the object is in the blob store and its
index rows are committed before the caller answers success. The object is kept as received
(no decoding of pixel data, no change of transfer syntax); only the header is parsed.

Re-sending an instance is idempotent: the same SOP Instance UID with the same data set (SHA-256
of the bytes after the file meta information, which differs between senders) is a success that
changes nothing: its copy is not kept when another File Meta made it another blob. A *different*
data set under a stored SOP Instance UID is refused with :data:`STATUS_CONFLICT`, a permanent
failure (the first object stays the one served, the second is kept for review in
``dicom_conflicts``). See docs/dicom.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from functools import cache
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import Engine, bindparam, select, update

from adapters.dicom import header
from adapters.dicom.dicom_json import header_json
from hub.dicom import index
from hub.dicom.blobs import sha256_file, sha256_rest
from hub.dicom.schema import dicom_conflicts, dicom_instances
from hub.fhir.model import now_us
from hub.storage.db import write_tx

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom is imported by the functions that parse objects, not with this module: it imports
# numpy, Pillow and its pixel handlers (about 40 MB) into every process that imports the hub

log = logging.getLogger("yilian.dicom")

STATUS_SUCCESS = 0x0000
# Error: another object is stored under this SOP Instance UID. In the C000-CFFF "Cannot understand"
# range of PS3.4 B.2.3, not A7xx: "Refused: Out of Resources" tells senders to retry (the
# front-end processor does), and a conflict never resolves by retrying.
STATUS_CONFLICT = 0xC0F1
STATUS_CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (PS3.4 B.2.3)
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class (PS3.18 10.5.3.3)

#: the attributes the index keeps (hub.dicom.schema); only these are decoded when indexing
_INDEXED = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyDate", "SeriesDate", "StudyTime",
            "SeriesTime", "AccessionNumber", "Modality", "ReferringPhysicianName", "StudyDescription",
            "SeriesDescription", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
            "BodyPartExamined", "StudyInstanceUID", "SeriesInstanceUID", "StudyID", "SeriesNumber",
            "InstanceNumber", "NumberOfFrames", "Rows", "Columns"]
BULK_PREFIX = "yilian-bulk:"  # stored BulkDataURIs, made absolute when served
_BULK_THRESHOLD = 1024
_FILL_BATCH = 100  # headers written per transaction by fill_metadata


@dataclass
class StoreResult:
    status: int
    sop_uid: str
    sop_class: str
    study_uid: str
    comment: str = ""
    duplicate: bool = False


class InvalidObject(Exception):
    """The object cannot be indexed (not Part 10, or a required UID is missing)."""


#: VRs whose values are plain ASCII whatever the character set (PS3.5 6.1.2.3): read from the raw
#: bytes, without pydicom's value conversion (the costliest part of indexing a header)
_ASCII_VRS = frozenset({"UI", "DA", "TM", "DT", "CS", "AS", "IS", "DS", "AE"})


@cache
def _tag(kw: str) -> int:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(kw)


@cache
def _indexed_tags() -> list:
    from pydicom.tag import Tag

    return [Tag(_tag(kw)) for kw in _INDEXED]


def _text(ds: Dataset, kw: str, n: int = 255) -> str:
    from pydicom.dataelem import RawDataElement

    tag = _tag(kw)
    raw = ds.get_item(tag) if tag in ds else None
    if raw is None:
        return ""
    vr = getattr(raw, "VR", None)
    if isinstance(raw, RawDataElement) and vr in _ASCII_VRS and raw.value is not None:
        return raw.value.decode("ascii", "replace").strip(" \x00")[:n]
    v = ds.get(kw)
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        v = "\\".join(str(x) for x in v)
    return str(v)[:n]


def _int(ds: Dataset, kw: str) -> int | None:
    from pydicom.datadict import dictionary_VR

    v = _text(ds, kw) if dictionary_VR(_tag(kw)) == "IS" else ds.get(kw)
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _read_header(path: Path):
    """(File Meta Information, where the data set starts, the indexed attributes of the data set
    up to the pixel data), reading the file once. Only the plain encodings are read here; a
    deflated or unknown transfer syntax goes through pydicom's ``dcmread``."""
    from pydicom import dcmread
    from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import UID

    with open(path, "rb") as fp:
        read_preamble(fp, False)
        file_meta = _read_file_meta_info(fp)
        meta_end = fp.tell()
        ts = UID(str(file_meta.get("TransferSyntaxUID", "")))
        if ts.is_transfer_syntax and not ts.is_deflated and ts.is_little_endian is not None:
            ds = read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian, stop_when=_at_pixel_data,
                              specific_tags=_indexed_tags())
            return file_meta, meta_end, ds
    return file_meta, meta_end, dcmread(path, stop_before_pixels=True, specific_tags=_INDEXED)


class _DatasetHeader:
    """:class:`adapters.dicom.header.Header`'s interface over pydicom's reading of the header."""

    def __init__(self, path: Path):
        file_meta, self.meta_end, self._ds = _read_header(path)
        self.transfer_syntax = str(file_meta.get("TransferSyntaxUID", ""))

    def text(self, kw: str, n: int = 255) -> str:
        return _text(self._ds, kw, n)

    def int(self, kw: str) -> int | None:
        return _int(self._ds, kw)

    def has(self, kw: str) -> bool:
        return kw in self._ds


#: the first read of a received file: the whole of a small instance, the header of most others
_HEAD_CHUNK = 1 << 20


def _parse_header(path: Path, head: bytes):
    """The indexed attributes, from the bytes when :mod:`adapters.dicom.header` handles the case
    (plain little-endian syntaxes, ASCII values: nearly every object), else by pydicom."""
    try:
        return header.read(head)
    except header.Unhandled:
        return _DatasetHeader(path)


def _add_missing_preamble(path: Path) -> None:
    """Some senders (STOW-RS clients) omit the 128-byte preamble and ``DICM`` (PS3.10 7.1) and
    start with the File Meta group: give the file its Part 10 header; the data set is untouched."""
    with open(path, "rb") as f:
        head = f.read(132)
    if head[128:132] == b"DICM" or head[:2] != b"\x02\x00":
        return
    tmp = path.with_suffix(".p10")
    with open(path, "rb") as src, open(tmp, "wb") as out:
        out.write(b"\x00" * 128 + b"DICM")
        while chunk := src.read(1 << 20):
            out.write(chunk)
    os.replace(tmp, path)


def _bulk_uri(el) -> str:
    return f"{BULK_PREFIX}{el.tag:08X}"


class DicomStore:
    """Ingest into ``blobs`` + the index; ``on_stored(study_uid)`` is told of every changed study."""

    def __init__(self, engine: Engine, blobs, *, org_of: Callable[[str, str], str],
                 on_stored: Callable[[str], None] | None = None):
        self.engine = engine
        self.blobs = blobs
        self.org_of = org_of  # (issuer, calling AE) -> organization code
        self.on_stored = on_stored
        self._lock = threading.Lock()

    def ingest_path(self, path: Path, *, source_ae: str = "", expect_study: str | None = None) -> StoreResult:
        """Ingest the Part 10 file at ``path`` (it is moved into the blob store or removed).
        ``expect_study``: the Study Instance UID the object must have (STOW-RS to a study URL)."""
        try:
            return self._ingest(path, source_ae, expect_study)
        finally:
            try:
                os.unlink(path)  # still there when the object was not kept
            except FileNotFoundError:
                pass

    def ingest_bytes(self, data: bytes, *, source_ae: str = "", expect_study: str | None = None) -> StoreResult:
        fd, path = self.blobs.temp_file()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self.ingest_path(path, source_ae=source_ae, expect_study=expect_study)

    def _ingest(self, path: Path, source_ae: str, expect_study: str | None = None) -> StoreResult:
        # one open of the file: its first chunk gives the header (read from the bytes, or by
        # pydicom for the cases header.read leaves to it) and starts both hashes
        f = open(path, "rb")
        try:
            try:
                head = f.read(_HEAD_CHUNK)
                if head[128:132] != b"DICM" and head[:2] == b"\x02\x00":
                    f.close()
                    _add_missing_preamble(path)
                    f = open(path, "rb")
                    head = f.read(_HEAD_CHUNK)
                hdr = _parse_header(path, head)
                sop_uid, sop_class = hdr.text("SOPInstanceUID", 64), hdr.text("SOPClassUID", 64)
                study_uid, series_uid = hdr.text("StudyInstanceUID", 64), hdr.text("SeriesInstanceUID", 64)
                ts = hdr.transfer_syntax
                missing = [k for k, v in (("SOPInstanceUID", sop_uid), ("SOPClassUID", sop_class),
                                          ("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                                          ("TransferSyntaxUID", ts)) if not v]
                if missing:
                    raise InvalidObject(f"required attributes missing: {', '.join(missing)}")
                if expect_study and study_uid != expect_study:
                    return StoreResult(STATUS_DATASET_MISMATCH, sop_uid, sop_class, study_uid,
                                       comment="the object belongs to another study than the request's URL")
            except InvalidObject as e:
                return self._refuse(path, "invalid", "", STATUS_CANNOT_UNDERSTAND, str(e), source_ae)
            except Exception as e:  # pydicom's many parse errors: the bytes are not a usable object
                return self._refuse(path, "invalid", "", STATUS_CANNOT_UNDERSTAND,
                                    f"not a DICOM Part 10 object ({type(e).__name__})", source_ae)
            blob_key, data_hash, size = sha256_rest(f, head, hdr.meta_end)
        finally:
            f.close()
        now = now_us()
        issuer = hdr.text("IssuerOfPatientID", 64)
        name = hdr.text("PatientName")
        referring = hdr.text("ReferringPhysicianName")
        study = {"study_uid": study_uid, "patient_id": hdr.text("PatientID", 64), "issuer": issuer,
                 "patient_name": name, "patient_name_norm": name.upper(),
                 "birth_date": hdr.text("PatientBirthDate", 8), "sex": hdr.text("PatientSex", 16),
                 "study_date": hdr.text("StudyDate", 8), "study_time": hdr.text("StudyTime", 16),
                 "accession": hdr.text("AccessionNumber", 64), "study_id": hdr.text("StudyID", 16),
                 "description": hdr.text("StudyDescription"), "referring": referring,
                 "referring_norm": referring.upper(), "org": self.org_of(issuer, source_ae),
                 "charset": hdr.text("SpecificCharacterSet", 64), "updated": now}
        series = {"series_uid": series_uid, "study_uid": study_uid, "modality": hdr.text("Modality", 16),
                  "series_number": hdr.int("SeriesNumber"), "description": hdr.text("SeriesDescription"),
                  "body_part": hdr.text("BodyPartExamined", 64), "series_date": hdr.text("SeriesDate", 8),
                  "series_time": hdr.text("SeriesTime", 16), "updated": now}
        # the header as DICOM JSON is filled in after the burst (fill_metadata): it is the most
        # expensive step of indexing and nothing on the C-STORE path needs it
        inst = {"sop_uid": sop_uid, "series_uid": series_uid, "study_uid": study_uid, "sop_class": sop_class,
                "instance_number": hdr.int("InstanceNumber"), "transfer_syntax": ts,
                "frames": hdr.int("NumberOfFrames") or (1 if hdr.has("Rows") else None),
                "rows": hdr.int("Rows"), "columns": hdr.int("Columns"), "blob_key": blob_key,
                "data_hash": data_hash, "size": size, "received": now, "source_ae": source_ae[:16], "meta": None}
        # store first, then index: a blob without a row is harmless; blobs are content-addressed,
        # so a duplicate costs nothing and a conflicting object is kept for review as well
        self.blobs.put_file(path, blob_key)
        with write_tx(self.engine) as conn:
            index.upsert_study_series(conn, study, series)
            inserted = index.insert_instance(conn, inst)
            if inserted:
                index.mark_pending(conn, study_uid, now)
            existing = None if inserted else index.find_instance(conn, sop_uid)
            if existing is not None and existing.data_hash != data_hash:
                conn.execute(dicom_conflicts.insert().values(
                    reason="conflict", sop_uid=sop_uid, blob_key=blob_key, data_hash=data_hash,
                    source_ae=source_ae[:16], received=now))
        if existing is not None:
            if existing.data_hash == data_hash:
                if existing.blob_key != blob_key:
                    # the same data set under another sender's File Meta: the stored copy stays
                    # the one served, and this one would be referenced by nothing
                    try:
                        self.blobs.delete(blob_key)
                    except Exception:  # the object store unreachable: a stray copy, but stored all the same
                        log.warning("could not delete a re-sent copy (blob %s)", blob_key[:12], exc_info=True)
                return StoreResult(STATUS_SUCCESS, sop_uid, sop_class, study_uid, duplicate=True)
            log.warning("refused a different object under a stored SOP Instance UID (kept as blob %s)", blob_key[:12])
            return StoreResult(STATUS_CONFLICT, sop_uid, sop_class, study_uid,
                               comment="a different object is already stored under this SOP Instance UID")
        if self.on_stored:
            self.on_stored(study_uid)
        return StoreResult(STATUS_SUCCESS, sop_uid, sop_class, study_uid)

    def fill_metadata(self, study_uid: str) -> int:
        """Compute the DICOM JSON header of the study's instances indexed without it."""
        with self.engine.connect() as conn:
            todo = conn.execute(select(dicom_instances.c.sop_uid, dicom_instances.c.blob_key).where(
                dicom_instances.c.study_uid == study_uid, dicom_instances.c.meta.is_(None))).all()
        from pydicom import dcmread

        filled = []
        for sop_uid, key in todo:
            try:
                path = self.blobs.local_path(key)
                src = path if path is not None else BytesIO(self.blobs.read(key))
                ds = dcmread(src, stop_before_pixels=True, defer_size=_BULK_THRESHOLD * 64)
                meta_json = orjson.dumps(header_json(ds, _BULK_THRESHOLD, _bulk_uri)).decode()
            except Exception:
                meta_json = "{}"  # a header pydicom cannot express as JSON (a malformed value)
            filled.append({"u": sop_uid, "m": meta_json})
            if len(filled) >= _FILL_BATCH:
                self._write_metadata(filled)
                filled = []
        if filled:
            self._write_metadata(filled)
        return len(todo)

    def _write_metadata(self, filled: list[dict]) -> None:
        """One write transaction per batch of headers, not one per instance (each held the SQLite
        write lock and committed on its own while C-STOREs wait for the same lock)."""
        stmt = (update(dicom_instances).where(dicom_instances.c.sop_uid == bindparam("u"))
                .values(meta=bindparam("m", type_=dicom_instances.c.meta.type)))
        with write_tx(self.engine) as conn:
            conn.execute(stmt, filled)

    def _refuse(self, path: Path, reason: str, sop_uid: str, status: int, comment: str, source_ae: str, *,
                blob_key: str | None = None, data_hash: str | None = None, study_uid: str = "",
                sop_class: str = "") -> StoreResult:
        """Keep the raw object (never served) and record why it was refused."""
        if blob_key is None:
            blob_key, data_hash, _ = sha256_file(path)
        try:
            self.blobs.put_file(path, blob_key)
            with write_tx(self.engine) as conn:
                conn.execute(dicom_conflicts.insert().values(
                    reason=reason, sop_uid=sop_uid, blob_key=blob_key, data_hash=data_hash,
                    source_ae=source_ae[:16], received=now_us()))
        except Exception:
            log.exception("could not keep a refused object")
        return StoreResult(status, sop_uid, sop_class, study_uid, comment=comment)
