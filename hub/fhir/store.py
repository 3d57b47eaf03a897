"""The FHIR resource store: versions, history and search indexes on one relational schema.

Every write goes through :meth:`FhirStore.write`, which takes a list of prepared versions and
writes them with one statement per table (executemany) — a single create and a 500-entry
transaction bundle take the same path. Callers own the transaction (``hub.storage.db.write_tx``),
so a bundle or an HL7 message is applied atomically.
"""

from __future__ import annotations

import os
import time
import uuid
from functools import lru_cache
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import orjson
from sqlalchemy import Connection, and_, func, or_, select, union_all

from hub.errors import Conflict, Gone, NotFound, PreconditionFailed
from hub.fhir.model import Stored, instant, now_us
from hub.fhir.search.extract import IndexRows, extract_index, stored_rows
from hub.storage.schema import INDEX_TABLES, RES_PK_SEQUENCE, resource_history, resources

_R = resources.c
_H = resource_history.c


def new_id() -> str:
    """A server-assigned id: a time-ordered UUID (the UUIDv7 layout of RFC 9562 §5.7: 48 bits
    of Unix milliseconds, then 74 random bits). Ids created together sort together, so the
    (type, id) B-trees of a bundle's resources and index rows take their new keys on a few
    adjacent pages instead of one random page each: with random (v4) ids a 13-resource bundle
    dirtied about a third more database pages, all of which every commit writes to the WAL."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms & 0xFFFF_FFFF_FFFF) << 80) | (0x7 << 76) | (((rand >> 62) & 0xFFF) << 64) \
        | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


@dataclass(slots=True)
class Version:
    """A version about to be written."""

    res_type: str
    res_id: str
    version: int
    last_updated: int
    method: str  # POST | PUT | PATCH | DELETE
    resource: dict | None  # None for a delete
    is_new: bool  # no row yet in ``resources`` for this id
    content: str | None = field(default=None)
    # search-index rows computed ahead (outside the write transaction) from ``resource``; a
    # before_write hook that changes the resource says so with :meth:`amended`
    index: IndexRows | None = field(default=None)
    # the resource's integer key: the current version's for an update (its index rows are
    # deleted by it), given by :meth:`FhirStore.write` to a new resource
    res_pk: int | None = field(default=None)

    def amended(self) -> None:
        """``resource`` was changed after it was prepared (by a ``before_write`` hook): its
        serialization and index rows are made again from it."""
        self.content = None
        self.index = None

    def stored(self) -> Stored:
        return Stored(self.res_type, self.res_id, self.version, self.last_updated,
                      self.resource is None, self.content, self.method, self.res_pk)


def stamp(res_type: str, res_id: str, resource: dict, version: int, last_updated: int) -> dict:
    """Set ``id`` and ``meta.versionId``/``meta.lastUpdated``, keeping the rest of meta."""
    out = {"resourceType": res_type, "id": res_id}
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(last_updated)
    out["meta"] = meta
    for k, v in resource.items():
        if k not in ("resourceType", "id", "meta"):
            out[k] = v
    return out


class FhirStore:
    """Reads and writes resource versions; keeps the search indexes in step.

    Components that must see every write, whatever the entry path (REST, bundles, HL7 ingest,
    DICOM), hook in here: ``before_write`` hooks may amend ``Version.resource`` (e.g. the
    recognition mark in ``meta.tag``) before it is serialized, and then call
    ``Version.amended()`` on it (its index rows may have been computed ahead); ``after_write`` hooks run in the
    same transaction once the versions are stored (e.g. the master patient index matching a
    Patient). Both receive ``(conn, versions)`` and may raise a ``HubError`` to abort the write.
    A ``before_write`` hook may return versions it derives from the write (the master patient
    index's golden Patients): they are written in the same statements, passed to the
    ``after_write`` hooks, not to the other ``before_write`` hooks, and not returned.
    """

    def __init__(self) -> None:
        self.before_write: list[Callable[[Connection, Sequence[Version]], Iterable[Version] | None]] = []
        self.after_write: list[Callable[[Connection, Sequence[Version]], None]] = []

    # ------------------------------------------------------------------ reads
    def read(self, conn: Connection, res_type: str, res_id: str, *, for_update: bool = False) -> Stored | None:
        """The current version of one resource (deleted or not), or None.

        Read by id is the most frequent statement of all, so it goes straight to the DBAPI
        cursor with a fixed SQL text (psycopg prepares it server-side after a few uses): through
        SQLAlchemy's execution path it cost several times the lookup itself."""
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(_read_sql(conn.dialect.name, for_update), (res_type, res_id))
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        return Stored(res_type, res_id, row[0], row[1], bool(row[2]), row[3], res_pk=row[4])

    @staticmethod  # no state of the store: the ingest's stale guard, a function without one, reads with it
    def read_versions(conn: Connection, keys: Iterable[tuple[str, str]], *,
                      for_update: bool = False, with_content: bool = False) -> dict[tuple[str, str], Stored | None]:
        """:meth:`read` for many (type, id) pairs in one statement per 500: each key maps to its
        current version (deleted or not) or None. Versions only unless ``with_content``: then
        ``content`` is read too, as JSON text on both engines."""
        keys = list(dict.fromkeys(keys))
        out: dict[tuple[str, str], Stored | None] = dict.fromkeys(keys)
        cursor = conn.connection.driver_connection.cursor()
        try:
            for i in range(0, len(keys), 500):
                by_type: dict[str, list[str]] = {}
                for t, rid in keys[i:i + 500]:
                    by_type.setdefault(t, []).append(rid)
                sql, params = _read_versions_sql(conn.dialect.name, for_update, by_type, with_content)
                cursor.execute(sql, params)
                for t, rid, version, last_updated, deleted, res_pk, *content in cursor.fetchall():
                    out[(t, rid)] = Stored(t, rid, version, last_updated, bool(deleted),
                                           content[0] if content else None, res_pk=res_pk)
        finally:
            cursor.close()
        return out

    def read_current(self, conn: Connection, res_type: str, res_id: str) -> Stored:
        """http.html#read: 404 if unknown, 410 if deleted."""
        s = self.read(conn, res_type, res_id)
        if s is None:
            raise NotFound(f"{res_type}/{res_id} is not known")
        if s.deleted:
            raise Gone(f"{res_type}/{res_id} was deleted (version {s.version})")
        return s

    def read_many(self, conn: Connection, keys: Iterable[tuple[str, str]]) -> list[Stored]:
        """Current, non-deleted versions of the given (type, id) pairs; unknown ones are left out."""
        keys = list(dict.fromkeys(keys))
        out: list[Stored] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            by_type: dict[str, list[str]] = {}
            for t, rid in chunk:
                by_type.setdefault(t, []).append(rid)
            conds = [and_(_R.res_type == t, _R.res_id.in_(ids)) for t, ids in by_type.items()]
            q = select(_R.res_type, _R.res_id, _R.version, _R.last_updated, _R.content, _R.res_pk).where(
                or_(*conds), _R.deleted.is_(False))
            out.extend(Stored(r.res_type, r.res_id, r.version, r.last_updated, False, r.content, res_pk=r.res_pk)
                       for r in conn.execute(q))
        return out

    def vread(self, conn: Connection, res_type: str, res_id: str, version: int) -> Stored:
        """http.html#vread; a deleted version answers 410. The current version is in
        ``resources``, the earlier ones in ``resource_history``."""
        row = None
        for t in (_R, _H):
            row = conn.execute(
                select(t.last_updated, t.deleted, t.content, t.method).where(
                    t.res_type == res_type, t.res_id == res_id, t.version == version)
            ).first()
            if row is not None:
                break
        if row is None:
            raise NotFound(f"{res_type}/{res_id} has no version {version}")
        s = Stored(res_type, res_id, version, row.last_updated, row.deleted, row.content, row.method)
        if s.deleted:
            raise Gone(f"version {version} of {res_type}/{res_id} is a deletion")
        return s

    def history(self, conn: Connection, *, res_type: str | None = None, res_id: str | None = None,
                since: int | None = None, at: int | None = None, count: int = 50, offset: int = 0,
                with_total: bool = True) -> tuple[list[Stored], int | None]:
        """http.html#history: newest first; ``since`` and ``at`` bound last_updated. The versions
        are the current ones (``resources``) and the earlier ones (``resource_history``): each
        side is read in last_updated order by its own index and the two merged."""
        def conds(t) -> list:
            out = []
            if res_type:
                out.append(t.res_type == res_type)
            if res_id:
                out.append(t.res_id == res_id)
            if since is not None:
                out.append(t.last_updated >= since)
            if at is not None:
                out.append(t.last_updated <= at)
            return out

        both = union_all(*[select(t.res_type, t.res_id, t.version, t.last_updated, t.deleted, t.content, t.method)
                           .where(*conds(t)) for t in (_R, _H)]).subquery()
        q = (select(both).order_by(both.c.last_updated.desc(), both.c.res_type, both.c.res_id,
                                   both.c.version.desc())
             .limit(count).offset(offset))
        rows = [Stored(r.res_type, r.res_id, r.version, r.last_updated, r.deleted, r.content, r.method)
                for r in conn.execute(q)]
        total = None
        if with_total:
            total = sum(conn.execute(select(func.count()).select_from(table).where(*conds(table.c))).scalar_one()
                        for table in (resources, resource_history))
        return rows, total

    # ------------------------------------------------------------------ preparing versions
    def prepare_create(self, res_type: str, resource: dict, res_id: str | None = None,
                       method: str = "POST", ts: int | None = None) -> Version:
        rid = res_id or new_id()
        ts = ts or now_us()
        return Version(res_type, rid, 1, ts, method, stamp(res_type, rid, resource, 1, ts), True)

    def prepare_update(self, conn: Connection, res_type: str, res_id: str, resource: dict, *,
                       if_match: int | None = None, method: str = "PUT", ts: int | None = None,
                       current: Stored | None | bool = False) -> Version:
        """http.html#update: a new version, or version 1 when the id is new (update as create).

        ``if_match`` is the version the client believes current (``If-Match: W/"n"``): 412 when
        it is not (http.html#concurrency)."""
        cur = self.read(conn, res_type, res_id, for_update=True) if current is False else current
        ts = ts or now_us()
        if cur is None:
            if if_match is not None:
                raise PreconditionFailed(f"{res_type}/{res_id} does not exist; If-Match cannot hold")
            return Version(res_type, res_id, 1, ts, method, stamp(res_type, res_id, resource, 1, ts), True)
        if if_match is not None and if_match != cur.version:
            raise PreconditionFailed(
                f"{res_type}/{res_id} is at version {cur.version}, not {if_match} (If-Match)")
        ts = max(ts, cur.last_updated + 1)
        v = cur.version + 1
        return Version(res_type, res_id, v, ts, method, stamp(res_type, res_id, resource, v, ts), False,
                       res_pk=cur.res_pk)

    def prepare_delete(self, conn: Connection, res_type: str, res_id: str, *, ts: int | None = None,
                       if_match: int | None = None) -> Version | None:
        """http.html#delete: a deletion version; None when there is nothing to delete."""
        cur = self.read(conn, res_type, res_id, for_update=True)
        if cur is None or cur.deleted:
            return None
        if if_match is not None and if_match != cur.version:
            raise PreconditionFailed(f"{res_type}/{res_id} is at version {cur.version}, not {if_match}")
        ts = max(ts or now_us(), cur.last_updated + 1)
        return Version(res_type, res_id, cur.version + 1, ts, "DELETE", None, False, res_pk=cur.res_pk)

    # ------------------------------------------------------------------ writing
    def write(self, conn: Connection, versions: Sequence[Version]) -> list[Stored]:
        """Write prepared versions and their index rows, a few statements for the whole list."""
        if not versions:
            return []
        requested = versions
        derived: list[Version] = []
        for hook in self.before_write:
            derived.extend(hook(conn, requested) or ())
        if derived:
            versions = [*requested, *derived]
        seen: set[tuple[str, str]] = set()
        for v in versions:
            key = (v.res_type, v.res_id)
            if key in seen:
                raise Conflict(f"{v.res_type}/{v.res_id} is written twice in one transaction")
            seen.add(key)
            if v.resource is not None and v.content is None:
                v.content = orjson.dumps(v.resource).decode()
        dialect = conn.dialect.name
        unkeyed = [v for v in versions if not v.is_new and v.res_pk is None]
        if unkeyed:  # prepared from a Stored read without its key
            found = self.read_versions(conn, [(v.res_type, v.res_id) for v in unkeyed])
            for v in unkeyed:
                if (cur := found[(v.res_type, v.res_id)]) is not None:
                    v.res_pk = cur.res_pk
        cursor = conn.connection.driver_connection.cursor()
        try:
            new = [v for v in versions if v.is_new]
            if new:
                for v, pk in zip(new, _new_keys(cursor, dialect, len(new))):
                    v.res_pk = pk
            rows = [(v.res_type, v.res_id, v.version, v.last_updated, v.resource is None, v.content, v.method,
                     v.res_pk) for v in versions]
            old_rows = [r[2:7] + r[:2] for r, v in zip(rows, versions) if not v.is_new]
            stale = [(v.res_pk,) for v in versions if not v.is_new]
            try:
                # the versions being replaced move to the history first (a create writes only
                # its ``resources`` row: the row in ``resource_history`` it used to write as well
                # cost each new resource a leaf of that table's random-keyed primary key)
                # Each one must still be the version the new one follows: a write prepared from
                # a read another transaction has overtaken since would otherwise store the same
                # version number twice (the history's primary key used to refuse it).
                if stale:
                    cursor.executemany(_archive_sql(dialect), [(v.res_type, v.res_id, v.version - 1, v.res_pk)
                                                               for v in versions if not v.is_new])
                    if cursor.rowcount != len(stale):
                        raise Conflict("a concurrent transaction changed the same resource; retry")
                # versions as plain tuples through the DBAPI (like the index rows below): a new
                # resource's row is inserted, an existing one's updated in place (it is there,
                # at the version archived just above)
                new_rows = [r for r, v in zip(rows, versions) if v.is_new]
                if new_rows:
                    cursor.executemany(_version_insert_sql(dialect), new_rows)
                if old_rows:
                    cursor.executemany(_version_update_sql(dialect), old_rows)
                    if cursor.rowcount != len(old_rows):
                        raise Conflict("a concurrent transaction changed the same resource; retry")
            except Exception as e:  # unique violation: a concurrent writer won the race
                if _is_unique_violation(e):
                    raise Conflict("a concurrent transaction changed the same resource; retry") from None
                raise
            if stale:
                for sql in _delete_sql(dialect):
                    cursor.executemany(sql, stale)
            batches: dict[str, list[tuple]] = {}
            for v in versions:
                if v.resource is None:
                    continue
                idx = stored_rows(v.res_type, v.index if v.index is not None else extract_index(v.resource))
                key = (v.res_type, v.res_id, v.res_pk)
                for kind in INDEX_TABLES:
                    rows_ = getattr(idx, kind)
                    if rows_:
                        batches.setdefault(kind, []).extend([key + r for r in rows_])
            for kind, rows_ in batches.items():
                cursor.executemany(_insert_sql(dialect, kind), rows_)
        finally:
            cursor.close()
        for hook in self.after_write:
            hook(conn, versions)
        return [v.stored() for v in requested]


@lru_cache(maxsize=None)
def _read_sql(dialect: str, for_update: bool) -> str:
    if dialect == "sqlite":  # one statement is one snapshot; the write lock is the transaction's
        return "SELECT version, last_updated, deleted, content, res_pk FROM resources WHERE res_type = ? AND res_id = ?"
    return ("SELECT version, last_updated, deleted, CAST(content AS TEXT), res_pk FROM resources "
            "WHERE res_type = %s AND res_id = %s" + (" FOR UPDATE" if for_update else ""))


def _read_versions_sql(dialect: str, for_update: bool, by_type: dict[str, list[str]],
                       with_content: bool = False) -> tuple[str, list]:
    mark = "?" if dialect == "sqlite" else "%s"
    content = "" if not with_content else ", content" if dialect == "sqlite" else ", CAST(content AS TEXT)"
    conds, params = [], []
    for t, ids in by_type.items():
        conds.append(f"(res_type = {mark} AND res_id IN ({', '.join([mark] * len(ids))}))")
        params += [t, *ids]
    sql = (f"SELECT res_type, res_id, version, last_updated, deleted, res_pk{content} FROM resources"
           f" WHERE {' OR '.join(conds)}")
    if for_update and dialect != "sqlite":  # SQLite: the transaction holds the write lock
        sql += " FOR UPDATE"
    return sql, params


def _new_keys(cursor, dialect: str, n: int) -> Sequence[int]:
    """``n`` unused ``res_pk`` values, increasing. PostgreSQL: from the sequence, in one round
    trip (concurrent writers each get their own). SQLite: after the largest stored, which no
    other writer can take meanwhile (writers hold the write lock from BEGIN IMMEDIATE on; one
    that did not would fail to write on a snapshot another writer has overtaken)."""
    if dialect == "sqlite":
        cursor.execute("SELECT max(res_pk) FROM resources")
        top = cursor.fetchone()[0] or 0
        return range(top + 1, top + 1 + n)
    cursor.execute(f"SELECT nextval('{RES_PK_SEQUENCE.name}') FROM generate_series(1, %s)", (n,))
    return [pk for (pk,) in cursor.fetchall()]


_RESOURCE_COLS = ("res_type", "res_id", "version", "last_updated", "deleted", "content", "method", "res_pk")
#: the columns a version keeps in ``resource_history`` (the key stays with the resource)
_HISTORY_COLS = _RESOURCE_COLS[:-1]


@lru_cache(maxsize=None)
def _version_insert_sql(dialect: str) -> str:
    """INSERT of a new resource's version into ``resources``, in the driver's parameter style;
    the document goes in as JSONB on PostgreSQL (hub.storage.types)."""
    if dialect == "sqlite":
        marks = ["?"] * len(_RESOURCE_COLS)
    else:
        marks = ["CAST(%s AS JSONB)" if c == "content" else "%s" for c in _RESOURCE_COLS]
    return f"INSERT INTO resources ({', '.join(_RESOURCE_COLS)}) VALUES ({', '.join(marks)})"


@lru_cache(maxsize=None)
def _version_update_sql(dialect: str) -> str:
    """UPDATE of an existing resource's row to its new version (parameters: the columns after
    the key, then the key), in the driver's parameter style. It replaced SQLAlchemy's upsert,
    whose execution path cost more than the statement (a golden Patient updated per message)."""
    mark = "?" if dialect == "sqlite" else "%s"
    sets = ", ".join(f"{c} = {'CAST(%s AS JSONB)' if c == 'content' and dialect != 'sqlite' else mark}"
                     for c in _RESOURCE_COLS[2:7])
    return f"UPDATE resources SET {sets} WHERE res_type = {mark} AND res_id = {mark}"


@lru_cache(maxsize=None)
def _archive_sql(dialect: str) -> str:
    """Copy of a resource's current version into ``resource_history``, before it is replaced;
    the key is checked too (an update prepared with another resource's key would move that
    one's index rows)."""
    mark = "?" if dialect == "sqlite" else "%s"
    cols = ", ".join(_HISTORY_COLS)
    return (f"INSERT INTO resource_history ({cols}) SELECT {cols} FROM resources "
            f"WHERE res_type = {mark} AND res_id = {mark} AND version = {mark} AND res_pk = {mark}")


@lru_cache(maxsize=None)
def _insert_sql(dialect: str, kind: str) -> str:
    """INSERT for one index table in the driver's parameter style. Index rows go straight to the
    DBAPI's executemany: they are plain tuples, and building SQLAlchemy parameter dicts for
    tens of thousands of rows a second costs more than the inserts themselves."""
    table, cols = INDEX_TABLES[kind]
    names = ("res_type", "res_id", "res_pk") + cols
    mark = "?" if dialect == "sqlite" else "%s"
    # the value strings come clipped to their columns (hub.fhir.search.extract): a substr() per
    # string column here cost every row 10-15 % more time inside the write transaction
    return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})"


@lru_cache(maxsize=None)
def _delete_sql(dialect: str) -> tuple[str, ...]:
    mark = "?" if dialect == "sqlite" else "%s"
    return tuple(f"DELETE FROM {t.name} WHERE res_pk = {mark}" for t, _ in INDEX_TABLES.values())


def _is_unique_violation(e: Exception) -> bool:
    text = str(getattr(e, "orig", e)).lower()
    return "unique" in text or "duplicate key" in text
