"""Recognition reference data: what a region publishes, parsed and checked, as an immutable snapshot.

Four kinds (design/RECOGNITION.md "Reference data"), each published and versioned on its own:

``catalogue``
    ``item_std_code, name, category (LAB | IMAGING | US | ECG | …), scope, time_limit_days,
    requires_images[, loinc]`` — one row per item and scope (time limits are set per scope);
    ``loinc`` lists LOINC codes (``;``-separated) that identify the item when no local map does.
``scopes``
    ``scope_code, level (nation | province | city | alliance), parent, label, members`` — the
    display label is the HR mark (``鄂HR``, ``武汉HR``); ``members`` are alliance organization
    codes (``;``-separated); a scope also contains every member of the scopes below it.
``qualifications``
    ``organization, item_std_code, scope, qc_body, eqa_round, passed, valid_from, valid_to`` —
    EQA (室间质评) results; dates inclusive.
``codemaps``
    each hospital's local item codes → catalogue (and LOINC), in the lab code file format of
    ``terminology/README.md`` with an ``org_code`` column; kept as the ConceptMaps that
    :func:`terminology.labcodes.read_lab_code_csv` builds, and looked up through
    :class:`terminology.Terminology`.

CSV files are UTF-8 (with or without BOM) or GB18030; JSON is a list of row objects (for
``codemaps``: ConceptMaps or rows), or an object with one list per kind.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property

import orjson

from hub.errors import InvalidRequest
from hub.recognition import KINDS
from mappings.identity import organization_id
from terminology import Terminology, urls
from terminology.errors import TerminologyError
from terminology.labcodes import UNIT_PRODUCT_PROPERTY, _text, read_lab_code_csv

LEVELS = ("nation", "province", "city", "alliance")
CATALOGUE_SYSTEM = urls.code_system(urls.LAB_CATALOGUE)


class ReferenceDataError(InvalidRequest):
    """A reference data file that cannot be used; the message names the line and the column."""


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    item: str
    name: str
    category: str
    scope: str
    time_limit_days: int
    requires_images: bool
    loinc: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScopeDef:
    code: str
    level: str
    label: str
    parent: str | None
    members: frozenset[str]


@dataclass(frozen=True, slots=True)
class Qualification:
    organization: str
    item: str
    scope: str
    qc_body: str
    eqa_round: str
    passed: bool
    valid_from: date
    valid_to: date

    def evidence(self) -> str:
        state = "passed" if self.passed else "failed"
        return (f"{self.organization} {self.item} {self.scope}: {self.qc_body} EQA {self.eqa_round} {state}, "
                f"valid {self.valid_from.isoformat()}..{self.valid_to.isoformat()}")


# ------------------------------------------------------------------------------------ parsing

def _bool(value: str, where: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "y", "是", "t"):
        return True
    if v in ("0", "false", "no", "n", "否", "f", ""):
        return False
    raise ReferenceDataError(f"{where}: {value!r} is not a yes/no value")


def _date(value: str, where: str) -> date:
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ReferenceDataError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None


def _list(value) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").replace("|", ";").split(";") if v.strip()]


_COLUMNS = {
    "catalogue": ("item_std_code", "category", "scope", "time_limit_days", "requires_images"),
    "scopes": ("scope_code", "level", "label", "members"),
    "qualifications": ("organization", "item_std_code", "scope", "qc_body", "eqa_round", "passed",
                       "valid_from", "valid_to"),
}


def _rows(kind: str, data: bytes | str, fmt: str) -> list[tuple[str, dict]]:
    """(where, row) pairs from a CSV or JSON document."""
    if fmt == "json":
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ReferenceDataError(f"{kind}: not JSON: {e}") from None
        if isinstance(doc, dict):
            doc = doc.get(kind)
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise ReferenceDataError(f"{kind}: JSON must be a list of row objects")
        return [(f"{kind} row {i}", r) for i, r in enumerate(doc, start=1)]
    reader = csv.DictReader(io.StringIO(_text(data)))
    reader.fieldnames = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in _COLUMNS[kind] if c not in reader.fieldnames]
    if missing:
        raise ReferenceDataError(f"{kind} file: missing column(s) {', '.join(missing)}")
    out = []
    for line, row in enumerate(reader, start=2):
        row = {k: (v or "").strip() for k, v in row.items() if k}
        if any(row.values()):
            out.append((f"{kind} file line {line}", row))
    return out


def _need(row: dict, col: str, where: str) -> str:
    v = str(row.get(col, "") or "").strip()
    if not v:
        raise ReferenceDataError(f"{where}: empty {col}")
    return v


def parse(kind: str, data: bytes | str, fmt: str = "csv") -> list[dict]:
    """Check a published file of ``kind`` and return its rows in normal form (JSON-ready)."""
    if kind not in KINDS:
        raise ReferenceDataError(f"unknown reference data kind {kind!r}; one of {', '.join(KINDS)}")
    if fmt not in ("csv", "json"):
        raise ReferenceDataError(f"unknown format {fmt!r}: csv or json")
    if kind == "codemaps":
        return _parse_codemaps(data, fmt)
    out: list[dict] = []
    seen: set[tuple] = set()
    for where, row in _rows(kind, data, fmt):
        if kind == "catalogue":
            try:
                limit = int(_need(row, "time_limit_days", where))
            except ValueError:
                raise ReferenceDataError(f"{where}: time_limit_days {row['time_limit_days']!r} is not a number") from None
            if limit < 0:
                raise ReferenceDataError(f"{where}: time_limit_days must not be negative")
            r = {"item_std_code": _need(row, "item_std_code", where), "name": str(row.get("name") or ""),
                 "category": _need(row, "category", where).upper(), "scope": _need(row, "scope", where),
                 "time_limit_days": limit,
                 "requires_images": _bool(row.get("requires_images", ""), where),
                 "loinc": _list(row.get("loinc"))}
            key = (r["item_std_code"], r["scope"])
        elif kind == "scopes":
            level = _need(row, "level", where).lower()
            if level not in LEVELS:
                raise ReferenceDataError(f"{where}: level {level!r} is not one of {', '.join(LEVELS)}")
            r = {"scope_code": _need(row, "scope_code", where), "level": level,
                 "parent": str(row.get("parent") or "").strip() or None,
                 "label": _need(row, "label", where), "members": _list(row.get("members"))}
            key = (r["scope_code"],)
        else:
            r = {"organization": _need(row, "organization", where), "item_std_code": _need(row, "item_std_code", where),
                 "scope": _need(row, "scope", where), "qc_body": str(row.get("qc_body") or ""),
                 "eqa_round": str(row.get("eqa_round") or ""),
                 "passed": _bool(row.get("passed", ""), where),
                 "valid_from": _date(_need(row, "valid_from", where), where).isoformat(),
                 "valid_to": _date(_need(row, "valid_to", where), where).isoformat()}
            if r["valid_to"] < r["valid_from"]:
                raise ReferenceDataError(f"{where}: valid_to is before valid_from")
            key = (r["organization"], r["item_std_code"], r["scope"], r["eqa_round"])
        if key in seen:
            raise ReferenceDataError(f"{where}: {'/'.join(map(str, key))} is listed twice")
        seen.add(key)
        out.append(r)
    if kind == "scopes":
        _check_scope_tree(out)
    return out


def _parse_codemaps(data: bytes | str, fmt: str) -> list[dict]:
    try:
        if fmt == "csv":
            return read_lab_code_csv(_text(data))
        doc = orjson.loads(data)
    except TerminologyError as e:
        raise ReferenceDataError(f"codemaps: {e}") from None
    except orjson.JSONDecodeError as e:
        raise ReferenceDataError(f"codemaps: not JSON: {e}") from None
    if isinstance(doc, dict):
        doc = doc.get("codemaps")
    if not isinstance(doc, list):
        raise ReferenceDataError("codemaps: JSON must be a list of ConceptMaps or of lab code rows")
    maps = [d for d in doc if isinstance(d, dict) and d.get("resourceType") == "ConceptMap"]
    rows = [d for d in doc if isinstance(d, dict) and d.get("resourceType") != "ConceptMap"]
    if rows:  # rows in the lab code file's columns: through the same reader as the CSV
        buf = io.StringIO()
        cols = ["org_code", "local_system", "local_code", "local_display", "loinc", "catalogue_code", "unit_ucum"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") or "" for c in cols})
        try:
            maps.extend(read_lab_code_csv(buf.getvalue()))
        except TerminologyError as e:
            raise ReferenceDataError(f"codemaps: {e}") from None
    for m in maps:
        if not str(m.get("url", "")).startswith(urls.concept_map("lab-local-")):
            raise ReferenceDataError(f"codemaps: ConceptMap {m.get('url')!r} is not a lab-local map")
    return maps


def _check_scope_tree(rows: list[dict]) -> None:
    codes = {r["scope_code"] for r in rows}
    parent = {r["scope_code"]: r["parent"] for r in rows}
    for r in rows:
        if r["parent"] and r["parent"] not in codes:
            raise ReferenceDataError(f"scope {r['scope_code']}: parent {r['parent']!r} is not a scope of the file")
        seen, p = {r["scope_code"]}, r["parent"]
        while p:
            if p in seen:
                raise ReferenceDataError(f"scope {r['scope_code']}: the parent chain loops")
            seen.add(p)
            p = parent.get(p)


def split_release(data: bytes | str) -> dict[str, list[dict]]:
    """A JSON release with several kinds (``{"catalogue": [...], "scopes": [...], …}``)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ReferenceDataError(f"release: not JSON: {e}") from None
    if not isinstance(doc, dict) or not any(k in doc for k in KINDS):
        raise ReferenceDataError(f"release: a JSON object with one or more of {', '.join(KINDS)}")
    return {k: parse(k, orjson.dumps(doc[k]), "json") for k in KINDS if k in doc}


