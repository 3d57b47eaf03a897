"""The stateful master patient index: every Patient written is matched and linked to a person.

The index hooks into the FHIR store (``FhirStore.before_write``/``after_write``), so a Patient
arriving by REST, bundle, HL7 ingest or DICOM is matched in the same transaction as its write:

1. its demographic snapshot is normalized (:func:`hub.mpi.from_fhir_patient`) and its blocking
   keys (:func:`hub.mpi.blocking_keys`) looked up in ``mpi_block`` — indexed equality lookups,
   so the cost does not grow with the size of the index;
2. each candidate is compared (:class:`hub.mpi.PatientMatcher`: deterministic rules, then the
   Fellegi–Sunter score, then the guards) and the best LINK decides the person; REVIEW results
   go to the review queue (``mpi_review``); otherwise the record starts a new person;
3. the person's golden record (a Patient with id ``mpi-…``) is rebuilt once per transaction.

``Patient.link`` both ways (patient.html#links, as IHE PMIR and common EMPIs do): each source
Patient carries ``{other: Patient/mpi-…, type: refer}`` — "this record is valid, but the main
source of information about the patient is the other one" — and the golden record carries
``{other: Patient/<source>, type: seealso}`` for each linked source record. The golden record
holds no source identifiers (so conditional creates by MRN never find two Patients); its own
identifier is ``{hub}/sid/mpi-person|<person id>``.

Decisions made by a person (review accepted or rejected, merge, unmerge, manual link) are kept
as ``source = manual`` links and ``mpi_nonmatch`` pairs; automatic matching never changes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import orjson
from sqlalchemy import Connection, delete, insert, or_, select, update

from hub.errors import Conflict, Forbidden
from hub.fhir.model import now_us
from hub.fhir.store import Version
from hub.mpi.blocking import blocking_keys
from hub.mpi.merge import record_nonmatch
from hub.mpi.normalize import Demographics, from_fhir_patient
from hub.mpi.scoring import MatchResult, Outcome, PatientMatcher
from hub.mpi.tables import mpi_block, mpi_record, mpi_review
from terminology.urls import DEFAULT_HUB_BASE, code_system

GOLDEN_PREFIX = "mpi-"
GOLDEN_TAG = {"system": code_system("mpi"), "code": "golden-record", "display": "MPI golden record"}
PERSON_SYSTEM = f"{DEFAULT_HUB_BASE}/sid/mpi-person"

#: the Patient elements matching reads; kept per record (``mpi_record.demo``)
SNAPSHOT_ELEMENTS = ("identifier", "name", "telecom", "gender", "birthDate", "address",
                     "multipleBirthBoolean", "multipleBirthInteger")

_R = mpi_record.c
_B = mpi_block.c
_V = mpi_review.c

# keys in Connection.info: persons whose golden record must be rebuilt at the end of the write,
# persons created in this transaction (no golden record stored yet), and "the index itself is
# writing golden records" (other writers may not)
_DIRTY = "mpi_dirty_persons"
_FRESH = "mpi_fresh_persons"
_BATCH = "mpi_pending_statements"
_WRITER = "mpi_golden_writer"

#: mpi_block.key holds at most this many characters (tables.py); longer keys are stored and
#: looked up by their beginning
KEY_MAX = 255


class RecordRow(NamedTuple):
    """One ``mpi_record`` row."""

    patient_id: str
    person_id: str
    state: str
    source: str
    rule: str
    score: float | None
    org: str | None
    demo: str
    updated: int


# The statements every Patient write runs go straight to the DBAPI cursor with fixed SQL texts,
# as FhirStore.read does: building, caching and compiling a SQLAlchemy statement cost several
# times the indexed lookup or insert itself (about 0.2 ms each, nine per new Patient).
@lru_cache(maxsize=None)
def _sql(dialect: str, text: str) -> str:
    """``text`` (``?`` placeholders) in the driver's parameter style."""
    return text if dialect == "sqlite" else text.replace("?", "%s")


