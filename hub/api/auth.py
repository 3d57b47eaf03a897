"""Bearer-token authorization for the hub's non-FHIR HTTP routes (ingest, DICOMweb, MPI review,
monitoring), through the same token service and :class:`hub.security.access.Access` as FHIR.

    access = authorize(request)                      # any valid token
    access = authorize(request, hub_scope="yilian/ingest")  # a hub scope (not a SMART resource scope)
    access = authorize(request, resource=("ImagingStudy", "read"))  # a SMART permission

Errors are :class:`hub.errors.HubError` subclasses; the application maps them once to an
OperationOutcome with the right status (see ``create_app``).
"""

from __future__ import annotations

from fastapi import Request

from hub.errors import Forbidden, Unauthorized
from hub.security.access import Access


def authorize(request: Request, *, hub_scope: str | None = None,
              resource: tuple[str, str] | None = None) -> Access:
    hub = request.app.state.hub
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise Unauthorized("a bearer token is required (OAuth2; see /.well-known/smart-configuration)")
    principal = hub.tokens.verify(auth[7:].strip())
    access = Access(principal, request.client.host if request.client else None)
    if hub_scope is not None and hub_scope not in principal.scope_text.split():
        raise Forbidden(f"the token lacks the scope {hub_scope!r}")
    if resource is not None:
        access.require(*resource)
    return access