# ------------------------------------------------------------------------------------ snapshot

@dataclass
class Reference:
    """The reference data in force: one version of each kind, with lookups for the engine."""

    catalogue_rows: list[dict] = field(default_factory=list)
    scope_rows: list[dict] = field(default_factory=list)
    qualification_rows: list[dict] = field(default_factory=list)
    codemaps: list[dict] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    _item_memo: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_rows(cls, rows: dict[str, list[dict]], versions: dict[str, int] | None = None) -> Reference:
        return cls(rows.get("catalogue", []), rows.get("scopes", []), rows.get("qualifications", []),
                   rows.get("codemaps", []), dict(versions or {}))

    # -- catalogue
    @cached_property
    def catalogue(self) -> dict[str, list[CatalogueEntry]]:
        out: dict[str, list[CatalogueEntry]] = {}
        for r in self.catalogue_rows:
            out.setdefault(r["item_std_code"], []).append(CatalogueEntry(
                r["item_std_code"], r.get("name", ""), r["category"], r["scope"], int(r["time_limit_days"]),
                bool(r["requires_images"]), tuple(r.get("loinc") or ())))
        return out

    @cached_property
    def item_by_loinc(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in self.codemaps:  # rows that give both a LOINC and a catalogue code
            by_code: dict[tuple[str, str], dict[str, str]] = {}
            for g in m.get("group", []):
                for e in g.get("element", []):
                    for t in e.get("target", []):
                        if t.get("code"):
                            by_code.setdefault((g["source"], e["code"]), {})[g["target"]] = t["code"]
            for targets in by_code.values():
                if urls.LOINC in targets and CATALOGUE_SYSTEM in targets:
                    out.setdefault(targets[urls.LOINC], targets[CATALOGUE_SYSTEM])
        for item, entries in self.catalogue.items():  # the catalogue's own LOINC column wins
            for e in entries:
                for code in e.loinc:
                    out[code] = item
        return out

    # -- scopes
    @cached_property
    def scopes(self) -> dict[str, ScopeDef]:
        return {r["scope_code"]: ScopeDef(r["scope_code"], r["level"], r["label"], r.get("parent"),
                                          frozenset(r.get("members") or ())) for r in self.scope_rows}

    @cached_property
    def _members(self) -> dict[str, frozenset[str]]:
        children: dict[str, list[str]] = {}
        for s in self.scopes.values():
            if s.parent:
                children.setdefault(s.parent, []).append(s.code)

        def collect(code: str) -> frozenset[str]:
            acc = set(self.scopes[code].members)
            for c in children.get(code, ()):
                acc |= collect(c)
            return frozenset(acc)

        return {code: collect(code) for code in self.scopes}

    def members(self, scope: str) -> frozenset[str]:
        """Organizations inside ``scope``: its own members and those of every scope below it."""
        return self._members.get(scope, frozenset())

    def ancestors_or_self(self, scope: str) -> list[str]:
        out, p = [], scope
        while p and p in self.scopes and p not in out:
            out.append(p)
            p = self.scopes[p].parent
        return out

    def depth(self, scope: str) -> int:
        return len(self.ancestors_or_self(scope))

    def label(self, scope: str) -> str:
        s = self.scopes.get(scope)
        return s.label if s else scope

    @cached_property
    def organizations(self) -> frozenset[str]:
        orgs: set[str] = set()
        for s in self.scopes.values():
            orgs |= s.members
        orgs |= {q["organization"] for q in self.qualification_rows}
        return frozenset(orgs)

    @cached_property
    def orgs_by_id(self) -> dict[str, str]:
        """Organization resource id (``mappings.identity.organization_id``) → alliance code."""
        return {organization_id(code): code for code in self.organizations}

    # -- qualifications
    @cached_property
    def qualifications(self) -> dict[tuple[str, str], list[Qualification]]:
        out: dict[tuple[str, str], list[Qualification]] = {}
        for r in self.qualification_rows:
            out.setdefault((r["organization"], r["item_std_code"]), []).append(Qualification(
                r["organization"], r["item_std_code"], r["scope"], r.get("qc_body", ""), r.get("eqa_round", ""),
                bool(r["passed"]), date.fromisoformat(r["valid_from"]), date.fromisoformat(r["valid_to"])))
        return out

    # -- local code maps, through terminology
    @cached_property
    def terminology(self) -> Terminology:
        return Terminology(self.codemaps)

    @cached_property
    def mapped_orgs(self) -> frozenset[str]:
        return frozenset(m["url"].rsplit("lab-local-", 1)[1] for m in self.codemaps)

    def item_for(self, codings: Iterable[dict], org: str | None) -> tuple[str | None, str | None]:
        """The catalogue item a result's or an order's codings stand for, and the unit the
        organization reports it in (from its code map): a catalogue coding, else the
        organization's local code map, else LOINC. Answers are memoized (the snapshot is
        immutable; results repeat the same few hundred codes)."""
        codings = [c for c in codings if isinstance(c, dict) and c.get("code")]
        key = (org, tuple((c.get("system"), c["code"]) for c in codings))
        found = self._item_memo.get(key)
        if found is None:
            found = self._item_memo[key] = self._item_for(codings, org)
        return found

    def _item_for(self, codings: list[dict], org: str | None) -> tuple[str | None, str | None]:
        unit = None
        item = next((c["code"] for c in codings if c.get("system") == CATALOGUE_SYSTEM), None)
        if org and org in self.mapped_orgs:
            cm = urls.lab_local_concept_map(org)
            t = self.terminology
            for c in codings:
                systems = [c["system"]] if c.get("system") else [urls.local_code_system(org)]
                for system in systems:
                    for tr in t.translate(system, c["code"], target_system=CATALOGUE_SYSTEM, conceptmap_url=cm):
                        if tr.equivalence in ("equivalent", "equal", "wider", "subsumes"):
                            if item is None:
                                item = tr.code
                            if tr.code == item and unit is None:
                                unit = next((p.value for p in tr.products if p.property == UNIT_PRODUCT_PROPERTY), None)
        if item is None:
            item = next((self.item_by_loinc[c["code"]] for c in codings
                         if c.get("system") == urls.LOINC and c["code"] in self.item_by_loinc), None)
        return item, unit

    def codes_of(self, item: str) -> set[str]:
        """Every code that may stand for ``item`` in a stored result (catalogue, LOINC, local)."""
        codes = {item}
        codes |= {loinc for loinc, it in self.item_by_loinc.items() if it == item}
        for tr in self.terminology.translate(CATALOGUE_SYSTEM, item, reverse=True):
            codes.add(tr.code)
        return codes

    @cached_property
    def catalogue_codes(self) -> frozenset[str]:
        """Every code that may stand for some catalogue item (see :meth:`codes_of`)."""
        out: set[str] = set()
        for item in self.catalogue:
            out |= self.codes_of(item)
        return frozenset(out)

    def unit_of(self, item: str, org: str | None) -> str | None:
        """The unit ``org`` reports ``item`` in, per its code map."""
        if not org or org not in self.mapped_orgs:
            return None
        cm = urls.lab_local_concept_map(org)
        for tr in self.terminology.translate(CATALOGUE_SYSTEM, item, reverse=True, conceptmap_url=cm):
            units = [p.value for p in tr.products if p.property == UNIT_PRODUCT_PROPERTY]
            if units:
                return units[0]
        return None
