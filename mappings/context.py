"""The state of one conversion: the message, who sent it, the resources built so far.

Every resource goes through :meth:`Context.add`, which gives it ``meta.source`` (the sender) and
the source-event-time extension (so the hub can refuse to let an older event overwrite newer
data), and files it under its deterministic id (:mod:`mappings.identity`).
"""

from __future__ import annotations

import re
import weakref

from adapters.hl7v2 import HL7ParseError, Message, parse_dtm
from terminology import Terminology, urls

from . import identity
from .errors import DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING, MappingError
from .profiles import FacilityProfile
from .tables import tables

SOURCE_EVENT_TIME = "https://yilian.example.org/fhir/StructureDefinition/source-event-time"
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_MEMO_LIMIT = 50_000            # memoized codes/units per terminology: bounded, dropped when full
#: values per sender memo (Context.sender_memo): a lab's tests with their units, ranges and flags
#: are a few thousand; each holds a resource's worth of copies, so fewer than the memo above
_SENDER_MEMO_LIMIT = 10_000
_TERM_CACHE: "weakref.WeakKeyDictionary[Terminology, tuple]" = weakref.WeakKeyDictionary()


def term_cache(term: Terminology) -> dict:
    """Memo of translations/lookups for one Terminology. A Terminology replaces its whole state
    when resources are added (copy on write), so the memo is dropped when the state changes."""
    state = getattr(term, "_state", None)
    entry = _TERM_CACHE.get(term)
    if entry is None or entry[0] is not state or len(entry[1]) > _MEMO_LIMIT:
        entry = _TERM_CACHE[term] = (state, {})
    return entry[1]


