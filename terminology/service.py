"""The in-memory terminology service: code systems, value sets and concept maps.

Implements the logic behind the FHIR R4 terminology operations (terminology-service.html):
``CodeSystem/$lookup``, ``ValueSet/$validate-code``, ``ValueSet/$expand`` and
``ConceptMap/$translate``. The hub serves them over REST; this module has no I/O besides reading
the packaged JSON once.

Concurrency: the loaded content lives in an immutable snapshot (``_State``). ``add`` builds a new
snapshot beside the current one and publishes it with a single attribute assignment, so readers
on other threads always see a complete, consistent state and never need a lock. Writers must be
serialized by the caller (the hub adds resources from one place); ``add_all`` adds many at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terminology import ucum, urls
from terminology.errors import InvalidResource, NotSupported, UnknownConceptMap, UnknownValueSet
from terminology.model import Concept, Designation, LookupResult, Product, Property, Translation

try:  # orjson is a dependency of the hub; fall back to json for tools run without it
    import orjson as _json_impl

    def _loads(data: bytes) -> Any:
        return _json_impl.loads(data)
except ImportError:  # pragma: no cover
    import json as _json_impl

    def _loads(data: bytes) -> Any:
        return _json_impl.loads(data.decode("utf-8"))

DATA_DIR = Path(__file__).resolve().parent / "packaged"

#: ConceptMap equivalences seen from the target side (for ``reverse`` translation).
_REVERSED_EQUIVALENCE = {"wider": "narrower", "narrower": "wider", "subsumes": "specializes",
                         "specializes": "subsumes"}
#: Equivalences that say "this is not a match" (conceptmap-equivalence).
_NO_MATCH = {"unmatched", "disjoint"}


# ------------------------------------------------------------------------------------------------
# Indexes
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CodeSystemIndex:
    """A loaded CodeSystem: its concepts by code, hierarchy, and the raw resource."""

    url: str
    version: str | None
    name: str | None
    content: str
    case_sensitive: bool | None
    concepts: dict[str, Concept]
    resource: dict
    folded: dict[str, str] = field(default_factory=dict)  # casefolded code → code (case-insensitive)

    def get(self, code: str) -> Concept | None:
        concept = self.concepts.get(code)
        if concept is None and self.case_sensitive is False:
            real = self.folded.get(code.casefold())
            concept = self.concepts.get(real) if real else None
        return concept

    def descendants(self, code: str) -> list[str]:
        """All codes below ``code`` in the is-a hierarchy (not including it), depth first."""
        out: list[str] = []
        seen = {code}
        stack = list(reversed(self.concepts[code].children)) if code in self.concepts else []
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            out.append(c)
            stack.extend(reversed(self.concepts[c].children if c in self.concepts else ()))
        return out


@dataclass(frozen=True, slots=True)
class _Target:
    conceptmap: str
    source_system: str
    source_code: str
    target_system: str
    target_code: str
    display: str | None
    equivalence: str
    comment: str | None
    products: tuple[Product, ...]


@dataclass(frozen=True, slots=True)
class _Unmapped:
    conceptmap: str
    source_system: str
    target_system: str | None
    mode: str
    code: str | None
    display: str | None


@dataclass(frozen=True, slots=True)
class ConceptMapIndex:
    url: str
    resource: dict
    forward: dict[tuple[str, str], tuple[_Target, ...]]  # (source system, code) → targets
    mapped_keys: frozenset[tuple[str, str, str | None]]  # (source system, code, target system)
    unmapped: tuple[_Unmapped, ...]


@dataclass(frozen=True)
class _State:
    """One immutable snapshot of everything loaded."""

    code_systems: dict[str, dict[str | None, CodeSystemIndex]]   # url → version → index
    latest_cs: dict[str, CodeSystemIndex]
    supplements: dict[str, tuple[dict, ...]]                       # base url → supplement resources
    value_sets: dict[str, dict[str | None, dict]]
    latest_vs: dict[str, dict]
    concept_maps: dict[str, ConceptMapIndex]
    forward: dict[tuple[str, str], tuple[str, ...]]                # (system, code) → map urls
    reverse: dict[tuple[str, str], tuple[_Target, ...]]            # (target system, code) → targets
    unmapped_by_system: dict[str, tuple[str, ...]]                 # source system → map urls
    expansions: dict = field(default_factory=dict, compare=False)  # memo, per snapshot

    @classmethod
    def empty(cls) -> _State:
        return cls({}, {}, {}, {}, {}, {}, {}, {}, {})


# ------------------------------------------------------------------------------------------------
# Building indexes from FHIR JSON
# ------------------------------------------------------------------------------------------------

_VALUE_KEYS = ("valueCode", "valueString", "valueBoolean", "valueInteger", "valueDecimal",
               "valueDateTime", "valueCoding")


def _property(p: dict) -> Property:
    for key in _VALUE_KEYS:
        if key in p:
            return Property(p["code"], p[key], key[5].lower() + key[6:])
    raise InvalidResource(f"concept property {p.get('code')!r} has no value")


def _designation(d: dict) -> Designation:
    use = d.get("use")
    return Designation(d["value"], d.get("language"), (use.get("system"), use.get("code")) if use else None)


def _index_code_system(cs: dict, supplements: Iterable[dict] = ()) -> CodeSystemIndex:
    """Flatten CodeSystem.concept (nested = is-a, plus ``parent``/``child``/``subsumedBy``
    properties, codesystem.html#hierarchy) into a dict of :class:`Concept`."""
    url = cs.get("url")
    if not url:
        raise InvalidResource("CodeSystem without url")
    raw: dict[str, dict] = {}
    parents: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}

    def link(parent: str, child: str) -> None:
        if parent not in parents.setdefault(child, []):
            parents[child].append(parent)
        if child not in children.setdefault(parent, []):
            children[parent].append(child)

    def walk(concepts: list[dict], parent: str | None) -> None:
        for c in concepts:
            code = c.get("code")
            if code is None:
                raise InvalidResource(f"CodeSystem {url}: concept without code")
            raw[code] = c
            if parent is not None:
                link(parent, code)
            for p in c.get("property", []):
                if p.get("code") in ("parent", "subsumedBy") and "valueCode" in p:
                    link(p["valueCode"], code)
                elif p.get("code") == "child" and "valueCode" in p:
                    link(code, p["valueCode"])
            walk(c.get("concept", []), code)

    walk(cs.get("concept", []), None)
    extra_designations: dict[str, list[Designation]] = {}
    extra_properties: dict[str, list[Property]] = {}
    for sup in supplements:
        for c in _iter_concepts(sup.get("concept", [])):
            extra_designations.setdefault(c["code"], []).extend(_designation(d) for d in c.get("designation", []))
            extra_properties.setdefault(c["code"], []).extend(_property(p) for p in c.get("property", []))
    concepts = {
        code: Concept(
            code=code, display=c.get("display"), definition=c.get("definition"),
            designations=tuple(_designation(d) for d in c.get("designation", [])) + tuple(extra_designations.get(code, ())),
            properties=tuple(_property(p) for p in c.get("property", [])
                             if p.get("code") not in ("parent", "child", "subsumedBy"))
                       + tuple(extra_properties.get(code, ())),
            parents=tuple(parents.get(code, ())), children=tuple(children.get(code, ())))
        for code, c in raw.items()
    }
    case_sensitive = cs.get("caseSensitive")
    return CodeSystemIndex(
        url=url, version=cs.get("version"), name=cs.get("name") or cs.get("title"),
        content=cs.get("content", "complete"), case_sensitive=case_sensitive, concepts=concepts, resource=cs,
        folded={code.casefold(): code for code in concepts} if case_sensitive is False else {})


