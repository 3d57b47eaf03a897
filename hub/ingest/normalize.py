"""One raw message → its outcome: parse (adapters), map (mappings), apply as one FHIR transaction.

HL7 v2.5 chapter 2, section 2.9 (acknowledgments): ``AA`` when the message was applied, ``AE``
when its content is in error (a required field missing, a value the mapping or FHIR validation
refuses), ``AR`` when it is rejected as a whole (unreadable MSH, unsupported message type or
event) or when the hub failed internally (table 0357 code 207). The ACK (MSA-2 = MSH-10, ERR with
the segment and field at fault) is built by :func:`adapters.hl7v2.build_ack`.

The transaction runs through :func:`hub.fhir.bundles.process_bundle` on the caller's connection,
inside a savepoint, so validation, indexes and store hooks apply exactly as on the REST path and
a failed message leaves no trace but its status. Before it runs, the **stale-event guard** drops
every entry whose stored current version carries a newer source event time (extension
:data:`SOURCE_EVENT_TIME`): an older event never overwrites newer data.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from adapters.hl7v2 import HL7ParseError, build_ack, parse_message, read_header, split_batch
from adapters.hl7v2.errors import (APPLICATION_INTERNAL_ERROR, DATA_TYPE_ERROR, DUPLICATE_KEY_IDENTIFIER,
                                   UNKNOWN_KEY_IDENTIFIER, UNSUPPORTED_EVENT_CODE, UNSUPPORTED_MESSAGE_TYPE,
                                   UNSUPPORTED_PROCESSING_ID, UNSUPPORTED_VERSION_ID)
from hub.errors import Conflict, HubError, MultipleMatches, NotFound
from hub.fhir.bundles import Checked, _walk_references, check_entries, process_bundle, resolve_put_references
from hub.fhir.model import Stored
from hub.fhir.store import FhirStore
from hub.fhir.search.extract import parse_date_range
from hub.security.access import Access
from hub.security.scopes import parse_scopes
from hub.security.tokens import Principal

log = logging.getLogger("yilian.ingest")

SOURCE_EVENT_TIME = "https://yilian.example.org/fhir/StructureDefinition/source-event-time"

#: parse errors that reject the message as a whole (AR) rather than its content (AE)
_REJECT_CODES = frozenset((UNSUPPORTED_MESSAGE_TYPE, UNSUPPORTED_EVENT_CODE, UNSUPPORTED_PROCESSING_ID,
                           UNSUPPORTED_VERSION_ID))

_INGEST_SCOPES = "system/*.cruds"


@dataclass
class RawMessage:
    """What normalization needs of a raw-log row."""

    id: int
    organization: str
    kind: str
    payload: bytes
    charset_hint: str | None = None
    sending_facility: str | None = None


@dataclass
class Outcome:
    status: str  # normalized | rejected | failed | unsupported | received (transient: retry later)
    ack_code: str | None = None
    ack: bytes | None = None
    permanent: bool = False
    error_code: int | None = None
    error_text: str | None = None
    error_segment: str | None = None
    error_field: str | None = None
    resources: list[str] = field(default_factory=list)
    skipped_stale: list[str] = field(default_factory=list)

    @property
    def transient(self) -> bool:
        return self.status == "received"


@dataclass
class Prepared:
    """A parsed and mapped message waiting for its transaction, or with its final outcome."""

    raw: RawMessage
    msg: object | None  # adapters.hl7v2.Message
    result: object | None  # mappings.MappingResult
    outcome: Outcome | None  # set when no transaction is needed (parse/mapping error, unsupported)
    parts: list["Prepared"] | None = None  # the messages of a batch
    ack_aa: bytes | None = None  # the ACK if the transaction applies, built before the write transaction
    # the bundle's entries validated and indexed before the write transaction
    checked: Checked | None = None
    # the stale guard's candidates (hold_back_candidates), read before the write transaction;
    # set only together with the references resolved ahead (resolve_put_references)
    candidates: dict | None = None
    puts: dict | None = None  # the bundle's put_entries, with the candidates
    # every entry a plain PUT Type/id, no reference left to the transaction, no merge: its writes
    # may go to the store together with other messages' (SharedWrite)
    shareable: bool = False


class Transient(Exception):
    """A database hiccup or a concurrent writer: the message is retried later."""


class NeedsSavepoint(Exception):
    """A message applied without a savepoint failed: its partial writes can only go with the
    whole transaction, which the caller rolls back and applies again, that message (whose raw-log
    id the caller sets as ``message_id``) in a savepoint."""

    message_id: int | None = None


class SharedWriteFailed(NeedsSavepoint):
    """The writes several messages shared (:class:`SharedWrite`) failed: which message they
    failed for is not known, so the caller applies each message in a savepoint of its own."""


class SharedWrite:
    """The store writes of consecutive messages of one batch, applied without a savepoint each,
    made in one :meth:`FhirStore.write` (a call's statements and hooks cost about as much as
    two resources' rows: an ORU^R01 writes 15). Only for messages whose transaction is plain
    PUTs by id (:attr:`Prepared.shareable`); the writes pending are made (:meth:`flush`) before
    a message that reads or writes a resource among them, before any other message, and before
    the batch's statuses. A message's transaction stays atomic: they all commit or roll back
    with the batch's database transaction."""

    def __init__(self, store) -> None:
        self.store = store
        self.versions: list = []
        self._keys: set[tuple[str, str]] = set()

    def admits(self, p: "Prepared") -> bool:
        """Whether ``p``'s writes may join those pending: it neither reads nor writes any of them
        (its stale guard and its updates must see the stored versions)."""
        return p.shareable and self._keys.isdisjoint(p.puts or ())

    def added(self, versions: list) -> None:
        self._keys.update((v.res_type, v.res_id) for v in versions)

    def flush(self, conn: Connection) -> None:
        if not self.versions:
            return
        versions, self.versions = self.versions, []
        self._keys.clear()
        try:
            self.store.write(conn, versions)
        except Exception as e:
            raise SharedWriteFailed from e


def installed_convert() -> Callable | None:
    """:func:`mappings.convert`, or None while the mappings package does not provide it."""
    try:
        from mappings import convert
    except ImportError:
        return None
    return convert


def _mapping_errors() -> tuple[type, type]:
    """(MappingError, UnsupportedMessage) once the mappings package provides them."""
    try:
        from mappings import MappingError, UnsupportedMessage
    except ImportError:  # mappings not installed yet: nothing can be raised as these
        class _Never(Exception):
            pass
        return _Never, _Never
    return MappingError, UnsupportedMessage


class Normalizer:
    """Turns raw messages into FHIR writes and outcomes; shared by request threads and workers.

    ``convert`` is :func:`mappings.convert` (replaceable, e.g. after a mapping fix is loaded);
    ``profile_for(organization, sending_facility)`` picks the per-facility mapping profile.
    """

    def __init__(self, svc, *, convert: Callable | None = None,
                 profile_for: Callable[[str, str | None], object] | None = None):
        self.svc = svc
        self.convert = convert or installed_convert()
        self.profile_for = profile_for or (lambda organization, facility: None)

    # ------------------------------------------------------------------ entry points
    def normalize(self, conn: Connection, raw: RawMessage) -> Outcome:
        """:meth:`prepare` then :meth:`apply`, for one message."""
        return self.apply(conn, self.prepare(raw))

    def prepare(self, raw: RawMessage) -> Prepared:
        """Parse and map, without the database (so it runs outside any write transaction).
        Never raises: a message's own problems become its final outcome. A batch (several
        messages in one item, with or without FHS/BHS) is prepared message by message."""
        if raw.kind != "hl7v2":
            return Prepared(raw, None, None, Outcome(
                "unsupported", error_text=f"{raw.kind} messages are stored; no adapter maps them yet"))
        if len(_MSH_AT_LINE_START.findall(raw.payload)) > 1:
            try:
                pieces = split_batch(raw.payload)
            except HL7ParseError:
                pieces = []  # a broken envelope: parse_message below reports it
            if len(pieces) > 1:
                return Prepared(raw, None, None, None, parts=[
                    self.prepare(RawMessage(raw.id, raw.organization, raw.kind, piece, raw.charset_hint,
                                            raw.sending_facility)) for piece in pieces])
        # the facility profile is per organization; its charset corrects a sender whose MSH-18 is
        # wrong or missing, unless the front-end processor was told the charset of this feed
        profile = self.profile_for(raw.organization, raw.sending_facility)
        charset = raw.charset_hint or getattr(profile, "charset", None)
        try:
            msg = parse_message(raw.payload, charset)
        except HL7ParseError as e:
            return Prepared(raw, None, None, self._rejected(e.header or read_header(raw.payload, charset), e))
        if self.convert is None:
            err = HL7ParseError(UNSUPPORTED_MESSAGE_TYPE, "no HL7 v2 mappings are installed in this hub", "MSH", 9)
            return Prepared(raw, msg, None, Outcome("unsupported", "AR", build_ack(msg, "AR", err), False, err.code,
                                                    err.message, "MSH", "9"))
        mapping_error, unsupported = _mapping_errors()
        try:
            result = self.convert(msg, organization=raw.organization, profile=profile)
        except unsupported as e:
            err = _as_parse_error(e, UNSUPPORTED_MESSAGE_TYPE)
            return Prepared(raw, msg, None, Outcome("unsupported", "AR", build_ack(msg, "AR", err), False, err.code,
                                                    err.message, err.segment, _str(err.field)))
        except mapping_error as e:
            return Prepared(raw, msg, None, self._rejected(msg, _as_parse_error(e, DATA_TYPE_ERROR)))
        except Exception as e:  # a bug in a mapping: kept as failed for reprocessing after the fix
            return Prepared(raw, msg, None, self._failed(msg, e))
        # the work on the bundle that needs no database, done here outside the write lock: the
        # references to the message's own entries resolved, the stale guard's candidates read,
        # the entries validated and indexed — but not the create-only ones the hub was seen to
        # hold already (the lab feed's Organization): the guard drops them, so checking them
        # would be in vain. Should one be gone by then, the transaction checks it itself.
        bundle = result.bundle
        pending = resolve_put_references(bundle)
        puts = put_entries(bundle)
        candidates = hold_back_candidates(bundle, puts=puts)
        known = [e for e in bundle.get("entry") or ()
                 if (e.get("request") or {}).get("ifNoneMatch") == "*" and _is_known(e["request"].get("url"))]
        to_check = bundle if not known else {**bundle, "entry": [e for e in bundle["entry"]
                                                                if not any(e is k for k in known)]}
        # the store hooks' part that needs no database; a hook answers True for a resource it
        # will change as it is written, whose index rows the store then makes again
        amended: set[int] = set()
        for hook in getattr(self.svc, "ahead_of_write", ()):
            for e in to_check["entry"]:
                rtype = str((e.get("request") or {}).get("url") or "").split("/")[0]
                if hook(rtype, e.get("resource")):
                    amended.add(id(e.get("resource")))
        checked = check_entries(to_check, pending=pending, unindexed=amended)
        entries = bundle.get("entry") or ()
        shareable = (not pending and not getattr(result, "merges", None) and len(puts) == len(entries)
                     and not any((e.get("request") or {}).get("ifMatch") or "?" in str(e["request"].get("url"))
                                 for e in entries))
        return Prepared(raw, msg, result, None, ack_aa=build_ack(msg, "AA"), checked=checked, candidates=candidates,
                        puts=puts, shareable=shareable)

    def apply(self, conn: Connection, p: Prepared, *, savepoint: bool = True,
              shared: SharedWrite | None = None) -> Outcome:
        """Write a prepared message's transaction on ``conn`` (in a savepoint) and build its ACK.
        Raises :class:`Transient` for database hiccups and concurrent writers (retry later).
        Without ``savepoint`` any error raises :class:`NeedsSavepoint` instead: the caller
        applies the message again inside a savepoint, in a new transaction. ``shared`` (without
        ``savepoint``): the store writes of the batch's messages so far, which this message's
        join if it can (the caller flushes them before the transaction ends)."""
        if p.outcome is not None:
            return p.outcome
        if p.parts is not None:
            if not savepoint:
                return batch_outcome([self.apply(conn, part, savepoint=False, shared=shared) for part in p.parts])
            with conn.begin_nested():  # a transient error in one message retries the whole batch
                return batch_outcome([self.apply(conn, part) for part in p.parts])
        msg, raw = p.msg, p.raw
        try:
            if savepoint:
                with conn.begin_nested():
                    resources, skipped = self.write(conn, p.result, raw, checked=p.checked,
                                                    candidates=p.candidates, puts=p.puts)
            else:
                if shared is not None and not shared.admits(p):
                    shared.flush(conn)  # then it joins the writes that follow, if it can
                joins = shared is not None and shared.admits(p)
                resources, skipped = self.write(conn, p.result, raw, checked=p.checked, candidates=p.candidates,
                                                puts=p.puts, shared=shared if joins else None)
        except SharedWriteFailed:
            raise
        except Exception as e:
            if not savepoint:
                raise NeedsSavepoint from e
            return self._outcome_of(msg, e)
        return Outcome("normalized", "AA", p.ack_aa or build_ack(msg, "AA"), resources=resources,
                       skipped_stale=skipped)

    def _outcome_of(self, msg, e: Exception) -> Outcome:
        """The outcome of a message whose transaction raised ``e`` (rolled back)."""
        if _transient(e):
            raise Transient(f"{type(e).__name__}: {e.diagnostics if isinstance(e, HubError) else e}") from e
        if isinstance(e, HubError):  # the transaction the mapping produced was refused (validation, references)
            return self._refused(msg, e)
        return self._failed(msg, e)

    # ------------------------------------------------------------------ the transaction
    def write(self, conn: Connection, result, raw: RawMessage, *, checked: Checked | None = None,
              candidates: dict | None = None, puts: dict | None = None,
              shared: SharedWrite | None = None) -> tuple[list[str], list[str]]:
        """Apply a :class:`mappings.MappingResult` on ``conn``: stale entries dropped, the bundle
        as one transaction, then the merges it asks for (ADT A40). ``candidates``: the bundle's
        :func:`hold_back_candidates`, its references resolved ahead (see :meth:`prepare`); ``puts``:
        its :func:`put_entries`. ``shared``: the bundle's writes are left to it (a shareable
        message's, :meth:`SharedWrite.admits`)."""
        currents: dict = {}  # the versions the guard read, which the transaction follows
        bundle, skipped, existing = drop_held_back_entries(conn, result.bundle, candidates=candidates,
                                                           currents=currents, puts=puts)
        _remember_existing(existing)
        access = _ingest_access(raw.organization)
        written: list[str] = list(existing)
        if bundle.get("entry"):
            before = len(shared.versions) if shared is not None else 0
            resp = process_bundle(self.svc, bundle, access, transaction=True, conn=conn, checked=checked,
                                  currents=currents, locations_only=True,
                                  defer=shared.versions if shared is not None else None)
            for e in resp.body.get("entry") or []:
                loc = ((e or {}).get("response") or {}).get("location") or ""  # None: left to ``shared``
                if loc:
                    written.append("/".join(loc.split("/")[:2]))
            if shared is not None:
                deferred = shared.versions[before:]
                shared.added(deferred)
                written += [f"{v.res_type}/{v.res_id}" for v in deferred]
        merges = list(getattr(result, "merges", None) or [])
        if merges:
            from hub.mpi.merge import move_patient_records  # the MPI component's merge

            for survivor, merged in merges:
                move_patient_records(self.svc, conn, survivor, merged, source=f"ingest:{raw.id}")
        return written, skipped

    # ------------------------------------------------------------------ outcomes
    def _rejected(self, header_or_msg, err: HL7ParseError) -> Outcome:
        whole = err.code in _REJECT_CODES or err.segment in (None, "MSH")
        code = "AR" if whole else "AE"
        return Outcome("rejected", code, build_ack(header_or_msg, code, err), True, err.code, err.message,
                       err.segment, _str(err.field))

    def _refused(self, msg, e: HubError) -> Outcome:
        """The message's transaction was refused by the store: AE naming the FHIR element path."""
        code = {NotFound: UNKNOWN_KEY_IDENTIFIER, MultipleMatches: DUPLICATE_KEY_IDENTIFIER}.get(
            type(e), DATA_TYPE_ERROR if e.status in (400, 422) else APPLICATION_INTERNAL_ERROR)
        path = ", ".join(e.expression) if e.expression else None
        err = HL7ParseError(code, e.diagnostics)
        return Outcome("rejected", "AE", build_ack(msg, "AE", err), True, code, e.diagnostics, None, path)

    def _failed(self, msg, e: Exception) -> Outcome:
        # the exception text may quote message content: it goes to the raw log, not to the log file
        log.error("ingest: internal error while normalizing (%s)", type(e).__name__)
        text = f"{type(e).__name__}: {e}"
        err = HL7ParseError(APPLICATION_INTERNAL_ERROR, "internal error; the hub keeps the message and retries it")
        return Outcome("failed", "AR", build_ack(msg, "AR", err), False, APPLICATION_INTERNAL_ERROR, text)


@functools.lru_cache(maxsize=1024)
def _ingest_access(organization: str) -> Access:
    """Who the ingest writes as, for one organization (immutable: built once, not per message)."""
    return Access(Principal(subject="yilian-ingest", client_id="yilian-ingest", scopes=parse_scopes(_INGEST_SCOPES),
                            scope_text=_INGEST_SCOPES, organization=organization))


_MSH_AT_LINE_START = re.compile(rb"(?:^|[\r\n])MSH")
_SEVERITY = {"normalized": 0, "unsupported": 1, "rejected": 2, "failed": 3}


def batch_outcome(outcomes: list[Outcome]) -> Outcome:
    """One outcome for a batch (HL7 v2.5 chapter 2, section 2.10.3): the worst status of its
    messages, the first problem as the error ("message k of n: …"), every message's ACK in a
    batch envelope (BHS … BTS), all resources written."""
    worst = max(outcomes, key=lambda o: _SEVERITY.get(o.status, 0))
    first_bad = next((k for k, o in enumerate(outcomes) if o.status != "normalized"), None)
    acks = [o.ack for o in outcomes if o.ack]
    ack = None
    if acks:
        ack = b"BHS|^~\\&\r" + b"".join(acks) + f"BTS|{len(acks)}\r".encode()
    out = Outcome(worst.status, worst.ack_code, ack, worst.status == "rejected",
                  resources=[r for o in outcomes for r in o.resources],
                  skipped_stale=[r for o in outcomes for r in o.skipped_stale])
    if first_bad is not None:
        bad = outcomes[first_bad]
        out.error_code, out.error_segment, out.error_field = bad.error_code, bad.error_segment, bad.error_field
        out.error_text = f"message {first_bad + 1} of {len(outcomes)}: {bad.error_text}"
    return out


def _transient(e: BaseException | None) -> bool:
    """A database hiccup (lost connection, deadlock, serialization failure, busy database) or
    the store's Conflict for a concurrent writer (raised from a unique violation) — not a
    Conflict about the data itself (e.g. a patient already merged into another). Errors of the
    driver itself count as SQLAlchemy's wrapped ones do: the store and its hooks (MPI) write rows
    through the DBAPI cursor directly, so a concurrent writer's unique violation arrives as the
    driver's IntegrityError."""
    if isinstance(e, (DBAPIError, sqlite3.OperationalError, sqlite3.IntegrityError, psycopg.OperationalError,
                      psycopg.InterfaceError, psycopg.IntegrityError)):
        return True
    if isinstance(e, Conflict):
        return _transient(e.__context__) or isinstance(e.__context__, (sqlite3.IntegrityError, psycopg.IntegrityError))
    return False


def _str(x) -> str | None:
    return None if x is None else str(x)


def _as_parse_error(e: Exception, default_code: int) -> HL7ParseError:
    """A mapping error as the HL7ParseError :func:`build_ack` takes (same fields: code, segment, field)."""
    code = getattr(e, "code", None)
    try:
        code = int(code) if code is not None else default_code
    except (TypeError, ValueError):
        code = default_code
    text = getattr(e, "text", None) or str(e) or type(e).__name__
    return HL7ParseError(code, text, getattr(e, "segment", None), getattr(e, "field", None),
                         getattr(e, "position", None))


# ---------------------------------------------------------------------- the stale-event guard

def event_time(resource) -> int | None:
    """The source event time (µs) recorded on a resource, or None."""
    return _parse_event_time(_event_time_text(resource))


def _event_time_text(resource) -> str | None:
    """The source event time extension's value as written, or None."""
    if not isinstance(resource, dict):
        return None
    for holder in (resource, resource.get("meta") or {}):
        for ext in holder.get("extension") or ():
            if isinstance(ext, dict) and ext.get("url") == SOURCE_EVENT_TIME:
                value = ext.get("valueInstant") or ext.get("valueDateTime")
                return value if isinstance(value, str) else None
    return None


@functools.lru_cache(maxsize=4096)  # a feed's messages share their few event times
def _parse_event_time(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_date_range(value)[0]
    except ValueError:
        return None


#: ``Type/id`` of create-only resources this process saw the hub hold (bounded). Only a hint for
#: :meth:`Normalizer.prepare`, which does not check such entries ahead: the stale guard decides
#: inside the transaction, and an entry it keeps after all is checked there.
_KNOWN_EXISTING: dict[str, None] = {}
_KNOWN_LIMIT = 10_000


def _remember_existing(keys: list[str]) -> None:
    for k in keys:
        if k not in _KNOWN_EXISTING:
            if len(_KNOWN_EXISTING) >= _KNOWN_LIMIT:
                _KNOWN_EXISTING.pop(next(iter(_KNOWN_EXISTING)))
            _KNOWN_EXISTING[k] = None


def _is_known(url) -> bool:
    return isinstance(url, str) and url.strip("/") in _KNOWN_EXISTING


def put_entries(bundle: dict) -> dict[tuple[str, str], int]:
    """The ``PUT Type/id`` entries of a bundle, their place by (type, id). A function of the
    bundle alone, so a caller can read them outside the write transaction."""
    out: dict[tuple[str, str], int] = {}
    for i, e in enumerate(bundle.get("entry") or []):
        req = e.get("request") or {}
        if str(req.get("method", "")).upper() != "PUT":
            continue
        parts = str(req.get("url", "")).split("?")[0].strip("/").split("/")
        if len(parts) == 2:
            out[(parts[0], parts[1])] = i
    return out


def hold_back_candidates(bundle: dict, *,
                         puts: dict | None = None) -> dict[tuple[str, str], tuple[int, int | None, bool]]:
    """The PUT entries :func:`drop_held_back_entries` may drop, by (type, id): (entry's place,
    its source event time, create-only). A function of the bundle alone, so a caller can read
    them outside the write transaction. ``puts``: the bundle's :func:`put_entries`."""
    entries = bundle.get("entry") or []
    candidates: dict[tuple[str, str], tuple[int, int | None, bool]] = {}
    for key, i in (put_entries(bundle) if puts is None else puts).items():
        e = entries[i]
        t = event_time(e.get("resource"))
        create_only = (e.get("request") or {}).get("ifNoneMatch") == "*"
        if t is not None or create_only:
            candidates[key] = (i, t, create_only)
    return candidates


def drop_held_back_entries(conn: Connection, bundle: dict, *, candidates: dict | None = None, currents: dict | None = None,
                           puts: dict | None = None) -> tuple[dict, list[str], list[str]]:
    """The bundle without the PUT entries that must not be written: those whose stored current
    version has a newer source event time, and the create-only ones (``ifNoneMatch: *``, e.g. a
    lab feed's thin Patient) whose resource the hub already holds. References to a dropped
    entry's ``fullUrl`` are pointed at the stored resource. Returns the bundle, the stale entries
    and the create-only ones already held (``Type/id`` each). ``candidates``: the bundle's
    :func:`hold_back_candidates`, read ahead, its references to its own PUT entries already
    resolved (:func:`hub.fhir.bundles.resolve_put_references`): none names a dropped entry's
    ``fullUrl`` then.

    ``currents``: on SQLite, filled with the stored current versions (None: none) of the kept
    ``PUT Type/id`` entries, read by the guard's statement, for :func:`process_bundle` on the
    same connection, which then does not read them again. Not on PostgreSQL: there the
    transaction reads them with ``FOR UPDATE``, and a lock on what the guard drops (a feed's
    shared Organization) would queue every message of the feed behind one another. ``puts``:
    the bundle's :func:`put_entries`, read ahead."""
    entries = bundle.get("entry") or []
    resolved = candidates is not None
    if candidates is None:
        candidates = hold_back_candidates(bundle)
    if currents is None or conn.dialect.name != "sqlite":
        puts = None
    elif puts is None:
        puts = put_entries(bundle)
    if not candidates and not puts:
        return bundle, [], []
    drop: dict[int, str] = {}
    stale: list[str] = []
    existing: list[str] = []  # create-only resources the hub holds: the message refers to them
    found: dict[tuple[str, str], Stored] = {}
    keys = candidates.keys() | puts.keys() if puts else candidates.keys()
    for key, cur in FhirStore.read_versions(conn, keys, with_content=True).items():
        if cur is None:
            continue
        if puts and key in puts:
            # with its key: the store would otherwise read it again to write the update
            found[key] = cur
        hit = candidates.get(key)
        if hit is None or cur.deleted:
            continue
        res_type, res_id, content = cur.res_type, cur.res_id, cur.content
        i, t, create_only = hit
        if create_only:
            drop[i] = f"{res_type}/{res_id}"
            existing.append(drop[i])
            continue
        if not content or SOURCE_EVENT_TIME not in content:
            continue
        current = event_time(orjson.loads(content))
        if current is not None and current > t:
            drop[i] = f"{res_type}/{res_id}"
            stale.append(drop[i])
    if puts:
        currents.update((key, found.get(key)) for key, i in puts.items() if i not in drop)
    if not drop:
        return bundle, [], []
    urls = {} if resolved else {entries[i].get("fullUrl"): ref for i, ref in drop.items() if entries[i].get("fullUrl")}
    kept = [e for i, e in enumerate(entries) if i not in drop]
    if urls:
        # the mappings refer by "Type/id", seldom by a dropped entry's fullUrl: one serialization
        # tells whether any reference needs pointing at the stored resource (walking every
        # resource for it cost more than the rest of this guard)
        blob = orjson.dumps(kept)
        if any(orjson.dumps(url) in blob for url in urls):
            kept = orjson.loads(blob)  # a copy: never change the caller's bundle
            for e in kept:
                _walk_references(e.get("resource"), urls.get)
    return {**bundle, "entry": kept}, stale, existing