class Context:
    """One message's conversion: inputs, resources (by ``Type/id``), warnings."""

    def __init__(self, msg: Message, organization: str, profile: FacilityProfile, terminology: Terminology,
                 base: str = urls.DEFAULT_HUB_BASE):
        self.msg = msg
        self.delims = d = msg.delimiters
        self.charset = msg.charset
        # how a field's raw text reads (its delimiters, and the character set of its escapes):
        # part of the key of every memo by raw text, so another sender's MSH-2 never reads a memo
        self.reading = (d.component + d.repetition + d.escape + d.subcomponent + (d.truncation or ""), self.charset)
        self.org = organization
        self.profile = profile
        self.term = terminology
        self.cache = term_cache(terminology)
        self.base = base
        # MSH-7 (and EVN-2) repeat across a feed's messages: their zone and instant are read once
        evn = msg.segment("EVN")
        when = ("event-time", msg.msh.get(7), evn.get(2) if evn is not None else None, profile.timezone)
        known = self.cache.get(when)
        self.tz = known[0] if known is not None else self._sender_zone(msg, profile.timezone)
        self.warnings: list[str] = []
        self.resources: dict[str, dict] = {}
        self.merges: list[tuple[str, str]] = []
        # ``Type/id`` of resources written only where the hub has none yet (PUT with
        # ``ifNoneMatch: *``): a lab or order feed's thin PID must not replace the demographics
        # the registration system (ADT) sent, nor a merge's stub the merged patient's record
        self.create_only: set[str] = set()
        self.tables = tables()
        from .engine import compiled_specs
        self.specs = compiled_specs(profile)
        app = profile.source or msg.sending_application or "HL7v2"
        self.source = f"urn:yilian:org:{organization}#{app}"
        msh = msg.msh
        self.facility_ns = msh.get(4, comp=1)
        self.facility_oid = msh.get(4, comp=2)
        if known is None:
            known = self.cache[when] = (self.tz, self._event_time())
        self.event_time = known[1]
        self._meta = {"source": self.source}
        self._ext = {"url": SOURCE_EVENT_TIME, "valueInstant": self.event_time}
        self._sender_memos: dict[str, dict] = {}

    # -- time -------------------------------------------------------------------------------------
    @staticmethod
    def _sender_zone(msg: Message, default: str) -> str:
        """The offset of times sent without one: MSH-7's own offset when it has one (v2.5 2A.3.22:
        such times are the sender's local time), else the facility profile's (+08:00 by default)."""
        raw = msg.msh.get(7)
        try:
            offset = parse_dtm(raw.strip()).offset_minutes if raw else None
        except HL7ParseError:
            offset = None
        if offset is None:
            return default
        sign = "-" if offset < 0 else "+"
        hours, minutes = divmod(abs(offset), 60)
        return f"{sign}{hours:02d}:{minutes:02d}"

    def _event_time(self) -> str:
        evn = self.msg.segment("EVN")
        raw = evn.get(2) if evn is not None else None
        where = ("EVN", 2)
        if not raw or raw == '""':
            raw, where = self.msg.msh.get(7), ("MSH", 7)
        if not raw:
            raise MappingError(REQUIRED_FIELD_MISSING, "message date/time (MSH-7) is empty", "MSH", 7)
        try:
            moment = parse_dtm(raw)
            if moment.year == 0:                 # FHIR instants start at year 1 (datatypes.html#instant)
                raise ValueError("year 0000")
            return moment.to_fhir_instant(self.tz)
        except (HL7ParseError, ValueError):
            raise MappingError(DATA_TYPE_ERROR, f"{where[0]}-{where[1]} is not an HL7 date/time", *where) from None

    def sender_memo(self, name: str) -> dict:
        """The memo ``name`` of values that depend on how this sender's messages read (its
        organization and profile, the delimiters and character set, the hub's base) and on the
        terminology: held in the terminology's memo (dropped with it), emptied when it has grown
        past its limit, and found once per message."""
        memo = self._sender_memos.get(name)
        if memo is None:
            key = (name, self.org, self.profile, self.reading, self.base)
            memo = self.cache.get(key)
            if memo is None or len(memo) > _SENDER_MEMO_LIMIT:
                memo = self.cache[key] = {}
            self._sender_memos[name] = memo
        return memo

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    # -- resources --------------------------------------------------------------------------------
    def add(self, resource: dict) -> str:
        """File ``resource`` (which has ``resourceType`` and ``id``); returns ``Type/id``.

        A second Practitioner with the same id (one person named twice, once without the name)
        completes the first with the elements it lacks; any other repeated id is a repeated
        segment: the first stays, the repeat is reported.
        """
        key = f"{resource['resourceType']}/{resource['id']}"
        old = self.resources.get(key)
        if old is None:
            resource["meta"] = dict(self._meta)
            resource.setdefault("extension", []).insert(0, dict(self._ext))
            self.resources[key] = resource
        elif resource["resourceType"] == "Practitioner":
            for k, v in resource.items():
                if k not in old:
                    old[k] = v
        elif resource is not old:
            self.warn(f"{resource['resourceType']} repeated in the message (same identity): the first is kept")
        return key

    def get(self, ref: str) -> dict | None:
        return self.resources.get(ref)

    # -- identifiers ------------------------------------------------------------------------------
    def organization_of(self, namespace: str | None, oid: str | None) -> str | None:
        """The alliance code behind an assigning authority / HD, or None when it is not a member
        (an external authority with an OID)."""
        prof = self.profile
        org = prof.organization_for(namespace) or prof.organization_for(oid)
        if org:
            return org
        if (namespace and namespace == self.facility_ns) or (oid and oid == self.facility_oid):
            return self.org
        if oid and _OID.match(oid):
            return None
        return self.org

    def identifier_system(self, namespace: str | None, oid: str | None, type_code: str | None,
                          default_kind: str) -> str:
        """System of an identifier: national systems by type/OID, else ``org_system(org, kind)``
        for the member organization the authority stands for, else ``urn:oid:<authority OID>``."""
        t = self.tables
        if type_code and type_code in t["identifier_type_systems"]:
            return t["identifier_type_systems"][type_code]
        if oid and oid in t["identifier_oid_systems"]:
            return t["identifier_oid_systems"][oid]
        org = self.organization_of(namespace, oid)
        if org is None:
            return f"urn:oid:{oid}"
        kind = t["identifier_kinds"].get(type_code or "", (type_code or default_kind).lower())
        if not type_code:
            kind = default_kind
        return identity.org_system(org, kind, self.base)

    def identifier_type(self, code: str) -> dict:
        """``Identifier.type`` for a v2 table 0203 code (display from the terminology)."""
        key = ("0203", code)
        cc = self.cache.get(key)
        if cc is None:
            system = urls.v2_table("0203")
            found = self.term.lookup(system, code)
            coding = {"system": system, "code": code}
            if found is not None and found.display:
                coding["display"] = found.display
            cc = self.cache[key] = {"coding": [coding]}
        return {"coding": [dict(cc["coding"][0])]}

    def translate(self, table: str, code: str, target: str | None = None) -> tuple[str, str, str | None] | None:
        """(system, code, display) of the first equivalent translation of v2 table ``table``'s code."""
        key = ("tr", table, code, target)
        if key in self.cache:
            return self.cache[key]
        out = None
        for t in self.term.translate(urls.v2_table(table), code, target_system=target):
            if t.equivalence in ("equivalent", "equal", "wider", "subsumes", "inexact", "relatedto"):
                out = (t.system, t.code, t.display)
                break
        self.cache[key] = out
        return out

    def translate_system(self, system: str, code: str) -> str | None:
        """The code of the first equivalent translation of ``system#code`` (any target)."""
        key = ("trs", system, code)
        if key not in self.cache:
            out = None
            for t in self.term.translate(system, code):
                if t.equivalence in ("equivalent", "equal", "wider", "subsumes"):
                    out = t.code
                    break
            self.cache[key] = out
        return self.cache[key]

    def v2_code(self, table: str, code: str | None, fallback: str) -> str | None:
        """A v2 table value as a FHIR code: the terminology's ConceptMap for the table first,
        then the ``tables.yaml`` map ``fallback`` for the values the ConceptMap lacks."""
        if not code:
            return None
        found = self.translate(table, code)
        if found:
            return found[1]
        return self.tables[fallback].get(code) or self.tables[fallback].get(code.upper())

    def display(self, system: str, code: str) -> str | None:
        key = ("disp", system, code)
        if key not in self.cache:
            found = self.term.lookup(system, code)
            self.cache[key] = found.display if found is not None else None
        return self.cache[key]

    # -- shared resources -------------------------------------------------------------------------
    def organization_ref(self, org_code: str | None = None) -> dict:
        """Reference to a member Organization by its deterministic id. The Organization is the
        hub's registry record (CONVENTIONS.md, "Organizations"), which a message must not
        overwrite: the bundle carries only a create-only stub (identifier = alliance code), so the
        reference resolves even before the member is registered."""
        code = org_code or self.org
        oid = identity.organization_id(code, self.base)
        key = f"Organization/{oid}"
        if key not in self.resources:
            self.add({"resourceType": "Organization", "id": oid, "active": True,
                      "identifier": [{"system": identity.organization_system(self.base), "value": code}]})
            self.create_only.add(key)
        return {"reference": key}
