"""Reads and writes of the DICOM metadata index (hub.dicom.schema), one query per C-FIND/QIDO.

A query names a level and matching keys (keyword → value as in PS3.4 C.2.2.2); keys of the
levels above may be matched too (the relational queries of PS3.4 C.4.1.2.2, which QIDO-RS
allows). Aggregates (counts, ModalitiesInStudy) are computed for the page of results only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Connection, Integer, bindparam, exists, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from hub.dicom.matching import KEYS, LEVELS, Key, bind_names, build, condition, plan
from hub.dicom.schema import dicom_instances as I, dicom_series as SE, dicom_studies as ST
from hub.dicom.schema import dicom_study_pending as PENDING
from hub.errors import InvalidRequest

_TABLE = {"PATIENT": ST, "STUDY": ST, "SERIES": SE, "IMAGE": I}


@dataclass
class InstanceRow:
    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class: str
    transfer_syntax: str
    blob_key: str
    size: int
    frames: int | None
    instance_number: int | None


def _insert(conn: Connection, table):
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


@lru_cache(maxsize=None)
def _insert_new(dialect: str, table_name: str):
    """INSERT … ON CONFLICT DO NOTHING, built once per dialect and table (values bound at execute)."""
    if table_name == "dicom_study_pending":  # the latest time wins (imaging_study clears by it)
        ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(PENDING)
        return ins.on_conflict_do_update(index_elements=["study_uid"], set_={"touched": ins.excluded.touched})
    table, key = {"dicom_studies": (ST, "study_uid"), "dicom_series": (SE, "series_uid"),
                  "dicom_instances": (I, "sop_uid")}[table_name]
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    # RETURNING tells whether the row was new (rowcount is not reliable for INSERTs on every driver)
    ins = ins.on_conflict_do_nothing(index_elements=[key])
    return ins.returning(table.c[key]) if table is I else ins


def upsert_study_series(conn: Connection, study: dict, series: dict) -> None:
    """Insert the study and series rows if new; a later instance does not change them (it does
    not silently rename a patient: the first header received describes the study)."""
    _execute_new(conn, "dicom_studies", study)
    _execute_new(conn, "dicom_series", series)


def insert_instance(conn: Connection, row: dict) -> bool:
    """Insert an instance row; False when the SOP Instance UID is already indexed."""
    return _execute_new(conn, "dicom_instances", row) is not None


def mark_pending(conn: Connection, study_uid: str, touched: int) -> None:
    """Record that the study's ImagingStudy is to be written again (same transaction as the
    instance's row: a crash after the commit leaves the mark, which the next start finds)."""
    _execute_new(conn, "dicom_study_pending", {"study_uid": study_uid, "touched": touched})


#: (dialect, driver, paramstyle, table, columns) → what :func:`_driver_insert` compiled; keyed by
#: names, not by the dialect object, which would keep every engine's dialect alive
_DRIVER_PLANS: dict[tuple, tuple[str, tuple | None] | None] = {}


def _driver_insert(dialect, table_name: str, keys: tuple[str, ...]) -> tuple[str, tuple | None] | None:
    """:func:`_insert_new` compiled once for these columns: (SQL, the parameters' order for a
    positional paramstyle, else None), or None when a value needs SQLAlchemy's processing."""
    cache_key = (dialect.name, dialect.driver, dialect.paramstyle, table_name, keys)
    try:
        return _DRIVER_PLANS[cache_key]
    except KeyError:
        pass
    compiled = _insert_new(dialect.name, table_name).compile(dialect=dialect, column_keys=list(keys))
    names = compiled.positiontup if compiled.positional else list(compiled.binds)
    plan = None
    if set(names) == set(keys) and not any(compiled._bind_processors.get(n) for n in names):
        plan = compiled.string, tuple(compiled.positiontup) if compiled.positional else None
    _DRIVER_PLANS[cache_key] = plan
    return plan


def _execute_new(conn: Connection, table_name: str, row: dict):
    """Run :func:`_insert_new` for ``row`` (every column given) on the driver's connection: the
    statement is the one SQLAlchemy compiles, but SQLAlchemy's execution (context, result and
    events, about 0.08 ms of CPU per statement) was most of the C-STORE's index transaction.
    The RETURNING row (instances), or None."""
    plan = _driver_insert(conn.dialect, table_name, tuple(row))
    if plan is None:
        r = conn.execute(_insert_new(conn.dialect.name, table_name), row)
        return r.first() if r.returns_rows else None
    sql, order = plan
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql, tuple(row[k] for k in order) if order is not None else row)
        return cur.fetchone() if cur.description is not None else None
    finally:
        cur.close()


