"""The one enforcement point for access to FHIR data.

Every interaction asks :meth:`Access.require` before it runs; reads and searches of a
``patient/``-scoped caller are narrowed to that patient's compartment. Organization- and
consent-aware rules will hook in here too, so that no endpoint carries its own checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.errors import Forbidden
from hub.security.scopes import INTERACTION_PERMISSION
from hub.security.tokens import Principal


@dataclass(frozen=True)
class Access:
    principal: Principal
    address: str | None = None  # caller's network address, for the audit record

    def require(self, resource_type: str, interaction: str) -> None:
        """Raise 403 unless some scope grants ``interaction`` on ``resource_type``."""
        perm = INTERACTION_PERMISSION[interaction]
        for sc in self.principal.scopes:
            if sc.allows(resource_type, perm):
                if sc.context == "patient" and not self.principal.patient:
                    continue
                return
        raise Forbidden(f"the token's scopes do not allow {interaction} on {resource_type}")

    def patient_only(self, resource_type: str, interaction: str) -> str | None:
        """The patient id a caller is confined to, when only ``patient/`` scopes grant this."""
        perm = INTERACTION_PERMISSION[interaction]
        granting = [sc for sc in self.principal.scopes if sc.allows(resource_type, perm)]
        if granting and all(sc.context == "patient" for sc in granting):
            return self.principal.patient
        return None
