"""Hospital-local laboratory codes → LOINC and regional catalogue codes, as ConceptMaps.

Each member hospital publishes a CSV file (format in ``terminology/README.md``) with one row per
local lab item::

    local_system,local_code,local_display,loinc,catalogue_code,unit_ucum

It becomes one FHIR ConceptMap per organization (``{base}/ConceptMap/lab-local-{org}``) with a
group from the local system to LOINC and one to the regional catalogue (design/RECOGNITION.md,
"Local code maps"). The unit the hospital reports the item in travels on each target as a
``product`` (property :data:`UNIT_PRODUCT_PROPERTY`, system UCUM), so the hub can convert result
values (``terminology.ucum.convert``) when it compares results across hospitals.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from terminology import ucum, urls
from terminology.errors import InvalidResource

#: ConceptMap target.product.property that carries the reported unit (UCUM code).
UNIT_PRODUCT_PROPERTY = "http://hl7.org/fhir/StructureDefinition/Quantity#Quantity.code"

COLUMNS = ("local_system", "local_code", "local_display", "loinc", "catalogue_code", "unit_ucum")
_REQUIRED = ("local_code", "local_display", "loinc", "catalogue_code", "unit_ucum")


def _text(source: str | Path | bytes | TextIO) -> str:
    if isinstance(source, Path):
        source = source.read_bytes()
    if isinstance(source, bytes):
        try:
            return source.decode("utf-8-sig")
        except UnicodeDecodeError:  # files saved by Excel on Chinese Windows
            return source.decode("gb18030")
    if isinstance(source, str):
        return source
    return source.read()


def read_lab_code_csv(source: str | Path | bytes | TextIO, org_code: str | None = None, *,
                      base: str = urls.DEFAULT_HUB_BASE, catalogue_system: str | None = None) -> list[dict]:
    """Read a local lab code file and return its ConceptMaps (one per organization).

    ``source`` is a path, the file's bytes (UTF-8, with or without BOM, or GB18030) or its text.
    Without ``org_code`` the file must have an ``org_code`` column. A blank ``local_system``
    means :func:`terminology.urls.local_code_system` of the organization. ``unit_ucum`` should be
    UCUM; every unit goes through :func:`terminology.ucum.from_local`, so common local spellings
    (``10^9/L``, ``mmol/l``) are accepted and stored in one form (``10*9/L``, ``mmol/L``). Blank ``loinc`` / ``catalogue_code`` mean "no such
    code" and are recorded as unmatched.

    Raises :class:`~terminology.errors.InvalidResource` naming the line for a missing column, an
    empty code, an unknown unit or a local code listed twice.
    """
    reader = csv.DictReader(io.StringIO(_text(source)))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [c for c in _REQUIRED if c not in header]
    if org_code is None and "org_code" not in header:
        missing.append("org_code")
    if missing:
        raise InvalidResource(f"lab code file: missing column(s) {', '.join(missing)}")
    catalogue = catalogue_system or urls.code_system(urls.LAB_CATALOGUE, base)
    rows_by_org: dict[str, list[dict]] = {}
    seen: set[tuple[str, str, str]] = set()
    for line, row in enumerate(reader, start=2):
        row = {k: (v or "").strip() for k, v in row.items() if k}
        if not any(row.values()):
            continue
        org = org_code or row.get("org_code", "")
        if not org:
            raise InvalidResource(f"lab code file line {line}: empty org_code")
        if not row["local_code"]:
            raise InvalidResource(f"lab code file line {line}: empty local_code")
        system = row.get("local_system") or urls.local_code_system(org, "lab", base)
        key = (org, system, row["local_code"])
        if key in seen:
            raise InvalidResource(f"lab code file line {line}: local code {row['local_code']!r} listed twice")
        seen.add(key)
        unit = row["unit_ucum"]
        if unit:
            normalized = ucum.from_local(unit)  # also tidies valid-but-odd forms: 10^3/uL → 10*3/uL
            if normalized is None:
                raise InvalidResource(f"lab code file line {line}: unit {unit!r} is not UCUM")
            unit = normalized
        rows_by_org.setdefault(org, []).append({**row, "local_system": system, "unit_ucum": unit})
    return [_concept_map(org, rows, catalogue, base) for org, rows in rows_by_org.items()]


def _concept_map(org: str, rows: Iterable[dict], catalogue_system: str, base: str) -> dict:
    groups: dict[tuple[str, str], dict] = {}
    for row in rows:
        for target_system, column in ((urls.LOINC, "loinc"), (catalogue_system, "catalogue_code")):
            group = groups.setdefault((row["local_system"], target_system), {
                "source": row["local_system"], "target": target_system, "element": []})
            target: dict = {"equivalence": "equivalent"} if row[column] else {"equivalence": "unmatched"}
            if row[column]:
                target["code"] = row[column]
                if row["unit_ucum"]:
                    target["product"] = [{"property": UNIT_PRODUCT_PROPERTY, "system": urls.UCUM,
                                          "value": row["unit_ucum"]}]
            element = {"code": row["local_code"], "target": [target]}
            if row["local_display"]:
                element["display"] = row["local_display"]
            group["element"].append(element)
    url = urls.lab_local_concept_map(org, base)
    return {
        "resourceType": "ConceptMap", "id": f"lab-local-{org}", "url": url, "name": f"LabLocal_{org}",
        "status": "active",
        "description": f"Local laboratory codes of organization {org} mapped to LOINC and the regional "
                       "catalogue (from the organization's lab code file).",
        "group": list(groups.values()),
    }
