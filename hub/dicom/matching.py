"""Attribute matching of C-FIND identifiers and QIDO-RS query keys (PS3.4 C.2.2.2), as SQL.

Each matching key becomes one condition on an index column: universal matching (empty value,
C.2.2.2.3) adds none; a UID list (``a\\b``, C.2.2.2.2) is ``IN``; a range ``a-b``, ``-b`` or
``a-`` on DA/TM/DT (C.2.2.2.5) is a string range (the index keeps DICOM's fixed-width forms,
which sort like their values); ``*`` and ``?`` (C.2.2.2.4) become ``LIKE``; anything else is
single-value matching (C.2.2.2.1). Person names are compared upper-cased when configured.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, or_
from sqlalchemy.sql.elements import ColumnElement

from hub.errors import InvalidRequest


@dataclass(frozen=True)
class Key:
    """An attribute the index can match and return: its level, VR and column."""

    keyword: str
    tag: int
    vr: str
    level: str  # PATIENT | STUDY | SERIES | IMAGE
    column: str  # column name in the level's table
    norm_column: str | None = None  # upper-cased copy (PN)
    computed: bool = False  # an aggregate (counts, ModalitiesInStudy), not a plain column


def _k(keyword, tag, vr, level, column, norm=None, computed=False) -> Key:
    return Key(keyword, tag, vr, level, column, norm, computed)


#: matching and return keys per PS3.4 C.6.1.1.2–C.6.1.1.5 and PS3.18 Table 10.6.1-5
KEYS: dict[str, Key] = {k.keyword: k for k in (
    _k("PatientName", 0x00100010, "PN", "PATIENT", "patient_name", "patient_name_norm"),
    _k("PatientID", 0x00100020, "LO", "PATIENT", "patient_id"),
    _k("IssuerOfPatientID", 0x00100021, "LO", "PATIENT", "issuer"),
    _k("PatientBirthDate", 0x00100030, "DA", "PATIENT", "birth_date"),
    _k("PatientSex", 0x00100040, "CS", "PATIENT", "sex"),
    _k("NumberOfPatientRelatedStudies", 0x00201200, "IS", "PATIENT", "n_studies", computed=True),
    _k("NumberOfPatientRelatedSeries", 0x00201202, "IS", "PATIENT", "n_series", computed=True),
    _k("NumberOfPatientRelatedInstances", 0x00201204, "IS", "PATIENT", "n_instances", computed=True),
    _k("StudyInstanceUID", 0x0020000D, "UI", "STUDY", "study_uid"),
    _k("StudyDate", 0x00080020, "DA", "STUDY", "study_date"),
    _k("StudyTime", 0x00080030, "TM", "STUDY", "study_time"),
    _k("AccessionNumber", 0x00080050, "SH", "STUDY", "accession"),
    _k("StudyID", 0x00200010, "SH", "STUDY", "study_id"),
    _k("StudyDescription", 0x00081030, "LO", "STUDY", "description"),
    _k("ReferringPhysicianName", 0x00080090, "PN", "STUDY", "referring", "referring_norm"),
    _k("ModalitiesInStudy", 0x00080061, "CS", "STUDY", "modalities", computed=True),
    _k("NumberOfStudyRelatedSeries", 0x00201206, "IS", "STUDY", "n_series", computed=True),
    _k("NumberOfStudyRelatedInstances", 0x00201208, "IS", "STUDY", "n_instances", computed=True),
    _k("SeriesInstanceUID", 0x0020000E, "UI", "SERIES", "series_uid"),
    _k("Modality", 0x00080060, "CS", "SERIES", "modality"),
    _k("SeriesNumber", 0x00200011, "IS", "SERIES", "series_number"),
    _k("SeriesDescription", 0x0008103E, "LO", "SERIES", "description"),
    _k("BodyPartExamined", 0x00180015, "CS", "SERIES", "body_part"),
    _k("SeriesDate", 0x00080021, "DA", "SERIES", "series_date"),
    _k("SeriesTime", 0x00080031, "TM", "SERIES", "series_time"),
    _k("NumberOfSeriesRelatedInstances", 0x00201209, "IS", "SERIES", "n_instances", computed=True),
    _k("SOPInstanceUID", 0x00080018, "UI", "IMAGE", "sop_uid"),
    _k("SOPClassUID", 0x00080016, "UI", "IMAGE", "sop_class"),
    _k("InstanceNumber", 0x00200013, "IS", "IMAGE", "instance_number"),
    _k("Rows", 0x00280010, "US", "IMAGE", "rows"),
    _k("Columns", 0x00280011, "US", "IMAGE", "columns"),
    _k("NumberOfFrames", 0x00280008, "IS", "IMAGE", "frames"),
)}
BY_TAG: dict[int, Key] = {k.tag: k for k in KEYS.values()}
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def _like_pattern(value: str) -> str:
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def plan(key: Key, value: str, *, pn_case_insensitive: bool) -> tuple[tuple, tuple] | None:
    """How ``value`` matches ``key``: the condition's shape (which SQL it is) and the values bound
    into it; None for universal matching. Queries of one shape share one SQL statement."""
    value = value.strip()
    if value in ("", "*"):
        return None  # C.2.2.2.3 universal matching ("*" alone matches everything, too)
    norm = key.vr == "PN" and pn_case_insensitive and key.norm_column is not None
    if norm:
        value = value.upper()
    if key.vr == "UI" or (key.vr == "CS" and "\\" in value):
        values = [v.strip() for v in value.split("\\") if v.strip()]
        return (("in", norm), (values,)) if len(values) > 1 else (("eq", norm), (values[0],))
    if key.vr in ("DA", "TM", "DT") and "-" in value:
        low, _, high = value.partition("-")
        low, high = low.strip(), high.strip()
        if not low and not high:
            raise InvalidRequest(f"{key.keyword}: a range needs at least one end")
        # "-20230131" includes the whole day; for TM "-1200" includes 12:00:xx
        high = high + "\uffff" if high and key.vr != "DA" else high
        return ("range", norm, bool(low), bool(high)), tuple(v for v in (low, high) if v)
    if key.vr in ("IS", "US"):
        try:
            return ("eq", norm), (int(value),)
        except ValueError:
            raise InvalidRequest(f"{key.keyword}: {value!r} is not a number") from None
    if "*" in value or "?" in value:
        return ("like", norm), (_like_pattern(value),)
    if key.vr == "DA" and len(value) != 8:
        raise InvalidRequest(f"{key.keyword}: {value!r} is not a DICOM date (YYYYMMDD)")
    return ("eq", norm), (value,)


def arity(shape: tuple) -> int:
    """How many values a condition of ``shape`` binds (a range: one per end it has)."""
    return shape[2] + shape[3] if shape[0] == "range" else 1


def bind_names(key: Key, n: int) -> list[str]:
    """The names of a condition's bound values (keywords are not column names: no clash with the
    names SQLAlchemy gives the other values of a statement)."""
    return [f"{key.keyword}_{i}" for i in range(n)]


def build(key: Key, col, norm_col, shape: tuple, values: tuple | None = None) -> ColumnElement:
    """The condition of ``shape`` (from :func:`plan`) on ``col``, its values bound by name (given
    at execution when ``values`` is None)."""
    if shape[1]:
        col = norm_col
    names = bind_names(key, arity(shape))
    params = [bindparam(n, value=None if values is None else values[i], expanding=shape[0] == "in")
              for i, n in enumerate(names)]
    if shape[0] == "in":
        return col.in_(params[0])
    if shape[0] == "range":
        conds = [col != ""]
        if shape[2]:
            conds.append(col >= params[0])
        if shape[3]:
            conds.append(col <= params[-1])
        return and_(*conds)
    if shape[0] == "like":
        return col.like(params[0], escape="\\")
    return col == params[0]


def condition(key: Key, col, norm_col, value: str, *, pn_case_insensitive: bool) -> ColumnElement | None:
    """The SQL condition for matching ``value`` against ``col`` (None: universal matching)."""
    p = plan(key, value, pn_case_insensitive=pn_case_insensitive)
    return None if p is None else build(key, col, norm_col, *p)


def any_of(conds: list[ColumnElement]) -> ColumnElement:
    return or_(*conds)
