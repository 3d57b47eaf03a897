"""Registry of the FHIR R4 search parameters, per concrete resource type.

Built once (and cached) from the official R4 definitions shipped in
``hub/fhir/spec/`` (see ``hub/fhir/spec/PROVENANCE.md``):

* ``search-parameters.json`` -- every R4 SearchParameter
  (http://hl7.org/fhir/R4/searchparameter.html).  A definition may have several
  ``base`` types and then has one union expression ``A.x | B.y``; the registry
  splits it so that each :class:`SearchParam` carries only the branches that
  apply to its own base (search.html#table, "Multiple Resources").  Parameters
  defined on ``Resource``/``DomainResource`` (``_id``, ``_lastUpdated``,
  ``_tag``, ``_profile``, ``_security``, ``_source``, ``_text``, ``_content``,
  ``_query``) are copied to every concrete type they apply to, with the
  expression rewritten to start with that type (``Observation.meta.tag``).
* ``compartmentdefinition-patient.json`` -- the Patient compartment
  (http://hl7.org/fhir/R4/compartmentdefinition-patient.html).

R4 SearchParameter resources carry no ``modifier`` element, so the allowed
modifiers are the defaults of search.html#modifiers for each parameter type;
comparators (search.html#prefix) come from ``SearchParameter.comparator`` and
default to all nine prefixes for ordered types (number, date, quantity).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from collections.abc import Mapping

from hub.fhir.search.fhirpath import split_union

__all__ = ["SearchParam", "Registry", "get_registry", "SPEC_DIR"]

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec"

ALL_COMPARATORS = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

# Default modifiers per parameter type, FHIR R4 search.html#modifiers.  For reference
# parameters the ``:[type]`` modifier is implied by ``SearchParam.targets``.
DEFAULT_MODIFIERS: dict[str, tuple[str, ...]] = {
    "string": ("missing", "exact", "contains"),
    "token": ("missing", "text", "not", "above", "below", "in", "not-in", "of-type"),
    "reference": ("missing", "type", "identifier", "above", "below"),
    "date": ("missing",),
    "number": ("missing",),
    "quantity": ("missing",),
    "uri": ("missing", "above", "below"),
    "composite": ("missing",),
    "special": (),
}

# Resource types that specialise Resource directly, not DomainResource (resource.html):
# DomainResource parameters (``_text``) do not apply to them.
NON_DOMAIN_RESOURCES = frozenset({"Binary", "Bundle", "Parameters"})

# Known errors in the R4 4.0.1 definitions, corrected here (the data files are kept
# verbatim).  DocumentReference-relationship pairs the component *definitions* the
# wrong way round: "relatesto" (a reference) with expression ``code`` and "relation"
# (a token) with ``target``.  The composite is "relation code $ target reference".
_COMPONENT_FIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "http://hl7.org/fhir/SearchParameter/DocumentReference-relationship": (
        ("relation", "code"),
        ("relatesto", "target"),
    ),
}


@dataclass(frozen=True)
class SearchParam:
    """One search parameter as it applies to one concrete resource type.

    ``expression`` is the FHIRPath restricted to ``resource_type`` (``None`` for
    ``_text``/``_content``/``_query``, which have none).  ``components`` is, for
    ``composite`` parameters only, ``(component parameter code, expression relative to
    each node selected by expression)`` (search.html#composite).
    """

    resource_type: str
    code: str
    type: str
    expression: str | None
    targets: tuple[str, ...]
    modifiers: tuple[str, ...]
    comparators: tuple[str, ...]
    components: tuple[tuple[str, str], ...]
    url: str
    description: str = ""
    #: parameters whose index rows are all rows of this one too (:func:`covering_params`): this
    #: parameter stores only the rows they lack, and a search on it looks at its rows and theirs
    stored_with: tuple[str, ...] = ()

    @property
    def stored_codes(self) -> tuple[str, ...]:
        """The ``param`` values under which this parameter's index rows are stored."""
        return (self.code, *self.stored_with)


def _strip_parens(expr: str) -> str:
    """Remove parentheses that wrap the whole of ``expr``: ``(A.b)`` -> ``A.b``."""
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0 and i != len(expr) - 1:
                    return expr  # "(a) | (b)": outer parens are not a pair
        expr = expr[1:-1].strip()
    return expr


def _leading_name(expr: str) -> str:
    expr = expr.lstrip("( ")
    end = 0
    while end < len(expr) and (expr[end].isalnum() or expr[end] == "_"):
        end += 1
    return expr[:end]


def restrict_expression(expression: str, base: str, bases: list[str]) -> str | None:
    """The branches of a (possibly multi-base) union expression that apply to ``base``.

    ``"Account.subject.where(resolve() is Patient) | Condition.subject"`` restricted to
    ``Condition`` is ``"Condition.subject"``.  Branches that start with none of the
    declared bases (R4 ``InsurancePlan-name`` is ``"name | alias"``) are taken as
    relative to the base.
    """
    parts = [_strip_parens(p) for p in split_union(expression)]
    mine = []
    for p in parts:
        lead = _leading_name(p)
        if lead == base:
            mine.append(p)
        elif lead not in bases and lead[:1].islower():
            mine.append(f"{base}.{p}")
    return " | ".join(mine) if mine else None


def _row_shape(sp: SearchParam) -> tuple | None:
    """What, besides the selected values, decides a parameter's index rows; None when the
    parameter has no rows of its own (``_id``, ``_lastUpdated``, special, no expression)."""
    if not sp.expression or sp.type == "special" or sp.code in ("_id", "_lastUpdated"):
        return None
    if sp.type == "reference":
        return ("reference", sp.targets)  # a bare id takes the type of a one-target parameter
    if sp.type == "composite":
        return ("composite", tuple(expr for _, expr in sp.components), len(sp.components))
    return (sp.type,)


def covering_params(by_code: Mapping[str, SearchParam]) -> dict[str, tuple[str, ...]]:
    """For each parameter P of one resource type, the parameters Q whose index rows are all
    rows of P as well, so that P need store only the rest: Q's union branches are among P's
    (``Observation.code`` in ``Observation.code | Observation.component.code``) and the rows
    of both come out of the values alike (same type; a reference's targets; a composite's
    component expressions). Rows are made per selected value (per selected node for a
    composite), so rows(P) = rows(its own branches) ⊇ rows(Q).

    Only bases that are themselves stored whole are named, all of them: P's rows are then
    exactly its stored rest plus the stored rows of its bases. Of two parameters with the same
    branches (Patient ``name`` and ``phonetic``) the first by code is stored whole.
    Composites compare component types by the components' expressions, whose parameters
    differ (``combo-code`` and ``code`` both select ``code``), and both components' types.
    """
    branches: dict[str, frozenset[str]] = {}
    shapes: dict[str, tuple] = {}
    for code, sp in by_code.items():
        shape = _row_shape(sp)
        if shape is None:
            continue
        if sp.type == "composite":
            shape += (tuple(by_code[c].type if c in by_code else "token" for c, _ in sp.components),)
        shapes[code] = shape
        branches[code] = frozenset(_strip_parens(p) for p in split_union(sp.expression))

    def covers(p: str, q: str) -> bool:
        return (p != q and shapes[p] == shapes[q] and branches[q] <= branches[p]
                and (branches[q] != branches[p] or q < p))

    whole = {q for q in branches if not any(covers(q, o) for o in branches)}
    out: dict[str, tuple[str, ...]] = {}
    for p in branches:
        bases = tuple(sorted(q for q in whole if covers(p, q)))
        if bases:
            out[p] = bases
    return out


class Registry:
    """Search parameters by resource type and code (see module docstring)."""

    def __init__(self, search_parameters: list[dict], compartment: dict):
        by_url = {sp["url"]: sp for sp in search_parameters}
        concrete: set[str] = set()
        for sp in search_parameters:
            concrete.update(b for b in sp["base"] if b not in ("Resource", "DomainResource"))
        compartment_map: dict[str, tuple[str, ...]] = {}
        for entry in compartment.get("resource", []):
            concrete.add(entry["code"])
            compartment_map[entry["code"]] = tuple(entry.get("param", ()))
        self.resource_types: frozenset[str] = frozenset(concrete)

        params: dict[str, dict[str, SearchParam]] = {t: {} for t in sorted(concrete)}
        for sp in search_parameters:
            for base in sp["base"]:
                if base == "Resource":
                    applies = sorted(concrete)
                elif base == "DomainResource":
                    applies = sorted(concrete - NON_DOMAIN_RESOURCES)
                else:
                    applies = [base]
                for rtype in applies:
                    param = self._make(sp, base, rtype, by_url)
                    params[rtype][param.code] = param
        for by_code in params.values():
            for code, bases in covering_params(by_code).items():
                by_code[code] = replace(by_code[code], stored_with=bases)
        self._params = {t: MappingProxyType(p) for t, p in params.items()}
        self._compartment = compartment_map

    @staticmethod
    def _make(sp: dict, base: str, rtype: str, by_url: dict[str, dict]) -> SearchParam:
        expression = sp.get("expression")
        if expression:
            if base in ("Resource", "DomainResource"):
                expression = " | ".join(
                    rtype + p[len(base):] if _leading_name(p) == base else p
                    for p in (_strip_parens(x) for x in split_union(expression))
                )
            else:
                expression = restrict_expression(expression, base, sp["base"])
        ptype = sp["type"]
        components: tuple[tuple[str, str], ...] = ()
        if ptype == "composite":
            components = _COMPONENT_FIXES.get(sp["url"]) or tuple(
                (by_url[c["definition"]]["code"] if c["definition"] in by_url
                 else c["definition"].rsplit("/", 1)[-1], c["expression"])
                for c in sp.get("component", ())
            )
        comparators = tuple(sp.get("comparator") or ())
        if not comparators and ptype in ("number", "date", "quantity"):
            comparators = ALL_COMPARATORS
        modifiers = tuple(sp.get("modifier") or DEFAULT_MODIFIERS.get(ptype, ()))
        return SearchParam(
            resource_type=rtype,
            code=sp["code"],
            type=ptype,
            expression=expression,
            targets=tuple(sp.get("target") or ()),
            modifiers=modifiers,
            comparators=comparators,
            components=components,
            url=sp["url"],
            description=sp.get("description", ""),
        )

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        """The parameter ``code`` of ``resource_type``, or ``None``."""
        by_code = self._params.get(resource_type)
        return by_code.get(code) if by_code is not None else None

    def for_type(self, resource_type: str) -> dict[str, SearchParam]:
        """All parameters of ``resource_type`` incl. Resource/DomainResource ones, by code.

        Returns a new dict (empty for an unknown type); the SearchParams are shared.
        """
        return dict(self._params.get(resource_type, {}))

    def view(self, resource_type: str) -> Mapping[str, SearchParam]:
        """Read-only, non-copying view of :meth:`for_type` (for hot paths)."""
        return self._params.get(resource_type, MappingProxyType({}))

    def compartment_params(self, resource_type: str) -> tuple[str, ...]:
        """Parameters that put a ``resource_type`` resource in a Patient's compartment.

        From the R4 Patient CompartmentDefinition (compartmentdefinition-patient.html):
        ``Observation`` -> ``("subject", "performer")``; ``()`` for types never in it.
        """
        return self._compartment.get(resource_type, ())


def load_registry(spec_dir: Path = SPEC_DIR) -> Registry:
    """Build a :class:`Registry` from the spec files in ``spec_dir`` (uncached)."""
    sp_doc = json.loads((spec_dir / "search-parameters.json").read_text(encoding="utf-8"))
    if "searchParameters" in sp_doc:
        params = sp_doc["searchParameters"]
    else:  # an unreduced R4 Bundle of SearchParameter resources
        params = [e["resource"] for e in sp_doc["entry"]]
    compartment = json.loads((spec_dir / "compartmentdefinition-patient.json").read_text(encoding="utf-8"))
    return Registry(params, compartment)


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry of R4 search parameters (loaded once)."""
    return load_registry()
