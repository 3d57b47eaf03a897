"""Versioned reference data in the database, with effective dates.

Each publication of one kind (catalogue, scopes, qualifications, codemaps) is a new version that
takes effect at ``effective_from``; older versions are kept, so a decision's evidence can cite
the versions it used and a later audit can rebuild them. The snapshot in force is cached and
rebuilt only when the set of versions in force changes (one small query per request).
"""

from __future__ import annotations

import threading
from time import monotonic
from datetime import date, datetime, time

import orjson
from sqlalchemy import Connection, func, select

from hub.errors import Conflict, NotFound
from hub.fhir.model import instant, now_us
from hub.recognition.reference import KINDS, Reference, ReferenceDataError
from hub.recognition.rules import CHINA_TIME
from hub.recognition.schema import rec_reference as R


def effective_us(value: str | None) -> int:
    """``2026-03-01`` (00:00 China time that day) or an ISO date-time → µs since epoch; None → now."""
    if not value:
        return now_us()
    try:
        if len(value) == 10:
            dt = datetime.combine(date.fromisoformat(value), time(0), CHINA_TIME)
        else:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=CHINA_TIME)
    except ValueError:
        raise ReferenceDataError(f"effective_from {value!r} is not a date or date-time") from None
    return int(dt.timestamp() * 1_000_000)


#: how long the snapshot in force "now" is reused before the versions are checked again
RECHECK_S = 1.0


class ReferenceStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[tuple, Reference] | None = None
        self._checked_at = 0.0

    def publish(self, conn: Connection, kind: str, rows: list, *, effective_from: int, source: str | None,
                loaded_by: str | None) -> int:
        """Store a new version of ``kind`` (rows already checked by ``reference.parse``)."""
        if kind not in KINDS:
            raise ReferenceDataError(f"unknown reference data kind {kind!r}")
        last = conn.execute(select(func.max(R.c.version)).where(R.c.kind == kind)).scalar()
        version = (last or 0) + 1
        try:
            conn.execute(R.insert().values(kind=kind, version=version, effective_from=effective_from,
                                           loaded_at=now_us(), loaded_by=loaded_by, source=source,
                                           rows=orjson.dumps(rows).decode()))
        except Exception as e:
            if "unique" in str(e).lower() or "duplicate" in str(e).lower():
                raise Conflict(f"another {kind} version was published at the same time; retry") from None
            raise
        return version

    def versions(self, conn: Connection, kind: str) -> list[dict]:
        rows = conn.execute(select(R.c.version, R.c.effective_from, R.c.loaded_at, R.c.loaded_by, R.c.source)
                            .where(R.c.kind == kind).order_by(R.c.version)).all()
        return [{**{str(k): getattr(r, k) for k in r._fields}, "effective": instant(r.effective_from)} for r in rows]

    def rows(self, conn: Connection, kind: str, version: int) -> list:
        raw = conn.execute(select(R.c.rows).where(R.c.kind == kind, R.c.version == version)).scalar()
        if raw is None:
            raise NotFound(f"{kind} has no version {version}")
        return orjson.loads(raw)

    def in_force(self, conn: Connection, at: int | None = None) -> dict[str, int]:
        """The version of each kind in force at ``at`` (default now): the highest effective one."""
        at = now_us() if at is None else at
        out: dict[str, int] = {}
        for kind, version in conn.execute(
                select(R.c.kind, func.max(R.c.version)).where(R.c.effective_from <= at).group_by(R.c.kind)):
            out[kind] = version
        return out

    def snapshot(self, conn: Connection, at: int | None = None) -> Reference:
        """The reference data in force at ``at`` (default now). For "now" the answer is reused
        for :data:`RECHECK_S` seconds: a version published by this process is seen at once
        (:meth:`invalidate`), one published by another hub process or coming into force at
        its date within that time."""
        if at is None:
            cached = self._cached
            if cached is not None and monotonic() - self._checked_at < RECHECK_S:
                return cached[1]
        versions = self.in_force(conn, at)
        key = tuple(sorted(versions.items()))
        cached = self._cached
        if cached is not None and cached[0] == key:
            ref = cached[1]
        else:
            ref = Reference.from_rows({k: self.rows(conn, k, v) for k, v in versions.items()}, versions)
        if at is None:
            with self._lock:
                self._cached, self._checked_at = (key, ref), monotonic()
        return ref

    def invalidate(self) -> None:
        """Forget the cached snapshot (after this process published a version)."""
        with self._lock:
            self._cached = None
