"""Operation parameters (operations.html#request): from the query string and/or a
``Parameters`` body, with the recognition-specific ones checked (clinical context, requesting
organization, ``system|code``)."""

from __future__ import annotations

from hub.errors import InvalidRequest
from hub.fhir.service import FhirRequest
from hub.recognition.reference import Reference
from hub.recognition.rules import CLINICAL_EXCEPTIONS
from mappings.identity import organization_system


def operation_params(req: FhirRequest) -> dict[str, list]:
    """Operation parameters from the query string and/or a Parameters body (operations.html#request)."""
    out: dict[str, list] = {}
    for k, v in req.query:
        out.setdefault(k, []).append(v)
    body = req.body
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for p in body.get("parameter") or []:
            if not isinstance(p, dict) or "name" not in p:
                continue
            value = p.get("resource")
            if value is None:
                value = next((p[k] for k in p if k.startswith("value")), None)
            out.setdefault(p["name"], []).append(value)
    return out


def one(params: dict, name: str):
    vals = [v for v in params.get(name, []) if v not in (None, "")]
    if len(vals) > 1:
        raise InvalidRequest(f"parameter {name!r} given {len(vals)} times")
    return vals[0] if vals else None


def clinical_context(params: dict) -> tuple[str, ...]:
    out: list[str] = []
    for v in params.get("context", []):
        if isinstance(v, dict):  # valueCoding / valueCodeableConcept
            v = v.get("code") or next((c.get("code") for c in v.get("coding", [])), None)
        for part in str(v or "").split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    unknown = [c for c in out if c not in CLINICAL_EXCEPTIONS]
    if unknown:
        raise InvalidRequest(f"unknown clinical context {unknown[0]!r}; one of {', '.join(CLINICAL_EXCEPTIONS)}",
                             expression=["context"])
    return tuple(out)


def org_code(value, ref: Reference) -> str | None:
    """An alliance code from a code, an ``Organization/{id}`` reference or a Reference object;
    400 for an Organization that is no member of the reference data."""
    if value is None:
        return None
    if isinstance(value, dict):
        ident = value.get("identifier") or {}
        if ident.get("system") == organization_system() and ident.get("value"):
            return str(ident["value"])
        value = value.get("reference") or value.get("code") or value.get("value")
    value = str(value or "")
    if value.startswith("Organization/"):
        code = ref.orgs_by_id.get(value.split("/", 1)[1])
        if code is None:
            raise InvalidRequest(f"{value} is not a member organization of the recognition scopes",
                                 expression=["organization"])
        return code
    return value or None


def code_param(value: str) -> list[dict]:
    system, bar, code = str(value).rpartition("|")
    if not code:
        raise InvalidRequest("parameter 'code' must be system|code", expression=["code"])
    return [{"system": system, "code": code} if bar and system else {"code": code}]
