"""HL7 v2 messages → FHIR R4 resources, written as data (declarative specs plus a small engine).

Contract used by the hub's ingest pipeline (``hub/ingest``)::

    from mappings import convert, MappingResult, MappingError, UnsupportedMessage
    result = convert(message, organization="HOSPA", profile=None)   # adapters.hl7v2.Message
    result.bundle       # FHIR transaction Bundle (dict): PUT entries with deterministic ids; an entry
                        # with request.ifNoneMatch "*" is written only where the hub has no such resource
    result.event_time   # source event time (EVN-2 / MSH-7) as a FHIR instant, for the stale-update guard
    result.merges       # [(survivor Patient id, merged Patient id)] from ADT A40 and similar
    result.warnings     # what was tolerated (unknown codes, truncated values …)

``MappingError`` carries an HL7 table 0357 error code, the segment and field at fault, and a text,
so the hub can answer AE/AR with an ERR segment; ``UnsupportedMessage`` (a ``MappingError``)
means the message is valid but of a type Yilian does not map (stored and reported, not dropped).

Identifier systems and deterministic ids: :mod:`mappings.identity`. How the specs and facility
profiles work: docs/mappings.md.
"""

from __future__ import annotations

from functools import lru_cache

from adapters.hl7v2 import Message
from terminology import Terminology, urls

from .context import Context
from .engine import message_specs
from .errors import (APPLICATION_INTERNAL_ERROR, DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING, TABLE_VALUE_NOT_FOUND,
                     MappingError, UnsupportedMessage)
from .profiles import DEFAULT_PROFILE, FacilityProfile, load_profiles
from .result import MappingResult
from .walk import run

__all__ = ["convert", "MappingResult", "MappingError", "UnsupportedMessage", "FacilityProfile", "load_profiles",
           "supported_message_types", "REQUIRED_FIELD_MISSING", "DATA_TYPE_ERROR", "TABLE_VALUE_NOT_FOUND",
           "APPLICATION_INTERNAL_ERROR"]


@lru_cache(maxsize=1)
def _default_terminology() -> Terminology:
    return Terminology.load_default()


def supported_message_types() -> list[str]:
    """``TYPE^TRIGGER`` of every event a spec in ``mappings/specs/messages`` maps."""
    return sorted(message_specs())


def convert(message: Message, organization: str = "HOSPA", profile: FacilityProfile | None = None,
            terminology: Terminology | None = None, *, base: str = urls.DEFAULT_HUB_BASE) -> MappingResult:
    """Map one parsed HL7 v2 message to one FHIR transaction Bundle.

    ``organization`` is the sending member's alliance code (the front-end processor's
    organization); ``profile`` its overrides (default: none, timezone +08:00); ``terminology``
    the code systems and maps (default: the packaged ones, loaded once).

    Raises MappingError (table 0357 code, segment, field) for structural problems and
    UnsupportedMessage (code 200) for message types no spec covers.
    """
    mtype, trigger = message.message_type, message.trigger
    if not mtype:
        raise MappingError(REQUIRED_FIELD_MISSING, "message type (MSH-9) is empty", "MSH", 9)
    name = f"{mtype}^{trigger or ''}"
    spec = message_specs().get(name)
    if spec is None:
        raise UnsupportedMessage(f"message type {name} is not mapped to FHIR")
    prof = profile or DEFAULT_PROFILE
    ctx = Context(message, organization, prof, terminology or _default_terminology(), base)
    run(ctx, spec, trigger or "")
    root = base.rstrip("/")
    create_only = ctx.create_only
    entries = [{"fullUrl": f"{root}/{key}", "resource": res,
                "request": {"method": "PUT", "url": key, "ifNoneMatch": "*"} if key in create_only
                else {"method": "PUT", "url": key}}
               for key, res in ctx.resources.items()]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return MappingResult(bundle=bundle, event_time=ctx.event_time, message_type=name, merges=ctx.merges,
                         warnings=ctx.warnings)
