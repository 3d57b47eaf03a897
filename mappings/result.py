"""What :func:`mappings.convert` returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class MappingResult:
    """One message as one FHIR transaction.

    ``bundle``: a transaction Bundle whose entries are ``PUT Type/<deterministic id>`` with a
    ``fullUrl``; ``event_time``: EVN-2 (else MSH-7) as a FHIR instant, for the hub's stale-update
    guard; ``merges``: (survivor Patient id, merged Patient id) pairs (ADT A40/A18/A34/A35/A47);
    ``warnings``: what was tolerated; ``message_type``: ``"ADT^A01"``.
    """

    bundle: dict
    event_time: str
    message_type: str
    merges: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def resources(self, resource_type: str | None = None) -> list[dict]:
        """The bundle's resources (of one type, when given), in bundle order."""
        return [e["resource"] for e in self.bundle["entry"]
                if resource_type is None or e["resource"]["resourceType"] == resource_type]