def _iter_concepts(concepts: list[dict]) -> Iterator[dict]:
    for c in concepts:
        yield c
        yield from _iter_concepts(c.get("concept", []))


def _index_concept_map(cm: dict) -> ConceptMapIndex:
    """Index ConceptMap.group.element.target by source (system, code) (conceptmap.html)."""
    url = cm.get("url")
    if not url:
        raise InvalidResource("ConceptMap without url")
    forward: dict[tuple[str, str], list[_Target]] = {}
    keys: set[tuple[str, str, str | None]] = set()
    unmapped: list[_Unmapped] = []
    for group in cm.get("group", []):
        source = group.get("source")
        target = group.get("target")
        if not source:
            raise InvalidResource(f"ConceptMap {url}: group without source system")
        for element in group.get("element", []):
            code = element.get("code")
            if code is None:
                continue
            keys.add((source, code, target))
            for t in element.get("target", []):
                equivalence = t.get("equivalence", "equivalent")
                if t.get("code") is None or equivalence in _NO_MATCH:
                    continue  # an explicit "no match" row: translate reports nothing
                products = tuple(Product(p.get("property", ""), p.get("system"), p.get("value"))
                                 for p in t.get("product", []))
                forward.setdefault((source, code), []).append(_Target(
                    url, source, code, target or "", t["code"], t.get("display"), equivalence,
                    t.get("comment"), products))
        if group.get("unmapped"):
            u = group["unmapped"]
            unmapped.append(_Unmapped(url, source, target, u.get("mode", ""), u.get("code"), u.get("display")))
    return ConceptMapIndex(url, cm, {k: tuple(v) for k, v in forward.items()}, frozenset(keys), tuple(unmapped))