def _query(conn: Connection, text: str, params: Sequence = ()) -> list[tuple]:
    _send(conn, conn.info.get(_BATCH))  # a read sees the statements queued before it
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(_sql(conn.dialect.name, text), tuple(params))
        return cursor.fetchall()
    finally:
        cursor.close()


def _execute(conn: Connection, text: str, params: Sequence = ()) -> None:
    _send(conn, [(text, tuple(params), False)], conn.info.get(_BATCH))


def _execute_many(conn: Connection, text: str, rows: list[tuple]) -> None:
    _send(conn, [(text, rows, True)], conn.info.get(_BATCH))


def _send(conn: Connection, statements: list | None, queue: list | None = None) -> None:
    """Run ``(text, params, many)`` statements, or add them to ``queue`` (see :func:`_batched`)."""
    if not statements:
        return
    if queue is not None:
        queue.extend(statements)
        return
    todo = statements[:]
    statements.clear()
    dbapi = conn.connection.driver_connection
    cursor = dbapi.cursor()
    try:
        if conn.dialect.name == "postgresql" and len(todo) > 1:
            with dbapi.pipeline():  # one round trip for all of them
                for text, params, many in todo:
                    (cursor.executemany if many else cursor.execute)(_sql("postgresql", text), params)
        else:
            for text, params, many in todo:
                (cursor.executemany if many else cursor.execute)(_sql(conn.dialect.name, text), params)
    finally:
        cursor.close()


@contextmanager
def _batched(conn: Connection) -> Iterator[None]:
    """The writes of one placement (person, record, blocking keys, link events) go to the
    database together when the block ends: on PostgreSQL in one pipeline, one round trip instead
    of one per statement. A read inside the block sends what is queued first."""
    if conn.info.get(_BATCH) is not None:
        yield
        return
    queue: list = []
    conn.info[_BATCH] = queue
    try:
        yield
    finally:
        conn.info.pop(_BATCH, None)
    _send(conn, queue)


_RECORD_COLS = ", ".join(RecordRow._fields)
_SELECT_RECORD = f"SELECT {_RECORD_COLS} FROM mpi_record WHERE patient_id = ?"
_INSERT_RECORD = (f"INSERT INTO mpi_record ({_RECORD_COLS}) VALUES ({', '.join('?' * len(RecordRow._fields))})")
_UPDATE_RECORD = ("UPDATE mpi_record SET person_id = ?, state = ?, source = ?, rule = ?, score = ?, org = ?, "
                  "demo = ?, updated = ? WHERE patient_id = ?")
