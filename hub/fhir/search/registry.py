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
import re
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
    #: when not empty, this parameter stores no rows at all (:func:`covering_params`): its rows are
    #: exactly those stored under each ``(param, target_type)`` listed, ``target_type`` None for all
    #: of that parameter's rows, else only its rows of that target type (a search, :missing,
    #: _sort, _include, chains, _has and compartments read those instead)
    derived_from: tuple[tuple[str, str | None], ...] = ()

    @property
    def stored_as(self) -> tuple[tuple[str, str | None], ...]:
        """``(param, target_type or None)`` of every stored row set this parameter's rows are
        the union of: its own (``(code, None)``) unless it is derived, plus those it shares."""
        if self.derived_from:
            return self.derived_from
        return ((self.code, None), *((c, None) for c in self.stored_with))

    @property
    def stored_codes(self) -> tuple[str, ...]:
        """The ``param`` values under which this parameter's index rows are stored."""
        return tuple(dict.fromkeys(c for c, _ in self.stored_as))


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


def _typed_branch(branch: str) -> tuple[str, str] | None:
    """``X.where(resolve() is T)`` -> ``(X, T)``; None for any other branch."""
    m = _RESOLVE_IS.match(branch)
    return (m.group(1), m.group(2)) if m else None


_RESOLVE_IS = re.compile(r"^(.+)\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\)$")


def covering_params(by_code: Mapping[str, SearchParam]) -> dict[str, tuple[tuple[str, ...], tuple]]:
    """For each parameter P of one resource type whose rows are, wholly or partly, rows of other
    stored parameters Q: ``(stored_with, derived_from)`` (see :class:`SearchParam`).

    Rule 1 (union): Q's union branches are among P's (``Observation.code`` in ``Observation.code
    | Observation.component.code``) and the rows of both come out of the values alike (same type;
    a reference's targets; a composite's component expressions). Rows are made per selected
    value (per selected node for a composite), so rows(P) = ∪ rows(its branches) ⊇ rows(Q).
    When those Q's branches together are all of P's, rows(P) = ∪ rows(Q) exactly and P stores
    nothing (``derived_from``, Observation ``combo-code`` from ``code`` and ``component-code``);
    else P stores the rows they lack (``stored_with``). Of two parameters with the same branches
    (Patient ``name`` and ``phonetic``) the first by code is stored. Composites compare
    component types by the components' expressions, whose parameters differ (``combo-code`` and
    ``code`` both select ``code``), and both components' types.

    Rule 2 (type filter): every branch of a reference parameter P is ``X.where(resolve() is T)``
    and each X is a branch of a stored reference parameter Q whose every branch ``c`` is X-like
    for P (``c.where(resolve() is T)`` is a branch of P): then rows(P) = Q's rows whose
    ``target_type`` is T (Observation ``patient`` = ``subject`` rows of target type Patient).
    Exact because ``resolve() is T`` (:func:`hub.fhir.search.fhirpath.reference_target_type`)
    and the stored target type (``hub.fhir.search.extract.reference_rows``) read the type alike
    (:func:`hub.fhir.search.fhirpath.parse_literal_reference`, else ``Reference.type``; an
    embedded resource's own type), and each selected Reference makes the
    same row for P and Q, but for the type of a bare id, which a one-target parameter takes
    from its target: so Q must not have exactly one target, P's one target (if one) must be T,
    and T must be one of Q's targets (an embedded resource makes a row only then).
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

    def type_filtered(p: str) -> tuple[tuple[str, str], ...] | None:
        sp = by_code[p]
        if sp.type != "reference":
            return None
        typed = [_typed_branch(b) for b in branches[p]]
        if not typed or None in typed:
            return None
        found = []
        for x, t in typed:
            if len(sp.targets) == 1 and sp.targets != (t,):
                return None
            source = None
            for q in sorted(whole):
                sq = by_code[q]
                if (q != p and sq.type == "reference" and x in branches[q] and len(sq.targets) != 1
                        and t in sq.targets
                        and all(f"{c}.where(resolve() is {t})" in branches[p] for c in branches[q])):
                    source = q
                    break
            if source is None:
                return None
            found.append((source, t))
        return tuple(sorted(set(found)))

    derived = {p: d for p in whole if (d := type_filtered(p))}
    out: dict[str, tuple[tuple[str, ...], tuple]] = {p: ((), d) for p, d in derived.items()}
    for p in branches:
        if p in whole:
            continue
        bases = tuple(sorted(q for q in whole if covers(p, q)))
        if not bases:
            continue
        if frozenset().union(*(branches[q] for q in bases)) == branches[p]:
            # every base's rows, read where they are stored (a base may itself be type-filtered)
            sources = [s for q in bases for s in (derived.get(q) or ((q, None),))]
            out[p] = ((), tuple(dict.fromkeys(sources)))
        else:
            out[p] = (tuple(q for q in bases if q not in derived), ())
            if not out[p][0]:
                del out[p]
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
            for code, (bases, sources) in covering_params(by_code).items():
                by_code[code] = replace(by_code[code], stored_with=bases, derived_from=sources)
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