def _rebase(value: Any, old: str, new: str) -> Any:
    """Rewrite every string starting with ``old`` (the packaged hub base) to start with ``new``."""
    if isinstance(value, str):
        return new + value[len(old):] if value.startswith(old) else value
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------
# The service
# ------------------------------------------------------------------------------------------------

class Terminology:
    """Code systems, value sets and concept maps held in memory, with dict lookups.

    Create with :meth:`load_default` (packaged data) or empty, then :meth:`add` resources.
    Every query reads one immutable snapshot; see the module docstring for concurrency.
    """

    def __init__(self, resources: Iterable[dict] = ()) -> None:
        self._state = _State.empty()
        self.add_all(resources)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load_default(cls, base: str | None = None, extra: Iterable[dict] = ()) -> Terminology:
        """Load the packaged data (``terminology/packaged/*.json``, see PROVENANCE.md there).

        ``base`` replaces :data:`terminology.urls.DEFAULT_HUB_BASE` in every packaged URL, for a
        deployment that mints its canonical URLs under another base. ``extra`` resources are
        added after the packaged ones.
        """
        resources: list[dict] = []
        for path in sorted(DATA_DIR.glob("*.json")):
            bundle = _loads(path.read_bytes())
            resources.extend(e["resource"] for e in bundle.get("entry", []))
        if base and base.rstrip("/") != urls.DEFAULT_HUB_BASE:
            resources = [_rebase(r, urls.DEFAULT_HUB_BASE, base.rstrip("/")) for r in resources]
        terminology = cls()
        terminology.add_all([*resources, *extra])
        return terminology

    def add(self, resource: dict) -> str:
        """Add or replace one CodeSystem, ValueSet or ConceptMap (FHIR R4 JSON); returns its URL.

        A resource with the URL (and version) of a loaded one replaces it. A CodeSystem with
        ``content = supplement`` adds its designations and properties to the code system it
        supplements. Bundles are unpacked. Raises :class:`InvalidResource`.
        """
        urls_added = self.add_all([resource])
        return urls_added[0] if urls_added else ""

    def add_all(self, resources: Iterable[dict]) -> list[str]:
        """Add many resources and publish them as one new snapshot; returns their URLs."""
        flat: list[dict] = []
        for r in resources:
            if r.get("resourceType") == "Bundle":
                flat.extend(e["resource"] for e in r.get("entry", []) if "resource" in e)
            else:
                flat.append(r)
        if not flat:
            return []
        old = self._state
        code_systems = dict(old.code_systems)
        latest_cs = dict(old.latest_cs)
        supplements = dict(old.supplements)
        value_sets = dict(old.value_sets)
        latest_vs = dict(old.latest_vs)
        concept_maps = dict(old.concept_maps)
        touched_cs: set[str] = set()
        touched_cm: list[ConceptMapIndex] = []
        replaced_cm: list[ConceptMapIndex] = []
        added: list[str] = []
        for r in flat:
            rtype = r.get("resourceType")
            url = r.get("url")
            if not url:
                raise InvalidResource(f"{rtype} without url cannot be used for terminology")
            if rtype == "CodeSystem":
                if r.get("content") == "supplement":
                    target = (r.get("supplements") or "").split("|")[0]
                    if not target:
                        raise InvalidResource(f"supplement {url} does not say what it supplements")
                    kept = tuple(s for s in supplements.get(target, ()) if s.get("url") != url)
                    supplements[target] = (*kept, r)
                    touched_cs.add(target)
                else:
                    versions = dict(code_systems.get(url, {}))
                    versions[r.get("version")] = r  # re-indexed below with its supplements
                    code_systems[url] = versions  # type: ignore[assignment]
                    touched_cs.add(url)
            elif rtype == "ValueSet":
                versions = dict(value_sets.get(url, {}))
                versions[r.get("version")] = r
                value_sets[url] = versions
                latest_vs[url] = r
            elif rtype == "ConceptMap":
                index = _index_concept_map(r)
                if url in concept_maps:
                    replaced_cm.append(concept_maps[url])
                concept_maps[url] = index
                touched_cm.append(index)
            else:
                raise InvalidResource(f"not a terminology resource: {rtype}")
            added.append(url)
        for url in touched_cs:
            versions = code_systems.get(url)
            if not versions:
                continue  # a supplement whose code system is not (yet) loaded
            sups = supplements.get(url, ())
            rebuilt: dict[str | None, CodeSystemIndex] = {}
            last: CodeSystemIndex | None = None
            for version, item in versions.items():
                resource = item.resource if isinstance(item, CodeSystemIndex) else item
                last = rebuilt[version] = _index_code_system(resource, sups)
            code_systems[url] = rebuilt
            newest = [r for r in flat if r.get("resourceType") == "CodeSystem" and r.get("url") == url
                      and r.get("content") != "supplement"]
            latest_cs[url] = rebuilt[newest[-1].get("version")] if newest else (
                rebuilt.get(old.latest_cs[url].version) if url in old.latest_cs else last)  # type: ignore[assignment]
        forward = dict(old.forward)
        reverse = dict(old.reverse)
        unmapped_by_system = dict(old.unmapped_by_system)
        for cm in replaced_cm + touched_cm:  # drop every entry of maps being (re)loaded
            for key in cm.forward:
                forward[key] = tuple(u for u in forward.get(key, ()) if u != cm.url)
                for t in cm.forward[key]:
                    rkey = (t.target_system, t.target_code)
                    reverse[rkey] = tuple(x for x in reverse.get(rkey, ()) if x.conceptmap != cm.url)
            for u in cm.unmapped:
                unmapped_by_system[u.source_system] = tuple(
                    x for x in unmapped_by_system.get(u.source_system, ()) if x != cm.url)
        for cm in {c.url: c for c in touched_cm}.values():
            cm = concept_maps[cm.url]
            for key, targets in cm.forward.items():
                if cm.url not in forward.get(key, ()):
                    forward[key] = (*forward.get(key, ()), cm.url)
                for t in targets:
                    rkey = (t.target_system, t.target_code)
                    reverse[rkey] = (*reverse.get(rkey, ()), t)
            for u in cm.unmapped:
                if cm.url not in unmapped_by_system.get(u.source_system, ()):
                    unmapped_by_system[u.source_system] = (*unmapped_by_system.get(u.source_system, ()), cm.url)
        self._state = _State(code_systems, latest_cs, supplements, value_sets, latest_vs, concept_maps,
                             forward, reverse, unmapped_by_system)
        return added

    # -- access to what is loaded -----------------------------------------------------------------

    def code_system(self, url: str, version: str | None = None) -> CodeSystemIndex | None:
        """The loaded code system ``url`` (given version, else the most recently added)."""
        state = self._state
        if version is None:
            return state.latest_cs.get(url)
        return state.code_systems.get(url, {}).get(version)

    def value_set(self, url: str, version: str | None = None) -> dict | None:
        """The ValueSet resource ``url`` (``url|version`` also accepted)."""
        if version is None and "|" in url:
            url, version = url.split("|", 1)
        state = self._state
        if version is None:
            return state.latest_vs.get(url)
        return state.value_sets.get(url, {}).get(version)

    def concept_map(self, url: str) -> dict | None:
        """The ConceptMap resource ``url``."""
        cm = self._state.concept_maps.get(url)
        return cm.resource if cm else None

    def resources(self) -> Iterator[dict]:
        """Every loaded resource (all versions, supplements included), to seed the hub's store."""
        state = self._state
        for versions in state.code_systems.values():
            for cs in versions.values():
                yield cs.resource
        for sups in state.supplements.values():
            yield from sups
        for versions in state.value_sets.values():
            yield from versions.values()
        for cm in state.concept_maps.values():
            yield cm.resource

    # -- $lookup -------------------------------------------------------------------------------------

    def lookup(self, system: str, code: str, version: str | None = None) -> LookupResult | None:
        """CodeSystem/$lookup: display, designations (zh-CN included where loaded) and
        properties of ``code`` in ``system``; None when the system or code is unknown.

        Hierarchy is returned as ``parent`` / ``child`` properties. UCUM is grammar-based: any
        valid unit expression is a code, whose display is the expression itself.
        """
        if system == urls.UCUM:
            return LookupResult(system, code, code, name="UCUM") if ucum.is_valid(code) else None
        cs = self.code_system(system, version)
        if cs is None:
            return None
        concept = cs.get(code)
        if concept is None:
            return None
        properties = concept.properties + tuple(Property("parent", p) for p in concept.parents) + tuple(
            Property("child", c) for c in concept.children)
        return LookupResult(
            system=system, code=concept.code, display=concept.display, name=cs.name, version=cs.version,
            definition=concept.definition, designations=concept.designations, properties=properties,
            abstract=concept.abstract, inactive=concept.inactive)

    # -- $validate-code ------------------------------------------------------------------------------

    def validate_code(self, valueset_url: str | None = None, system: str | None = None, code: str | None = None,
                      display: str | None = None, version: str | None = None) -> tuple[bool, str]:
        """ValueSet/$validate-code (or CodeSystem/$validate-code without ``valueset_url``).

        Returns ``(True, "")`` when the code is valid (and ``display``, if given, is its display
        or one of its designations, compared ignoring case and surrounding space), else
        ``(False, reason)``. Without ``system``, a value set member with that code is accepted if
        exactly one exists. Raises :class:`UnknownValueSet` for an unknown value set and
        :class:`NotSupported` when membership cannot be decided (e.g. a value set over a code
        system that is not loaded).
        """
        if not code:
            return False, "No code given"
        if valueset_url:
            vs = self.value_set(valueset_url)
            if vs is None:
                raise UnknownValueSet(f"Unknown value set {valueset_url}")
            if system is None:
                matches = [(s, c) for s, c, _ in self.expand(valueset_url) if c == code]
                if len(matches) != 1:
                    return False, (f"Code {code!r} is not in value set {valueset_url}" if not matches else
                                   f"Code {code!r} is in value set {valueset_url} in several systems; give the system")
                system = matches[0][0]
            member = self._vs_contains(vs, system, code, self._state, set())
            if not member:
                return False, f"Code {system}#{code} is not in value set {valueset_url}"
        if system is None:
            return False, "No system given"
        if system == urls.UCUM:
            return (True, "") if ucum.is_valid(code) else (False, f"{code!r} is not a valid UCUM unit")
        cs = self.code_system(system, version)
        if cs is None:
            if valueset_url:
                return True, ""  # listed explicitly in the value set; the system itself is not loaded
            return False, f"Unknown code system {system}" + (f" version {version}" if version else "")
        concept = cs.get(code)
        if concept is None:
            where = "the loaded fragment of " if cs.content == "fragment" else ""
            return False, f"Unknown code {code!r} in {where}code system {system}"
        if display is not None and not _display_matches(concept, display):
            return False, (f"Display {display!r} does not match code {system}#{code}: "
                           f"expected {concept.display!r}")
        return True, ""

    # -- $translate ----------------------------------------------------------------------------------

    def translate(self, system: str, code: str, target_system: str | None = None,
                  conceptmap_url: str | None = None, reverse: bool = False) -> list[Translation]:
        """ConceptMap/$translate: every mapping of ``system#code`` in the loaded concept maps.

        Narrow with ``target_system`` and/or ``conceptmap_url`` (raises
        :class:`UnknownConceptMap` if that map is not loaded). ``reverse=True`` reads the maps
        from target to source (equivalences inverted: wider ↔ narrower). Group ``unmapped``
        rules with mode ``provided`` (same code) and ``fixed`` apply when no element matches.
        Rows marked unmatched/disjoint are never returned. Order: maps in load order, then rows.
        """
        state = self._state
        if conceptmap_url is not None and conceptmap_url not in state.concept_maps:
            raise UnknownConceptMap(f"Unknown concept map {conceptmap_url}")
        out: list[Translation] = []
        if reverse:
            for t in state.reverse.get((system, code), ()):
                if conceptmap_url and t.conceptmap != conceptmap_url:
                    continue
                if target_system and t.source_system != target_system:
                    continue
                out.append(Translation(
                    _REVERSED_EQUIVALENCE.get(t.equivalence, t.equivalence), t.source_system, t.source_code,
                    self._display(t.source_system, t.source_code), t.conceptmap, system, code, t.comment,
                    t.products))
            return out
        for cm_url in state.forward.get((system, code), ()):
            if conceptmap_url and cm_url != conceptmap_url:
                continue
            for t in state.concept_maps[cm_url].forward[(system, code)]:
                if target_system and t.target_system != target_system:
                    continue
                out.append(Translation(t.equivalence, t.target_system, t.target_code,
                                       t.display or self._display(t.target_system, t.target_code),
                                       cm_url, system, code, t.comment, t.products))
        for cm_url in state.unmapped_by_system.get(system, ()):
            if conceptmap_url and cm_url != conceptmap_url:
                continue
            cm = state.concept_maps[cm_url]
            for u in cm.unmapped:
                if u.source_system != system or (target_system and u.target_system != target_system):
                    continue
                if (system, code, u.target_system) in cm.mapped_keys:
                    continue
                if u.mode == "provided":
                    source_cs = state.latest_cs.get(system)
                    if source_cs is not None and source_cs.content == "complete" and source_cs.get(code) is None:
                        continue  # not a code of the source system: nothing to provide
                    out.append(Translation("equal", u.target_system or system, code,
                                           self._display(u.target_system or system, code), cm_url, system, code))
                elif u.mode == "fixed" and u.code:
                    out.append(Translation("inexact", u.target_system or "", u.code,
                                           u.display or self._display(u.target_system or "", u.code),
                                           cm_url, system, code))
        return out

    def _display(self, system: str, code: str) -> str | None:
        cs = self._state.latest_cs.get(system)
        concept = cs.get(code) if cs else None
        return concept.display if concept else None

    # -- $expand -------------------------------------------------------------------------------------

    def expand(self, valueset_url: str, filter: str | None = None, offset: int = 0,
               count: int | None = None) -> list[tuple[str, str, str | None]]:
        """ValueSet/$expand: ``(system, code, display)`` for each member, in compose order.

        Supports compose.include/exclude with concept lists, whole code systems, ``valueSet``
        references (intersected as the spec says) and filters on the ``concept``/``code``
        property (``is-a``, ``descendent-of``, ``is-not-a``, ``in``, ``not-in``, ``=``,
        ``regex``) and on concept properties (``=``, ``in``, ``exists``). A ValueSet that only has
        an ``expansion`` is read from it. Abstract (notSelectable) concepts of whole-system and
        filter includes are left out. ``filter`` keeps members whose code, display or any
        designation contains it (case-insensitive); ``offset``/``count`` page the result.
        Raises :class:`UnknownValueSet` and :class:`NotSupported`.
        """
        state = self._state
        members = self._expansion(valueset_url, state, set())
        items = list(members.values())
        if filter:
            needle = filter.casefold()
            items = [m for m in items if _text_matches(self, m, needle)]
        end = None if count is None else offset + count
        return items[offset:end]

    def _expansion(self, url: str, state: _State, visiting: set[str]) -> dict[tuple[str, str], tuple[str, str, str | None]]:
        cached = state.expansions.get(url)
        if cached is not None:
            return cached
        vs = state.latest_vs.get(url)
        if vs is None:
            raise UnknownValueSet(f"Unknown value set {url}")
        if url in visiting:
            raise InvalidResource(f"value set {url} includes itself")
        visiting = visiting | {url}
        compose = vs.get("compose")
        result: dict[tuple[str, str], tuple[str, str, str | None]] = {}
        if compose is None:
            for c in _iter_contains(vs.get("expansion", {}).get("contains", [])):
                if c.get("system") and c.get("code"):
                    result[(c["system"], c["code"])] = (c["system"], c["code"], c.get("display"))
        else:
            for inc in compose.get("include", []):
                for key, member in self._include_members(inc, state, visiting).items():
                    result.setdefault(key, member)
            for exc in compose.get("exclude", []):
                for key in self._include_members(exc, state, visiting, for_exclude=True):
                    result.pop(key, None)
        state.expansions[url] = result
        return result

    def _include_members(self, inc: dict, state: _State, visiting: set[str],
                         for_exclude: bool = False) -> dict[tuple[str, str], tuple[str, str, str | None]]:
        system = inc.get("system")
        restrict: list[dict] = [self._expansion(u.split("|")[0], state, visiting) for u in inc.get("valueSet", [])]
        members: dict[tuple[str, str], tuple[str, str, str | None]] = {}
        if system is None:
            if not restrict:
                return {}
            first, *rest = restrict
            return {k: v for k, v in first.items() if all(k in r for r in rest)}
        cs = _code_system(state, system, inc.get("version"))
        if inc.get("concept"):
            for c in inc["concept"]:
                concept = cs.get(c["code"]) if cs else None
                if cs is not None and cs.content == "complete" and concept is None and not for_exclude:
                    continue  # not a code of the system: left out of the expansion
                display = c.get("display") or (concept.display if concept else None)
                members[(system, c["code"])] = (system, concept.code if concept else c["code"], display)
        else:
            if cs is None:
                raise NotSupported(f"cannot expand code system {system}: it is not loaded")
            codes = self._filter_codes(cs, inc.get("filter", []))
            for code in codes:
                concept = cs.concepts[code]
                if concept.abstract and not for_exclude:
                    continue
                members[(system, code)] = (system, code, concept.display)
        if restrict:
            members = {k: v for k, v in members.items() if all(k in r for r in restrict)}
        return members

    def _filter_codes(self, cs: CodeSystemIndex, filters: list[dict]) -> list[str]:
        """Codes of ``cs`` passing every filter (valueset.html#compose, filter-operator)."""
        codes = list(cs.concepts)
        for f in filters:
            prop, op, value = f.get("property"), f.get("op"), f.get("value", "")
            if prop in ("concept", "code"):
                if op == "is-a":
                    allowed = set(cs.descendants(value)) | ({value} if value in cs.concepts else set())
                elif op == "descendent-of":
                    allowed = set(cs.descendants(value))
                elif op == "is-not-a":
                    excluded = set(cs.descendants(value)) | {value}
                    allowed = {c for c in codes if c not in excluded}
                elif op == "=":
                    allowed = {value}
                elif op in ("in", "not-in"):
                    listed = {v.strip() for v in value.split(",")}
                    allowed = listed if op == "in" else {c for c in codes if c not in listed}
                elif op == "regex":
                    pattern = re.compile(value)
                    allowed = {c for c in codes if pattern.fullmatch(c)}
                else:
                    raise NotSupported(f"filter {prop} {op} is not supported")
                codes = [c for c in codes if c in allowed]
            else:
                if op == "exists":
                    want = str(value).lower() == "true"
                    codes = [c for c in codes if bool(cs.concepts[c].property_values(prop)) == want]
                elif op in ("=", "in"):
                    wanted = {value} if op == "=" else {v.strip() for v in value.split(",")}
                    codes = [c for c in codes if any(_prop_str(v) in wanted
                                                     for v in cs.concepts[c].property_values(prop))]
                else:
                    raise NotSupported(f"filter {prop} {op} is not supported")
        return codes

    def _vs_contains(self, vs: dict, system: str, code: str, state: _State, visiting: set[str]) -> bool:
        """Membership without a full expansion, so value sets over UCUM or other grammar-based /
        unloaded systems with explicit concept lists still validate."""
        compose = vs.get("compose")
        if compose is None:
            return any(c.get("system") == system and c.get("code") == code
                       for c in _iter_contains(vs.get("expansion", {}).get("contains", [])))
        url = vs.get("url", "")
        if url in visiting:
            raise InvalidResource(f"value set {url} includes itself")
        visiting = visiting | {url}
        included = any(self._include_contains(inc, system, code, state, visiting, False)
                       for inc in compose.get("include", []))
        return included and not any(self._include_contains(exc, system, code, state, visiting, True)
                                    for exc in compose.get("exclude", []))

    def _include_contains(self, inc: dict, system: str, code: str, state: _State, visiting: set[str],
                          for_exclude: bool) -> bool:
        for ref in inc.get("valueSet", []):
            other = state.latest_vs.get(ref.split("|")[0])
            if other is None:
                raise UnknownValueSet(f"Unknown value set {ref}")
            if not self._vs_contains(other, system, code, state, visiting):
                return False
        inc_system = inc.get("system")
        if inc_system is None:
            return bool(inc.get("valueSet"))
        if inc_system != system:
            return False
        if inc.get("concept"):
            return any(c.get("code") == code for c in inc["concept"])
        if system == urls.UCUM and not inc.get("filter"):
            return ucum.is_valid(code)
        cs = _code_system(state, system, inc.get("version"))
        if cs is None:
            raise NotSupported(f"cannot check membership in code system {system}: it is not loaded")
        concept = cs.get(code)
        if concept is None or (concept.abstract and not for_exclude):
            return False
        return concept.code in self._filter_codes(cs, inc.get("filter", [])) if inc.get("filter") else True

    # -- local codes → standard codes --------------------------------------------------------------

    def add_lab_codes(self, source: Any, org_code: str | None = None, *, base: str = urls.DEFAULT_HUB_BASE,
                      catalogue_system: str | None = None) -> list[str]:
        """Read a hospital's local lab code CSV (:func:`terminology.labcodes.read_lab_code_csv`)
        and add the resulting ConceptMap(s); returns their URLs."""
        from terminology.labcodes import read_lab_code_csv

        return self.add_all(read_lab_code_csv(source, org_code, base=base, catalogue_system=catalogue_system))

    def standardize(self, codeable_concept: dict, org_code: str | None = None,
                    target_systems: Iterable[str] | None = None) -> dict:
        """Return a copy of ``codeable_concept`` with the standard codings added beside the
        original ones (design/CONVENTIONS.md: local codes are never thrown away).

        Each coding is translated with the local lab code map of ``org_code``
        (:func:`terminology.urls.lab_local_concept_map`; all loaded maps when ``org_code`` is
        None). A coding without ``system`` is looked up in every source system of that map. Only
        equivalent/equal/wider/subsumes matches are added, once per (system, code), after the
        existing codings; ``target_systems`` limits which systems are added (default: all).
        The input is not modified.
        """
        state = self._state
        cm_url = None
        if org_code is not None:
            cm_url = next((u for u in state.concept_maps if u.endswith(f"/ConceptMap/lab-local-{org_code}")), None)
            if cm_url is None:
                return _copy_cc(codeable_concept)
        wanted = set(target_systems) if target_systems is not None else None
        out = _copy_cc(codeable_concept)
        codings: list[dict] = out.setdefault("coding", [])
        present = {(c.get("system"), c.get("code")) for c in codings}
        for coding in list(codings):
            code = coding.get("code")
            if not code:
                continue
            systems = [coding["system"]] if coding.get("system") else sorted(
                {key[0] for key in state.forward if key[1] == code and
                 (cm_url is None or cm_url in state.forward[key])})
            for system in systems:
                for t in self.translate(system, code, conceptmap_url=cm_url):
                    if t.equivalence not in ("equivalent", "equal", "wider", "subsumes"):
                        continue
                    if wanted is not None and t.system not in wanted:
                        continue
                    if (t.system, t.code) in present:
                        continue
                    present.add((t.system, t.code))
                    codings.append(t.coding())
        return out


