"""HL7 v2 messages → FHIR R4 resources, written as data (declarative specs plus a small engine).

Contract used by the hub's ingest pipeline (``hub/ingest``)::

    from mappings import convert, MappingResult, MappingError, UnsupportedMessage
    result = convert(message, organization="HOSPA", profile=None)   # adapters.hl7v2.Message
    result.bundle       # FHIR transaction Bundle (dict): PUT entries with deterministic ids
    result.event_time   # source event time (EVN-2 / MSH-7) as a FHIR instant, for the stale-update guard
    result.merges       # [(survivor Patient id, merged Patient id)] from ADT A40 and similar
    result.warnings     # what was tolerated (unknown codes, truncated values …)

``MappingError`` carries an HL7 table 0357 error code, the segment and field at fault, and a text,
so the hub can answer AE/AR with an ERR segment; ``UnsupportedMessage`` (a ``MappingError``)
means the message is valid but of a type Yilian does not map (stored and reported, not dropped).

Identifier systems and deterministic ids: :mod:`mappings.identity`.
"""
