"""Resource validation with the fhir.resources R4B models (R4 JSON on the wire).

See http.html#create: a body that is not a valid resource is refused with 400/422 and an
OperationOutcome naming the element at fault.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import orjson

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

from hub.errors import InvalidResource, NotSupported
from hub.fhir.search.registry import get_registry


@lru_cache(maxsize=None)
def model_class(resource_type: str):
    if resource_type not in get_registry().resource_types:
        raise NotSupported(f"unknown resource type {resource_type!r}")
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError) as e:
        raise NotSupported(f"unknown resource type {resource_type!r}") from e


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validate_resource(resource: dict, expected_type: str | None = None) -> None:
    """Raise :class:`InvalidResource` listing every invalid element, or return silently."""
    if not isinstance(resource, dict):
        raise InvalidResource("the body is not a JSON object")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise InvalidResource("resourceType is missing", expression=["resourceType"])
    if expected_type and rtype != expected_type:
        raise InvalidResource(
            f"resourceType {rtype!r} does not match the endpoint's type {expected_type!r}",
            expression=["resourceType"],
        )
    cls = model_class(rtype)
    try:
        model = cls.model_validate(resource)
    except ValidationError as e:
        issues = []
        paths = []
        for err in e.errors()[:20]:
            path = _location(tuple(p for p in err.get("loc", ()) if p != "__root__"))
            paths.append(f"{rtype}.{path}" if path else rtype)
            issues.append(f"{paths[-1]}: {err.get('msg')}")
        raise InvalidResource("; ".join(issues), expression=paths) from None
    except (ValueError, TypeError) as e:  # raised by some root validators
        raise InvalidResource(f"{rtype}: {e}") from None
    bad = _enum_violations(model, rtype)
    if bad:
        raise InvalidResource("; ".join(f"{p}: {v!r} is not one of the codes the element's required binding "
                                        f"allows ({', '.join(sorted(allowed))})" for p, v, allowed in bad[:10]),
                              expression=[p for p, _, _ in bad[:10]])


@lru_cache(maxsize=None)
def _fields(cls) -> tuple[tuple[str, str, frozenset[str] | None], ...]:
    """(attribute, JSON name, allowed codes or None) of the elements worth visiting: those with
    a required binding's codes (the R4B models record them as ``enum_values`` but do not
    enforce them) and those holding nested elements. Primitive elements without codes are
    skipped, which is most of them."""
    out = []
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        enums = _complete_codes(tuple(extra["enum_values"])) if extra.get("enum_values") else None
        # primitives have a sibling "<name>__ext" field for their extensions; complex ones do not
        if enums or f"{name}__ext" not in cls.model_fields:
            out.append((name, f.alias or name, enums))
    return tuple(out)


@lru_cache(maxsize=1)
def _fhir_code_systems() -> tuple[frozenset[str], ...]:
    path = Path(__file__).resolve().parent / "spec" / "fhir-code-systems.json"
    return tuple(frozenset(codes) for codes in orjson.loads(path.read_bytes()).values())


@lru_cache(maxsize=None)
def _complete_codes(enums: tuple[str, ...]) -> frozenset[str]:
    """The codes a required binding allows. The R4B models list them only up to a "+" where the
    value set is longer (Observation.status stops at ``amended``, leaving out ``corrected``,
    ``cancelled``, ``entered-in-error`` and ``unknown``); such a list is completed with the
    smallest FHIR code system containing every listed code (``spec/fhir-code-systems.json``)."""
    listed = frozenset(c for c in enums if c != "+")
    if "+" not in enums:
        return listed
    supersets = [cs for cs in _fhir_code_systems() if listed <= cs]
    if not supersets:
        return listed
    return listed | min(supersets, key=len)


def _enum_violations(model: BaseModel, path: str) -> list[tuple[str, str, frozenset[str]]]:
    out: list[tuple[str, str, frozenset[str]]] = []
    for name, alias, enums in _fields(type(model)):
        value = getattr(model, name, None)
        if value is None:
            continue
        items = value if isinstance(value, list) else (value,)
        for i, item in enumerate(items):
            if enums is not None and isinstance(item, str):
                if item not in enums:
                    where = f"{path}.{alias}" + (f"[{i}]" if isinstance(value, list) else "")
                    out.append((where, item, enums))
            elif isinstance(item, BaseModel):
                out.extend(_enum_violations(item, f"{path}.{alias}" + (f"[{i}]" if isinstance(value, list) else "")))
    return out
