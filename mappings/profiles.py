"""Per-sending-facility overrides, as configuration (TOML), not code.

A hospital's HIS that deviates from the standard is connected by a profile, e.g.::

    [HOSPA]                               # the organization's alliance code
    timezone = "+08:00"                   # offset of timestamps sent without one
    charset = "GB18030"                   # hint for the parser (MSH-18 is wrong or missing)
    source = "HIS"                        # meta.source fragment (default: MSH-3)
    [HOSPA.assigning_authorities]         # PID-3 CX.4 (namespace or OID) -> alliance code
    "市一院" = "HOSPA"
    "1.2.156.112604.1.2.1" = "HOSPA"
    [HOSPA.fields]                        # field moved: read the standard field from another one
    "PID-19" = "PID-2"
    [HOSPA.code_tables."PID-8"]           # local code table: sent value -> standard value
    "1" = "M"
    [HOSPA.coding_systems]                # CWE.3 names of the sender's own tables -> system URI
    "L" = "urn:yilian:hospa:lis"          # (the local_system of its lab code CSV)
    [[HOSPA.extra_identifiers]]           # an identifier the standard has no field for
    field = "PID-2"                       # where it comes from
    kind = "health-card"                  # org-qualified kind, or `system = "urn:oid:..."`
    type = "HC"                           # v2 table 0203 code for Identifier.type

See docs/mappings.md.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .errors import APPLICATION_INTERNAL_ERROR, MappingError

_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")
_FIELD = re.compile(r"^[A-Z][A-Z0-9]{2}-\d+$")


@dataclass(frozen=True)
class ExtraIdentifier:
    """An identifier read from ``field`` (``"PID-2"``) with ``system`` or an org-qualified ``kind``."""

    field: str
    kind: str | None = None
    system: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class FacilityProfile:
    """How one sending organization deviates from the standard (all optional)."""

    organization: str = ""
    timezone: str = "+08:00"
    charset: str | None = None
    source: str | None = None
    assigning_authorities: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    code_tables: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    coding_systems: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    extra_identifiers: tuple[ExtraIdentifier, ...] = ()

    def __post_init__(self) -> None:
        key = (tuple(sorted(self.fields.items())),
               tuple(sorted((k, tuple(sorted(v.items()))) for k, v in self.code_tables.items())))
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_hash", hash((self.organization, self.timezone, key,
                                                tuple(sorted(self.coding_systems.items())),
                                                tuple(sorted(self.assigning_authorities.items())))))

    @property
    def key(self) -> tuple:
        """Hashable identity of the overrides that change compiled specs (the compile cache key)."""
        return self._key

    def organization_for(self, authority: str | None) -> str | None:
        """The alliance code an assigning authority (namespace id or universal id) stands for."""
        if not authority:
            return None
        return self.assigning_authorities.get(authority)

    @classmethod
    def from_dict(cls, organization: str, data: Mapping[str, Any]) -> "FacilityProfile":
        """Build and check a profile from its TOML table; raises ValueError naming the bad key."""
        known = {"timezone", "charset", "source", "assigning_authorities", "fields", "code_tables",
                 "coding_systems", "extra_identifiers"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"profile {organization}: unknown keys {sorted(unknown)}")
        tz = data.get("timezone", "+08:00")
        if not isinstance(tz, str) or not _OFFSET.match(tz):
            raise ValueError(f"profile {organization}: timezone {tz!r} is not +hh:mm")
        moves = {str(k): str(v) for k, v in dict(data.get("fields", {})).items()}
        for k, v in moves.items():
            if not _FIELD.match(k) or not _FIELD.match(v) or k[:3] != v[:3]:
                raise ValueError(f"profile {organization}: field move {k!r} -> {v!r} must be SEG-n -> SEG-m")
        tables = {str(k): MappingProxyType({str(a): str(b) for a, b in dict(v).items()})
                  for k, v in dict(data.get("code_tables", {})).items()}
        extras = []
        for item in data.get("extra_identifiers", []):
            ident = ExtraIdentifier(str(item["field"]), item.get("kind"), item.get("system"), item.get("type"))
            if not _FIELD.match(ident.field) or not (ident.kind or ident.system):
                raise ValueError(f"profile {organization}: extra identifier {item!r} needs field and kind/system")
            extras.append(ident)
        return cls(organization=organization, timezone=tz, charset=data.get("charset"), source=data.get("source"),
                   assigning_authorities=MappingProxyType({str(k): str(v) for k, v in
                                                           dict(data.get("assigning_authorities", {})).items()}),
                   fields=MappingProxyType(moves), code_tables=MappingProxyType(tables),
                   coding_systems=MappingProxyType({str(k): str(v) for k, v in
                                                    dict(data.get("coding_systems", {})).items()}),
                   extra_identifiers=tuple(extras))

    def __hash__(self) -> int:
        return self._hash


DEFAULT_PROFILE = FacilityProfile()


def load_profiles(path: str | Path) -> dict[str, FacilityProfile]:
    """Read facility profiles from a TOML file (one table per alliance code).

    Raises MappingError 207 naming the file and the problem when the file is not valid.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
        return {org: FacilityProfile.from_dict(org, table) for org, table in data.items()}
    except (OSError, tomllib.TOMLDecodeError, ValueError, KeyError, TypeError) as exc:
        raise MappingError(APPLICATION_INTERNAL_ERROR, f"facility profiles {p}: {exc}") from exc