_INSERT_BLOCK = "INSERT INTO mpi_block (key, patient_id) VALUES (?, ?)"
_INSERT_PERSON = "INSERT INTO mpi_person (person_id, created, updated) VALUES (?, ?, ?)"
_INSERT_EVENT = ("INSERT INTO mpi_link_event (ts, patient_id, person_id, action, source, actor, score, detail) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_PERSON_OF = "SELECT person_id FROM mpi_record WHERE patient_id = ? AND state = 'active'"
_MEMBERS = "SELECT patient_id FROM mpi_record WHERE person_id = ? AND state = 'active' ORDER BY patient_id"
_MEMBER_SNAPSHOTS = ("SELECT patient_id, demo FROM mpi_record WHERE person_id = ? AND state = 'active' "
                     "ORDER BY updated DESC, patient_id")
_TOUCH_PERSON = "UPDATE mpi_person SET updated = ? WHERE person_id = ?"


@lru_cache(maxsize=64)
def _candidates_sql(n_keys: int) -> str:
    # the records behind the first max_candidates key hits (mpi_block's primary key starts with
    # the key, so each key is an index range scan). A join with the derived table, not
    # IN (subquery with LIMIT): PostgreSQL would run that once per row.
    return ("SELECT r.patient_id, r.person_id, r.demo FROM "
            f"(SELECT DISTINCT patient_id FROM mpi_block WHERE key IN ({', '.join('?' * n_keys)}) LIMIT ?) h "
            "JOIN mpi_record r ON r.patient_id = h.patient_id WHERE r.state = 'active'")


def is_golden_id(pid: str) -> bool:
    return pid.startswith(GOLDEN_PREFIX)


def snapshot(patient: dict) -> dict:
    """The demographic elements of a Patient, plus ``meta.source`` (the organization)."""
    snap = {k: patient[k] for k in SNAPSHOT_ELEMENTS if k in patient}
    source = (patient.get("meta") or {}).get("source")
    if source:
        snap["meta"] = {"source": source}
    return snap


@dataclass
class MatchProfile:
    """How records are normalized, blocked and compared: the Chinese patient configuration by
    default; the FEBRL4 benchmark plugs in its own (bench/mpi/febrl_index.py)."""

    normalize: Callable[[dict], object]
    keys: Callable[[object], set[str]]
    compare: Callable[[object, object], MatchResult]

    @classmethod
    def chinese(cls, matcher: PatientMatcher) -> "MatchProfile":
        return cls(from_fhir_patient, blocking_keys, matcher.match)


@dataclass
class Candidate:
    patient_id: str
    person_id: str
    result: MatchResult


class MasterPatientIndex:
    def __init__(self, svc, profile: MatchProfile | None = None, *, max_candidates: int = 200,
                 max_reviews: int = 3, golden_records: bool = True):
        self.svc = svc
        self.store = svc.store
        self.profile = profile or MatchProfile.chinese(PatientMatcher())
        self.max_candidates = max_candidates
        self.max_reviews = max_reviews
        #: maintain golden Patient resources (off only in benchmarks that index bare records)
        self.golden_records = golden_records
        self.cache_size = 20_000
        self._cache: dict[str, object] = {}

    def install(self) -> None:
        """Hook into the FHIR store and the linked-patients seam of the FHIR service."""
        self.store.before_write.append(self.before_write)
        self.store.after_write.append(self.after_write)
        self.svc.linked_patients = self.linked_patients
        # work of the hook that needs no database, which a caller may do before its write
        # transaction (the HL7 ingest: hub.ingest.normalize.Normalizer.prepare)
        ahead = getattr(self.svc, "ahead_of_write", None)
        if ahead is None:
            ahead = self.svc.ahead_of_write = []
        ahead.append(self.ahead_of_write)

    def ahead_of_write(self, res_type: str, resource) -> bool:
        """Normalize a source Patient about to be written (the pinyin conversion of its names,
        about a fifth of what :meth:`before_write` costs a new Patient) into the bounded cache
        :meth:`before_write` reads, outside the write lock. Only a cache: a Patient the store
        then writes otherwise is normalized there. True when :meth:`before_write` will change
        the resource: a source Patient without a ``refer`` link to a golden record gets one
        (so index rows computed from it now would be made again)."""
        if res_type != "Patient" or not isinstance(resource, dict):
            return False
        if is_golden_id(str(resource.get("id") or "")) or _tagged_golden(resource) or resource.get("active") is False:
            return False
        snap = snapshot(resource)
        self._normalized(orjson.dumps(snap, option=orjson.OPT_SORT_KEYS).decode(), snap)
        links = resource.get("link")
        return not (isinstance(links, list) and any(
            isinstance(lk, dict) and lk.get("type") == "refer" and isinstance(lk.get("other"), dict)
            and str(lk["other"].get("reference") or "").startswith("Patient/" + GOLDEN_PREFIX) for lk in links))

    # ------------------------------------------------------------------ reads
    def record(self, conn: Connection, pid: str) -> RecordRow | None:
        rows = _query(conn, _SELECT_RECORD, (pid,))
        return RecordRow(*rows[0]) if rows else None

    def person_of(self, conn: Connection, pid: str) -> str | None:
        if is_golden_id(pid):
            return pid
        rows = _query(conn, _PERSON_OF, (pid,))
        return rows[0][0] if rows else None

    def members(self, conn: Connection, person_id: str) -> list[str]:
        return [r[0] for r in _query(conn, _MEMBERS, (person_id,))]

    def linked_patients(self, conn: Connection, pid: str) -> list[str]:
        """Every source Patient of the person ``pid`` belongs to (``pid`` first); for a golden
        record id, its person's source Patients. The hook ``Patient/$everything`` and linked
        searches use."""
        person = self.person_of(conn, pid)
        if person is None:
            return [pid]
        return list(dict.fromkeys([pid, *self.members(conn, person)]))

    def find_matches(self, conn: Connection, patient: dict, *, exclude: str | None = None) -> list[Candidate]:
        """Compare a Patient (FHIR JSON) with the indexed records sharing a blocking key; best
        first. Read-only: ``Patient/$match`` and the placement of new records use it."""
        demo = self.profile.normalize(snapshot(patient))
        return self._candidates(conn, demo, exclude)

    def _keys(self, demo) -> list[str]:
        """The blocking keys of a record as ``mpi_block`` holds them."""
        return sorted({k[:KEY_MAX] for k in self.profile.keys(demo)})

    def _candidates(self, conn: Connection, demo, exclude: str | None,
                    refused: Callable[[str, str], bool] | None = None, keys: list[str] | None = None) -> list[Candidate]:
        """The indexed records sharing a blocking key with ``demo``, compared, best first;
        ``refused(patient, person)`` leaves out records that may not be linked before any
        scoring work is spent on them."""
        keys = self._keys(demo) if keys is None else keys
        if not keys:
            return []
        rows = _query(conn, _candidates_sql(len(keys)), (*keys, self.max_candidates))
        compare, normalized = self.profile.compare, self._normalized
        out = [Candidate(pid, person, compare(demo, normalized(demo_json)))
               for pid, person, demo_json in rows
               if pid != exclude and (refused is None or not refused(pid, person))]
        out.sort(key=lambda c: (-_rank(c.result.outcome), -c.result.score, c.patient_id))
        return out

    def _normalized(self, demo_json: str, snap: dict | None = None):
        """A stored snapshot (``snap``: the same, parsed), normalized; recently seen ones come
        from a bounded cache (the pinyin conversion costs more than the database lookup). A
        record placed now is cached too: it is the candidate of the next record of that person."""
        cache = self._cache
        demo = cache.get(demo_json)
        if demo is None:
            demo = self.profile.normalize(orjson.loads(demo_json) if snap is None else snap)
            if len(cache) >= self.cache_size:
                # threads fill it together (preparing ingest threads, PostgreSQL writers): another
                # may change it between iter() and next(), or drop the same oldest entry first
                try:
                    cache.pop(next(iter(cache)), None)
                except (RuntimeError, StopIteration):
                    pass
            cache[demo_json] = demo
        return demo

    def nonmatches(self, conn: Connection, pid: str) -> set[str]:
        rows = _query(conn, "SELECT patient_a, patient_b FROM mpi_nonmatch WHERE patient_a = ? OR patient_b = ?",
                      (pid, pid))
        return {b if a == pid else a for a, b in rows}

    # ------------------------------------------------------------------ store hooks
    def before_write(self, conn: Connection, versions: Sequence[Version]) -> list[Version]:
        """Match the source Patients of a write; returns the golden records they changed, for
        the store to write in the same statements as the write itself."""
        for v in versions:
            if v.res_type != "Patient":
                continue
            if is_golden_id(v.res_id) or _tagged_golden(v.resource):
                if not conn.info.get(_WRITER):
                    raise Forbidden("golden records (Patient/mpi-…) are maintained by the master patient index; "
                                    "write the source Patient instead")
                continue
            if v.resource is None:
                self.retire(conn, v.res_id, "deleted")
            elif v.resource.get("active") is False and _link_target(v.resource, "replaced-by"):
                into = _link_target(v.resource, "replaced-by")
                self.retire(conn, v.res_id, "merged", into=into.rsplit("/", 1)[-1])
                if _set_refer_link(v.resource, None):
                    v.amended()
            else:
                # a Patient the store has never held has no index record either
                person = self.index(conn, v.res_id, v.resource, known_new=v.is_new)
                if _set_refer_link(v.resource, person):
                    v.amended()
        return self._changed_golden(conn)

    def after_write(self, conn: Connection, versions: Sequence[Version]) -> None:
        self.flush(conn)

    def flush(self, conn: Connection) -> None:
        """Rebuild the golden records changed in this transaction (store writes do it by
        themselves; manual decisions that wrote no Patient call it before committing)."""
        versions = self._changed_golden(conn)
        if not versions:
            return
        conn.info[_WRITER] = True
        try:
            self.store.write(conn, versions)
        finally:
            conn.info.pop(_WRITER, None)

    def _changed_golden(self, conn: Connection) -> list[Version]:
        dirty = conn.info.pop(_DIRTY, None)
        fresh = conn.info.pop(_FRESH, None)
        return self.golden_versions(conn, dirty, fresh=fresh or ()) if dirty else []

    # ------------------------------------------------------------------ placing a record
    def index(self, conn: Connection, pid: str, patient: dict, *, known_new: bool = False) -> str:
        """Match a source Patient and link it to a person (the one it is linked to already when
        nothing relevant changed or the link is manual); returns the person id. ``known_new``:
        the caller knows ``pid`` has no index record yet (its first version is being written)."""
        snap = snapshot(patient)
        demo_json = orjson.dumps(snap, option=orjson.OPT_SORT_KEYS).decode()
        row = None if known_new else self.record(conn, pid)
        if row is not None and row.state == "active" and row.demo == demo_json:
            return row.person_id
        demo = self._normalized(demo_json, snap)
        if row is not None and row.state == "active" and row.source == "manual":
            # a person decided where this record belongs: keep it, refresh what is matched on
            self._save(conn, pid, row.person_id, demo, demo_json, source="manual", rule=row.rule,
                       score=row.score, existing=True)
            self._dirty(conn, row.person_id)
            return row.person_id
        return self._place(conn, pid, demo, demo_json, row)

    def _place(self, conn: Connection, pid: str, demo, demo_json: str, row) -> str:
        # a record indexed for the first time has no decisions about it yet
        refused = self.nonmatches(conn, pid) if row is not None else set()
        refused_persons = {self.person_of(conn, p) for p in refused} - {None}
        keys = self._keys(demo)
        cands = self._candidates(conn, demo, pid, (lambda p, person: p in refused or person in refused_persons)
                                 if refused else None, keys)
        best = next((c for c in cands if c.result.outcome is Outcome.LINK), None)
        old_person = row.person_id if row is not None else None
        if best is not None:
            person, rule, score = best.person_id, best.result.rule or "score", best.result.score
            action = "link"
        else:
            alone = old_person is not None and set(self.members(conn, old_person)) <= {pid}
            person = old_person if alone else None
            rule, score, action = "new-person", None, "new-person"
        with _batched(conn):
            if person is None:
                person = self._new_person(conn)
            if row is not None and old_person == person and row.state == "active":
                action = "relink"
            self._save(conn, pid, person, demo, demo_json, source="auto", rule=rule, score=score,
                       existing=row is not None, keys=keys)
            self.event(conn, pid, person, action, "auto", score=score,
                       detail=best.result.explain() if best else None)
            if old_person and old_person != person:
                self.event(conn, pid, old_person, "unlink", "auto", detail="re-matched after a demographic change")
                self._dirty(conn, old_person)
        self._dirty(conn, person)
        if best is not None:
            self._bridge(conn, pid, person, cands)
        if row is not None:
            self._close_reviews(conn, pid, "obsolete")
        self._queue_reviews(conn, pid, person, cands)
        return person

    def _bridge(self, conn: Connection, pid: str, person: str, cands: list[Candidate]) -> None:
        """A record that links automatically to records of two persons makes them one (the
        transitive closure of automatic links). A person holding a manual link is left alone:
        a person decided what belongs there."""
        others = {c.person_id for c in cands if c.result.outcome is Outcome.LINK and c.person_id != person}
        for other in sorted(others):
            rows = conn.execute(select(_R.patient_id, _R.source).where(
                _R.person_id == other, _R.state == "active")).all()
            if not rows or any(r.source == "manual" for r in rows):
                continue
            conn.execute(update(mpi_record).where(_R.person_id == other, _R.state == "active").values(
                person_id=person, updated=now_us()))
            for r in rows:
                self.event(conn, r.patient_id, person, "link", "auto", detail=f"joined through Patient/{pid}")
                self.event(conn, r.patient_id, other, "unlink", "auto", detail=f"joined through Patient/{pid}")
                self._rewrite_refer(conn, r.patient_id, person)
            self._dirty(conn, other)

    def _save(self, conn: Connection, pid: str, person: str, demo, demo_json: str, *, source: str,
              rule: str, score: float | None, existing: bool, keys: list[str] | None = None) -> None:
        values = dict(person_id=person, state="active", source=source, rule=rule[:64], score=score,
                      org=_org(demo), demo=demo_json, updated=now_us())
        if existing:
            _execute(conn, _UPDATE_RECORD, (*values.values(), pid))
            _execute(conn, "DELETE FROM mpi_block WHERE patient_id = ?", (pid,))
        else:
            _execute(conn, _INSERT_RECORD, RecordRow(patient_id=pid, **values))
        keys = self._keys(demo) if keys is None else keys
        if keys:
            _execute_many(conn, _INSERT_BLOCK, [(k, pid) for k in keys])

    def _new_person(self, conn: Connection) -> str:
        person = GOLDEN_PREFIX + uuid.uuid4().hex
        ts = now_us()
        _execute(conn, _INSERT_PERSON, (person, ts, ts))
        conn.info.setdefault(_FRESH, set()).add(person)
        return person

    def _queue_reviews(self, conn: Connection, pid: str, person: str, cands: list[Candidate]) -> None:
        seen: set[str] = {person}
        queued = 0
        for c in cands:
            if c.result.outcome is not Outcome.REVIEW or c.person_id in seen or queued >= self.max_reviews:
                continue
            seen.add(c.person_id)
            open_ = conn.execute(select(_V.review_id).where(
                _V.status == "open",
                or_((_V.patient_id == pid) & (_V.candidate_id == c.patient_id),
                    (_V.patient_id == c.patient_id) & (_V.candidate_id == pid)))).first()
            if open_ is None:
                conn.execute(insert(mpi_review).values(
                    review_id=str(uuid.uuid4()), patient_id=pid, candidate_id=c.patient_id,
                    score=c.result.score, detail=c.result.explain(), status="open", version=1,
                    created=now_us()))
                queued += 1

    def _close_reviews(self, conn: Connection, pid: str, status: str) -> None:
        conn.execute(update(mpi_review).where(
            _V.status == "open", or_(_V.patient_id == pid, _V.candidate_id == pid)).values(
            status=status, decided=now_us(), version=_V.version + 1))

    def rematch(self, patient_ids: list[str] | None = None, *, batch: int = 200) -> tuple[int, int]:
        """Match automatically linked records again (e.g. after the thresholds changed), in
        batches of write transactions; manual links are left alone. Returns (records that
        changed person, records re-matched)."""
        from hub.storage.db import write_tx

        engine = self.svc.engine
        with engine.connect() as conn:
            q = select(_R.patient_id).where(_R.state == "active", _R.source == "auto").order_by(_R.patient_id)
            if patient_ids is not None:
                q = q.where(_R.patient_id.in_(patient_ids))
            ids = [r.patient_id for r in conn.execute(q)]
        moved = 0
        for i in range(0, len(ids), batch):
            with write_tx(engine) as conn:
                for pid in ids[i:i + batch]:
                    row = self.record(conn, pid)
                    if row is None or row.state != "active" or row.source != "auto":
                        continue
                    person = self._place(conn, pid, self.profile.normalize(orjson.loads(row.demo)), row.demo, row)
                    if person != row.person_id:
                        moved += 1
                        self._rewrite_refer(conn, pid, person)
                self.flush(conn)
        return moved, len(ids)

    # ------------------------------------------------------------------ manual decisions
    def link_manually(self, conn: Connection, pid: str, person: str, *, actor: str | None, why: str) -> None:
        """Put source Patient ``pid`` into ``person``'s golden record, as a manual link."""
        row = self.record(conn, pid)
        if row is None or row.state != "active":
            raise Conflict(f"Patient/{pid} is not an active record of the master patient index")
        old = row.person_id
        conn.execute(update(mpi_record).where(_R.patient_id == pid).values(
            person_id=person, source="manual", rule=why[:64], updated=now_us()))
        self.event(conn, pid, person, "link", "manual", actor=actor, detail=why)
        if old != person:
            self.event(conn, pid, old, "unlink", "manual", actor=actor, detail=why)
            self._dirty(conn, old)
        self._dirty(conn, person)
        self._rewrite_refer(conn, pid, person)

    def record_nonmatch(self, conn: Connection, a: str, b: str, *, actor: str | None) -> None:
        record_nonmatch(conn, a, b, actor=actor)

    def split(self, conn: Connection, pid: str, *, actor: str | None, why: str) -> str:
        """Take ``pid`` out of its person into a person of its own, as a manual decision."""
        person = self._new_person(conn)
        self.link_manually(conn, pid, person, actor=actor, why=why)
        return person

    def retire(self, conn: Connection, pid: str, state: str, *, into: str | None = None) -> None:
        """Take a deleted or merged-away Patient out of matching. A merge says the two Patients
        are one person: the merged record's person joins the survivor's."""
        row = self.record(conn, pid)
        if row is None or row.state == state:
            return
        person = row.person_id
        if into is not None:
            target = self.person_of(conn, into)
            if target is not None and target != person:
                for other in self.members(conn, person):
                    if other != pid:
                        conn.execute(update(mpi_record).where(_R.patient_id == other).values(
                            person_id=target, updated=now_us()))
                        self.event(conn, other, target, "link", "manual", detail=f"merge of Patient/{pid}")
                        self._rewrite_refer(conn, other, target)
                self._dirty(conn, target)
        conn.execute(update(mpi_record).where(_R.patient_id == pid).values(state=state, updated=now_us()))
        conn.execute(delete(mpi_block).where(_B.patient_id == pid))
        self.event(conn, pid, person, state, "manual" if into else "auto",
                   detail=f"replaced by Patient/{into}" if into else None)
        self._close_reviews(conn, pid, "obsolete")
        self._dirty(conn, person)

    def _rewrite_refer(self, conn: Connection, pid: str, person: str) -> None:
        """Point a stored source Patient's ``refer`` link at its (new) golden record."""
        cur = self.store.read(conn, "Patient", pid, for_update=True)
        if cur is None or cur.deleted:
            return
        res = cur.resource()
        if _link_target(res, "refer") == f"Patient/{person}":
            return
        _set_refer_link(res, person)
        v = self.store.prepare_update(conn, "Patient", pid, res, current=cur)
        # the index placed it already: write without re-matching
        conn.info[_WRITER] = True
        try:
            self.store.write(conn, [v])
        finally:
            conn.info.pop(_WRITER, None)

    def event(self, conn: Connection, pid: str, person: str | None, action: str, source: str, *,
              actor: str | None = None, score: float | None = None, detail: str | None = None) -> None:
        _execute(conn, _INSERT_EVENT, (now_us(), pid, person, action, source, actor, score, detail))

    # ------------------------------------------------------------------ golden records
    def _dirty(self, conn: Connection, person: str) -> None:
        if self.golden_records:
            conn.info.setdefault(_DIRTY, set()).add(person)

    def golden_versions(self, conn: Connection, persons: Iterable[str], *, fresh: Iterable[str] = ()) -> list[Version]:
        """The new versions of the golden records of ``persons``, rebuilt from their active
        source records (most recently updated first for single-valued elements); a golden record
        that would not change gets none. ``fresh``: persons created in this transaction, whose
        golden record is not stored yet."""
        fresh = set(fresh)
        versions = []
        for person in sorted(persons):
            rows = _query(conn, _MEMBER_SNAPSHOTS, (person,))
            cur = None if person in fresh else self.store.read(conn, "Patient", person, for_update=True)
            if not rows:
                if cur is not None and not cur.deleted:
                    v = self.store.prepare_delete(conn, "Patient", person)
                    if v is not None:
                        versions.append(v)
                continue
            golden = build_golden(person, [(pid, orjson.loads(demo)) for pid, demo in rows])
            if cur is not None and not cur.deleted and _same(cur.resource(), golden):
                continue
            versions.append(self.store.prepare_update(conn, "Patient", person, golden, current=cur))
            if person not in fresh:  # a person created now was stamped when it was created
                _execute(conn, _TOUCH_PERSON, (now_us(), person))
        return versions


def build_golden(person: str, members: list[tuple[str, dict]]) -> dict:
    """The golden Patient of a person from its members' snapshots (most recent first)."""
    golden: dict = {"resourceType": "Patient", "id": person,
                    "meta": {"tag": [GOLDEN_TAG]},
                    "identifier": [{"use": "official", "system": PERSON_SYSTEM, "value": person}],
                    "active": True}
    names: list = []
    for _, snap in members:
        for n in snap.get("name") or []:
            if n not in names:
                names.append(n)
    if names:
        golden["name"] = names
    telecom: list = []
    for _, snap in members:
        for t in snap.get("telecom") or []:
            if t not in telecom:
                telecom.append(t)
    if telecom:
        golden["telecom"] = telecom
    for element in ("gender", "birthDate", "address", "multipleBirthBoolean", "multipleBirthInteger"):
        for _, snap in members:
            if snap.get(element) not in (None, [], ""):
                golden[element] = snap[element]
                break
    golden["link"] = [{"other": {"reference": f"Patient/{pid}"}, "type": "seealso"} for pid, _ in
                      sorted(members)]
    return golden


def _same(stored: dict, golden: dict) -> bool:
    strip = lambda r: {k: v for k, v in r.items() if k not in ("meta", "id", "resourceType")}  # noqa: E731
    return strip(stored) == strip(golden)


def _tagged_golden(resource: dict | None) -> bool:
    if not resource:
        return False
    return any(t.get("system") == GOLDEN_TAG["system"] and t.get("code") == GOLDEN_TAG["code"]
               for t in (resource.get("meta") or {}).get("tag") or [])


def _link_target(resource: dict, link_type: str) -> str | None:
    for link in resource.get("link") or []:
        if link.get("type") == link_type:
            return (link.get("other") or {}).get("reference")
    return None


def _set_refer_link(resource: dict, person: str | None) -> bool:
    """Replace the ``refer`` link to a golden record with one to ``person`` (or none); True
    when that changed the resource (a re-sent Patient usually carries the same link already)."""
    before = resource.get("link")
    links = [lk for lk in before or []
             if not (lk.get("type") == "refer"
                     and ((lk.get("other") or {}).get("reference") or "").startswith("Patient/" + GOLDEN_PREFIX))]
    if person is not None:
        links.append({"other": {"reference": f"Patient/{person}"}, "type": "refer"})
    if links:
        resource["link"] = links
    else:
        resource.pop("link", None)
    return resource.get("link") != before


def _org(demo) -> str | None:
    src = getattr(demo, "source", None)
    return src[:255] if isinstance(src, str) else None


def _rank(o: Outcome) -> int:
    return {Outcome.LINK: 2, Outcome.REVIEW: 1, Outcome.NEW: 0}[o]


__all__ = ["MasterPatientIndex", "MatchProfile", "Candidate", "GOLDEN_PREFIX", "GOLDEN_TAG", "PERSON_SYSTEM",
           "build_golden", "is_golden_id", "snapshot", "Demographics"]