# ------------------------------------------------------------------------------------------------

def _code_system(state: _State, url: str, version: str | None) -> CodeSystemIndex | None:
    if version is None:
        return state.latest_cs.get(url)
    return state.code_systems.get(url, {}).get(version)


def _copy_cc(cc: dict) -> dict:
    out = dict(cc)
    out["coding"] = [dict(c) for c in cc.get("coding", [])]
    return out


def _iter_contains(contains: list[dict]) -> Iterator[dict]:
    for c in contains:
        yield c
        yield from _iter_contains(c.get("contains", []))


def _prop_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # valueCoding
        return value.get("code", "")
    return str(value)


def _display_matches(concept: Concept, display: str) -> bool:
    wanted = " ".join(display.split()).casefold()
    candidates = [concept.display or ""] + [d.value for d in concept.designations]
    return any(" ".join(c.split()).casefold() == wanted for c in candidates)


def _text_matches(terminology: Terminology, member: tuple[str, str, str | None], needle: str) -> bool:
    system, code, display = member
    if needle in code.casefold() or (display and needle in display.casefold()):
        return True
    cs = terminology.code_system(system)
    concept = cs.get(code) if cs else None
    return bool(concept and any(needle in d.value.casefold() for d in concept.designations))


__all__ = ["CodeSystemIndex", "ConceptMapIndex", "Terminology"]
