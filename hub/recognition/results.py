"""Reading a recognition candidate out of stored FHIR R4 JSON (Observation, DiagnosticReport).

- item: ``Observation.code`` / ``DiagnosticReport.code`` through the performer's code map;
- performer: ``performer`` references to an ``Organization`` (by id = ``mappings.identity.
  organization_id(code)``, or by identifier in ``organization_system()``); else the report's
  performer; else the owner of a hospital-local code system (``…/CodeSystem/local/{org}/…``);
- time: ``effective[x]`` (collection or exam time; observation.html#time), else ``issued``;
- images (imaging items): the report's ``imagingStudy`` with instances in the hub;
- claimed marks: ``meta.tag`` codes of :data:`MARK_CLAIMED_SYSTEM` (what the source sent).
"""

from __future__ import annotations

from datetime import datetime, timezone

from hub.fhir.search.extract import parse_date_range
from mappings.identity import organization_system
from terminology import urls

#: the resources that are results (candidates of a recognition, carriers of a mark)
RESULT_TYPES = ("Observation", "DiagnosticReport")
#: the hub's code system of HR marks (meta.tag code = scope code, display = the HR label)
MARK_SYSTEM = urls.code_system("recognition-mark")
#: HR marks the source sent (moved here from MARK_SYSTEM on write; checked by R7)
MARK_CLAIMED_SYSTEM = urls.code_system("recognition-mark-claimed")
#: extension on a mark's Coding: until when the result is recognizable in that scope
EXPIRY_EXTENSION = f"{urls.DEFAULT_HUB_BASE}/StructureDefinition/recognition-expires"

_LOCAL_PREFIX = f"{urls.DEFAULT_HUB_BASE}/CodeSystem/local/"


def codings(resource: dict) -> list[dict]:
    code = resource.get("code")
    return [c for c in (code or {}).get("coding", []) if isinstance(c, dict)] if isinstance(code, dict) else []


def performer(resource: dict, orgs_by_id: dict[str, str]) -> str | None:
    for ref in resource.get("performer") or []:
        if not isinstance(ref, dict):
            continue
        r = str(ref.get("reference") or "")
        if r.startswith("Organization/"):
            rid = r.split("/", 1)[1]
            if rid in orgs_by_id:
                return orgs_by_id[rid]
        ident = ref.get("identifier") or {}
        if ident.get("system") == organization_system() and ident.get("value"):
            return str(ident["value"])
    for c in codings(resource):
        system = str(c.get("system") or "")
        if system.startswith(_LOCAL_PREFIX):
            return system[len(_LOCAL_PREFIX):].split("/", 1)[0]
    return None


def effective(resource: dict) -> datetime | None:
    """The collection or exam time (UTC) — the start of ``effective[x]``, else ``issued``."""
    value = resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start") \
        or resource.get("effectiveInstant") or resource.get("issued") or resource.get("started")
    if not value:
        return None
    try:
        low, _ = parse_date_range(str(value))
    except Exception:  # an unreadable time fails R3/R5 with a clear reason, it does not fail the request
        return None
    return datetime.fromtimestamp(low / 1_000_000, tz=timezone.utc)


def claimed_marks(resource: dict) -> tuple[str, ...]:
    tags = (resource.get("meta") or {}).get("tag") or []
    return tuple(str(t.get("code")) for t in tags if isinstance(t, dict) and t.get("system") == MARK_CLAIMED_SYSTEM
                 and t.get("code"))


def has_images(study: dict | None) -> bool:
    """An ImagingStudy whose instances are in the hub (numberOfInstances or listed instances)."""
    if not study:
        return False
    if int(study.get("numberOfInstances") or 0) > 0:
        return True
    return any(s.get("instance") or int(s.get("numberOfInstances") or 0) > 0 for s in study.get("series") or [])


def endpoints(study: dict) -> list[str]:
    refs = [e.get("reference") for e in study.get("endpoint") or [] if isinstance(e, dict)]
    for s in study.get("series") or []:
        refs.extend(e.get("reference") for e in s.get("endpoint") or [] if isinstance(e, dict))
    return [r for r in dict.fromkeys(refs) if r]
