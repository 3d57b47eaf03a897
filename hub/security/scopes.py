"""SMART App Launch v2 scopes (hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

``context/Type.perms`` where context is ``patient``, ``user`` or ``system``, Type a resource type
or ``*``, and perms a subset of ``cruds`` in that order; the v1 forms ``.read``, ``.write`` and
``.*`` are read as ``rs``, ``cud`` and ``cruds``. Granular scopes with a query
(``patient/Observation.rs?category=…``) are not enforced yet and therefore grant nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SCOPE_RE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}

#: interaction → SMART permission letter
INTERACTION_PERMISSION = {
    "create": "c", "read": "r", "vread": "r", "history-instance": "r", "history-type": "r",
    "history-system": "r", "update": "u", "patch": "u", "delete": "d", "search-type": "s",
    "search-system": "s", "operation": "r",
}


@dataclass(frozen=True)
class Scope:
    context: str  # patient | user | system
    resource_type: str  # or "*"
    permissions: frozenset[str]

    def allows(self, resource_type: str, permission: str) -> bool:
        return (self.resource_type in ("*", resource_type)) and permission in self.permissions


def parse_scope(text: str) -> Scope | None:
    """One scope string → :class:`Scope`, or None for non-resource scopes (openid, launch …)."""
    m = _SCOPE_RE.match(text)
    if not m:
        return None
    ctx, rtype, perms = m.groups()
    perms = _V1.get(perms, perms)
    if not perms or any(p not in "cruds" for p in perms) or list(perms) != sorted(perms, key="cruds".index):
        return None
    return Scope(ctx, rtype, frozenset(perms))


def parse_scopes(text: str | None) -> tuple[Scope, ...]:
    out = []
    for s in (text or "").split():
        sc = parse_scope(s)
        if sc:
            out.append(sc)
    return tuple(out)


def narrow(requested: str | None, allowed: str) -> str:
    """The scopes a client gets: those it asked for that its registration allows (all allowed
    ones when it asked for none). A requested scope is granted when an allowed one covers it."""
    allowed_list = allowed.split()
    if not requested:
        return " ".join(allowed_list)
    allowed_parsed = [parse_scope(a) for a in allowed_list]
    granted = []
    for r in requested.split():
        if r in allowed_list:
            granted.append(r)
            continue
        sc = parse_scope(r)
        if sc and any(a and a.context == sc.context and a.resource_type in ("*", sc.resource_type)
                      and sc.permissions <= a.permissions for a in allowed_parsed):
            granted.append(r)
    return " ".join(granted)