def find_instance(conn: Connection, sop_uid: str):
    return conn.execute(select(I.c.sop_uid, I.c.data_hash, I.c.blob_key, I.c.study_uid)
                        .where(I.c.sop_uid == sop_uid)).first()


def _col(key: Key):
    t = _TABLE[key.level] if key.level != "PATIENT" else ST
    return t.c[key.column], (t.c[key.norm_column] if key.norm_column else None)


def query(conn: Connection, level: str, keys: dict[str, str], *, pn_case_insensitive: bool = True,
          limit: int | None = None, offset: int = 0, fuzzy: bool = False) -> list[dict]:
    """Rows at ``level`` matching ``keys`` (keyword → match value); each row maps keyword → value
    for every key the index knows at that level and above."""
    if level not in LEVELS:
        raise InvalidRequest(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    depth = LEVELS.index(level)
    shapes, params, computed = [], {}, []
    for kw, value in keys.items():
        key = KEYS.get(kw)
        if key is None or value is None:
            continue
        if LEVELS.index(key.level) > depth and not (level == "PATIENT" and key.level == "STUDY"):
            continue  # a lower-level key in a higher-level query: returned empty, not matched
        if key.computed:
            computed.extend(_computed_condition(key, value))
            continue
        if fuzzy and key.vr == "PN" and value and "*" not in value and "?" not in value:
            value = value + "*"  # PS3.18 8.3.4.1: fuzzy matching, here as a prefix match per name
        p = plan(key, value, pn_case_insensitive=pn_case_insensitive)
        if p is not None:
            shapes.append((kw, p[0]))
            params.update(zip(bind_names(key, len(p[1])), p[1]))
    # the page is bound like the matched values: queries that differ only in it share a statement
    if limit is not None:
        params[_LIMIT] = limit
    if offset:
        params[_OFFSET] = offset
    args = (level, conn.dialect.name, tuple(shapes), limit is not None, bool(offset))
    q = _statement(*args, tuple(computed)) if computed else _cached_statement(*args)
    if level == "PATIENT":
        return [{"PatientID": r.patient_id, "IssuerOfPatientID": r.issuer, "PatientName": r.patient_name,
                 "PatientBirthDate": r.birth_date, "PatientSex": r.sex, "NumberOfPatientRelatedStudies": r.n_studies,
                 "NumberOfPatientRelatedSeries": r.n_series, "NumberOfPatientRelatedInstances": r.n_instances}
                for r in conn.execute(q, params)]
    rows = [dict(r._mapping) for r in conn.execute(q, params)]
    out = []
    for r in rows:
        if "study_description" in r:
            r["series_description"] = r.pop("description")
        kw = _to_keywords(r, level)
        if level == "STUDY":
            mods = r["modalities"]
            kw["ModalitiesInStudy"] = sorted({m for m in mods.split(_MODALITY_SEP) if m}) if mods else []
            kw["NumberOfStudyRelatedSeries"] = r["n_study_series"]
            kw["NumberOfStudyRelatedInstances"] = r["n_study_instances"]
        elif level == "SERIES":
            kw["NumberOfSeriesRelatedInstances"] = r["n_series_instances"]
        out.append(kw)
    return out


#: names of the page's bound values (not keywords, so no clash with :func:`bind_names`)
_LIMIT, _OFFSET = "page_limit", "page_offset"


def _statement(level: str, dialect: str, shapes: tuple, paged: bool, offset: bool, extra: tuple = ()):
    """The SELECT of a query at ``level`` whose keys match in ``shapes`` ((keyword, shape) pairs of
    :func:`hub.dicom.matching.plan`), values bound by name at execution; with a LIMIT when
    ``paged`` and an OFFSET when ``offset``, their values bound too (:data:`_LIMIT`, :data:`_OFFSET`)."""
    conds = [build(KEYS[kw], *_col(KEYS[kw]), shape) for kw, shape in shapes] + list(extra)
    if level == "PATIENT":
        q = _patients(conds)
    elif level == "STUDY":
        # the aggregates as correlated subqueries: one statement answers the query
        q = (select(ST, *_study_aggregate_columns(dialect)).where(*conds)
             .order_by(ST.c.study_date, ST.c.study_time, ST.c.study_uid))
    elif level == "SERIES":
        n_inst = (select(func.count()).select_from(I).where(I.c.series_uid == SE.c.series_uid)
                  .scalar_subquery().label("n_series_instances"))
        q = (select(SE, *[c for c in ST.c if c.name not in ("study_uid", "updated", "description")],
                    ST.c.description.label("study_description"), n_inst)
             .join(ST, ST.c.study_uid == SE.c.study_uid).where(*conds)
             .order_by(SE.c.study_uid, SE.c.series_number, SE.c.series_uid))
    else:
        q = (select(I.c.sop_uid, I.c.sop_class, I.c.instance_number, I.c.rows, I.c.columns, I.c.frames,
                    I.c.transfer_syntax, I.c.meta, SE, *[c for c in ST.c if c.name not in (
                        "study_uid", "updated", "description")],
                    ST.c.description.label("study_description"))
             .join(SE, SE.c.series_uid == I.c.series_uid).join(ST, ST.c.study_uid == I.c.study_uid)
             .where(*conds).order_by(I.c.series_uid, I.c.instance_number, I.c.sop_uid))
    if paged:
        q = q.limit(bindparam(_LIMIT, type_=Integer))
    if offset:
        q = q.offset(bindparam(_OFFSET, type_=Integer))
    return q


#: a query's statement built once per shape (SQLAlchemy built and keyed it anew for every C-FIND
#: or QIDO-RS query); it holds no matched values and no page, they are bound at execution (keyed
#: on the page's values, each QIDO-RS page of a query had a statement of its own, 512 pages filling
#: the cache)
_cached_statement = lru_cache(maxsize=512)(_statement)


_MODALITY_SEP = ","  # not a character of a CS value (PS3.5 6.2); SQLite's group_concat(DISTINCT) uses it


@lru_cache(maxsize=None)
def _study_aggregate_columns(dialect: str) -> tuple:
    """The aggregates' correlated subqueries, built once per dialect (the same for every query)."""
    mods = (func.string_agg(SE.c.modality.distinct(), literal(_MODALITY_SEP)) if dialect == "postgresql"
            else func.group_concat(SE.c.modality.distinct()))
    return (
        select(mods).where(SE.c.study_uid == ST.c.study_uid).scalar_subquery().label("modalities"),
        select(func.count()).select_from(SE).where(SE.c.study_uid == ST.c.study_uid)
        .scalar_subquery().label("n_study_series"),
        select(func.count()).select_from(I).where(I.c.study_uid == ST.c.study_uid)
        .scalar_subquery().label("n_study_instances"),
    )


def _computed_condition(key: Key, value: str) -> list:
    if not value:
        return []
    if key.keyword == "ModalitiesInStudy":
        mods = [m for m in value.split("\\") if m]
        return [exists().where(SE.c.study_uid == ST.c.study_uid, SE.c.modality.in_(mods))]
    raise InvalidRequest(f"{key.keyword} cannot be used as a matching key")


_STUDY_COLS = {"patient_name": "PatientName", "patient_id": "PatientID", "issuer": "IssuerOfPatientID",
               "birth_date": "PatientBirthDate", "sex": "PatientSex", "study_uid": "StudyInstanceUID",
               "study_date": "StudyDate", "study_time": "StudyTime", "accession": "AccessionNumber",
               "study_id": "StudyID", "referring": "ReferringPhysicianName"}
_SERIES_COLS = {"series_uid": "SeriesInstanceUID", "modality": "Modality", "series_number": "SeriesNumber",
                "body_part": "BodyPartExamined", "series_date": "SeriesDate", "series_time": "SeriesTime"}
_IMAGE_COLS = {"sop_uid": "SOPInstanceUID", "sop_class": "SOPClassUID", "instance_number": "InstanceNumber",
               "rows": "Rows", "columns": "Columns", "frames": "NumberOfFrames"}


def _to_keywords(r: dict, level: str) -> dict:
    out: dict = {}
    for col, kw in _STUDY_COLS.items():
        if col in r:
            out[kw] = r[col]
    if level == "STUDY":
        out["StudyDescription"] = r.get("description", "")
    else:
        out["StudyDescription"] = r.get("study_description", "")
    if level in ("SERIES", "IMAGE"):
        for col, kw in _SERIES_COLS.items():
            out[kw] = r.get(col)
        out["SeriesDescription"] = r.get("series_description", "")
        out["StudyInstanceUID"] = r.get("study_uid")
    if level == "IMAGE":
        for col, kw in _IMAGE_COLS.items():
            out[kw] = r.get(col)
        out["_meta"] = r.get("meta")
        out["_transfer_syntax"] = r.get("transfer_syntax")
    out["_org"] = r.get("org")
    return out


def _patients(conds: list):
    """One row per (PatientID, issuer) with a matching study; the series and instance counts
    are over all the patient's studies, as correlated subqueries (one statement)."""
    sub = select(ST.c.study_uid).where(*conds)
    other = ST.alias("patient_studies")
    same_patient = (other.c.patient_id == ST.c.patient_id, other.c.issuer == ST.c.issuer)
    n_series = (select(func.count()).select_from(SE.join(other, other.c.study_uid == SE.c.study_uid))
                .where(*same_patient).scalar_subquery())
    n_instances = (select(func.count()).select_from(I.join(other, other.c.study_uid == I.c.study_uid))
                   .where(*same_patient).scalar_subquery())
    return (select(ST.c.patient_id, ST.c.issuer, func.max(ST.c.patient_name).label("patient_name"),
                   func.max(ST.c.birth_date).label("birth_date"), func.max(ST.c.sex).label("sex"),
                   func.count().label("n_studies"), n_series.label("n_series"), n_instances.label("n_instances"))
            .where(ST.c.study_uid.in_(sub)).group_by(ST.c.patient_id, ST.c.issuer)
            .order_by(ST.c.patient_id, ST.c.issuer))


def instances(conn: Connection, *, level: str, keys: dict[str, str], pn_case_insensitive: bool = True
              ) -> list[InstanceRow]:
    """The instances a C-MOVE/C-GET or WADO-RS request designates (PS3.4 C.4.2.2.1, C.4.3.2.1)."""
    conds = []
    for kw, value in keys.items():
        key = KEYS.get(kw)
        if key is None or not value or key.computed:
            continue
        col, norm = _col(key)
        c = condition(key, col, norm, value, pn_case_insensitive=pn_case_insensitive)
        if c is not None:
            conds.append(c)
    if not conds:
        raise InvalidRequest(f"a {level}-level retrieve needs its unique keys")
    q = (select(I.c.sop_uid, I.c.series_uid, I.c.study_uid, I.c.sop_class, I.c.transfer_syntax, I.c.blob_key,
                I.c.size, I.c.frames, I.c.instance_number)
         .join(ST, ST.c.study_uid == I.c.study_uid).join(SE, SE.c.series_uid == I.c.series_uid).where(*conds)
         .order_by(I.c.study_uid, I.c.series_uid, I.c.instance_number, I.c.sop_uid))
    return [InstanceRow(*r) for r in conn.execute(q)]


def metadata_rows(conn: Connection, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> list[tuple[str, str, str]]:
    """(sop_uid, series_uid, DICOM JSON) of the instances of a study / series / one instance."""
    conds = [I.c.study_uid == study_uid]
    if series_uid:
        conds.append(I.c.series_uid == series_uid)
    if sop_uid:
        conds.append(I.c.sop_uid == sop_uid)
    q = select(I.c.sop_uid, I.c.series_uid, I.c.meta).where(*conds).order_by(
        I.c.series_uid, I.c.instance_number, I.c.sop_uid)
    return [tuple(r) for r in conn.execute(q)]


def delete(conn: Connection, *, study_uid: str, series_uid: str | None = None,
           sop_uid: str | None = None) -> list[str]:
    """Delete index rows; returns the blob keys no longer referenced."""
    conds = [I.c.study_uid == study_uid]
    if series_uid:
        conds.append(I.c.series_uid == series_uid)
    if sop_uid:
        conds.append(I.c.sop_uid == sop_uid)
    keys = [r.blob_key for r in conn.execute(select(I.c.blob_key).where(*conds))]
    conn.execute(I.delete().where(*conds))
    # series and study rows left without instances go too
    empty_series = select(SE.c.series_uid).where(
        SE.c.study_uid == study_uid, ~exists().where(I.c.series_uid == SE.c.series_uid))
    conn.execute(SE.delete().where(SE.c.series_uid.in_(empty_series.scalar_subquery())))
    if not conn.execute(select(I.c.sop_uid).where(I.c.study_uid == study_uid).limit(1)).first():
        conn.execute(ST.delete().where(ST.c.study_uid == study_uid))
    still = set()
    if keys:
        still = {r.blob_key for r in conn.execute(select(I.c.blob_key).where(I.c.blob_key.in_(keys)))}
    return [k for k in dict.fromkeys(keys) if k not in still]


def study_exists(conn: Connection, study_uid: str) -> bool:
    return conn.execute(select(ST.c.study_uid).where(ST.c.study_uid == study_uid)).first() is not None


def studies_of_accession(conn: Connection, accessions: Iterable[str]) -> list[tuple[str, str]]:
    acc = [a for a in accessions if a]
    if not acc:
        return []
    return [tuple(r) for r in conn.execute(select(ST.c.study_uid, ST.c.org).where(ST.c.accession.in_(acc)))]
