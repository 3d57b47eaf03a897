"""``_summary`` and ``_elements`` (search.html#summary, search.html#elements).

Summary elements come from the R4B models' own ``isSummary`` flags, read once per type.
Returned resources are marked SUBSETTED (v3-ObservationValue) as the specification asks.
"""

from __future__ import annotations

from functools import lru_cache

from hub.fhir.validation import model_class

_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS = ("resourceType", "id", "meta")


@lru_cache(maxsize=None)
def summary_elements(resource_type: str) -> frozenset[str]:
    cls = model_class(resource_type)
    out = set(_ALWAYS)
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra or {}
        if isinstance(extra, dict) and extra.get("summary_element_property"):
            out.add(f.alias or name)
    return frozenset(out)


def _mark(res: dict) -> dict:
    meta = dict(res.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = tags + [_SUBSETTED]
    res["meta"] = meta
    return res


def apply_summary(res: dict, mode: str) -> dict:
    rtype = res.get("resourceType", "")
    if mode in ("false", "count"):
        return res
    if mode == "true":
        keep = summary_elements(rtype)
        return _mark({k: v for k, v in res.items() if k in keep})
    if mode == "text":
        keep = {"resourceType", "id", "meta", "text"} | _mandatory(rtype)
        return _mark({k: v for k, v in res.items() if k in keep})
    if mode == "data":
        return _mark({k: v for k, v in res.items() if k != "text"})
    return res


@lru_cache(maxsize=None)
def _mandatory(resource_type: str) -> frozenset[str]:
    cls = model_class(resource_type)
    return frozenset((f.alias or n) for n, f in cls.model_fields.items()
                     if (f.json_schema_extra or {}).get("element_required"))


def apply_elements(res: dict, elements: list[str]) -> dict:
    keep = set(_ALWAYS) | {e.split(".")[0] for e in elements}
    return _mark({k: v for k, v in res.items() if k in keep})
