"""CapabilityStatement (capabilitystatement.html) and SMART configuration, built from the registry."""

from __future__ import annotations

from datetime import datetime

from hub.fhir.search.registry import Registry

_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                 "create", "search-type"]


#: operations the FHIR specification defines (their canonical OperationDefinition)
_STANDARD_OPERATIONS = {
    ("Patient", "everything"): "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    ("Patient", "match"): "http://hl7.org/fhir/OperationDefinition/Patient-match",
    ("Patient", "merge"): "http://hl7.org/fhir/OperationDefinition/Patient-merge",
    ("Patient", "ihe-pix"): "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix",
}


def _operation(rtype: str | None, name: str, base_url: str) -> dict:
    definition = _STANDARD_OPERATIONS.get((rtype, name)) or \
        f"{base_url}/OperationDefinition/{rtype + '-' if rtype else ''}{name}"
    return {"name": name, "definition": definition}


def capability_statement(registry: Registry, base_url: str, date: datetime, operations=()) -> dict:
    """``operations``: the (resource type or None, name) pairs the components registered.
    ``date``: when these capabilities came into being, the start of the hub process that serves
    them (hub.api.app.Hub). The package's release date is not known here, and the schema's
    migrations record no time; what a client can rely on changes only with a new process (new
    code, settings, registered operations), so the statement is as old as the process."""
    by_type: dict[str | None, list[str]] = {"Patient": ["everything"]}
    for rtype, name in operations:
        if name not in by_type.setdefault(rtype, []):
            by_type[rtype].append(name)
    resources = []
    for rtype in sorted(registry.resource_types):
        if rtype in ("Resource", "DomainResource"):
            continue
        params = []
        for code, sp in sorted(registry.for_type(rtype).items()):
            if sp.type == "special" or code in ("_text", "_content", "_list", "_query", "_filter"):
                continue
            params.append({"name": code, "definition": sp.url, "type": sp.type})
        resources.append({
            "type": rtype,
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
            "searchInclude": ["*"],
            "searchRevInclude": ["*"],
            "interaction": [{"code": c} for c in _INTERACTIONS],
            "searchParam": params,
            **({"operation": [_operation(rtype, n, base_url) for n in sorted(by_type[rtype])]}
               if rtype in by_type else {}),
        })
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date.isoformat(timespec="seconds"),
        "publisher": "Yilian",
        "kind": "instance",
        "software": {"name": "Yilian hub", "version": "0.1.0"},
        "implementation": {"description": "Yilian regional medical alliance hub", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": False,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "SMART-on-FHIR"}]}],
                "description": "OAuth2 bearer tokens with SMART v2 scopes; see .well-known/smart-configuration",
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                            {"code": "search-system"}],
            "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}]
            + [_operation(None, n, base_url) for n in sorted(by_type.get(None, []))],
        }],
    }


def smart_configuration(settings) -> dict:
    base = settings.fhir_base.rsplit("/fhir", 1)[0]
    return {
        "issuer": settings.token_issuer,
        "token_endpoint": f"{base}/oauth2/token",
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "user/*.cruds", "user/*.rs", "patient/*.rs"],
        "capabilities": ["client-confidential-symmetric", "permission-v2"],
    }
