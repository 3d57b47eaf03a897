"""Running a parsed search: matches, total, _include/_revinclude, compartments, $everything."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, and_, func, or_, select

from hub.errors import InvalidRequest, TooCostly
from hub.fhir.model import Stored
from hub.fhir.search.query import Compiler, Filter, Include, SearchQuery, param_is, stored_codes
from hub.fhir.search.registry import Registry
from hub.fhir.store import FhirStore
from hub.storage.schema import resources, sp_reference

R = resources.c
REF = sp_reference.c


@dataclass
class SearchResult:
    matches: list[Stored]
    included: list[Stored] = field(default_factory=list)
    total: int | None = None
    has_next: bool = False


class SearchExecutor:
    def __init__(self, registry: Registry, compiler: Compiler, *, max_include: int = 10_000):
        self.registry = registry
        self.compiler = compiler
        self.max_include = max_include
        self.store = FhirStore()

    def conditions(self, res_type: str, filters: list[Filter], extra=None) -> list:
        """The WHERE of a type's search. One filter is the start (the most selective kind of
        plain index lookup, or ``_id``); the other plain lookups become per-resource probes
        (:meth:`Compiler.condition` with ``probe``), so the database walks the few resources
        the start yields instead of intersecting large lists."""
        ranks = [self.compiler.can_probe(res_type, f) for f in filters]
        start = None
        if not any(f.name == "_id" and f.modifier is None and not f.has for f in filters):
            ranked = [(r, i) for i, r in enumerate(ranks) if r is not None]
            start = min(ranked)[1] if ranked else None
        conds = [R.res_type == res_type, R.deleted.is_(False)]
        conds += [self.compiler.condition(res_type, f, probe=ranks[i] is not None and i != start)
                  for i, f in enumerate(filters)]
        if extra is not None:
            conds.append(extra)
        return conds

    def search(self, conn: Connection, q: SearchQuery, *, extra_condition=None,
               types: list[str] | None = None) -> SearchResult:
        """search.html: page of matches in a stable order (sort keys, then type and id)."""
        search_types = [q.res_type] if q.res_type else (types or q.types or [])
        if not search_types:
            raise InvalidRequest("a system-level search needs _type (which resource types to search)")
        parts = []
        for t in search_types:
            parts.append(and_(*self.conditions(t, q.filters, extra_condition)))
        where = parts[0] if len(parts) == 1 else or_(*parts)

        total = None
        if q.summary == "count" or q.count == 0:
            total = conn.execute(select(func.count()).select_from(resources).where(where)).scalar_one()
            return SearchResult([], total=total)

        order = []
        for name, desc in q.sort:
            col = self.compiler.sort_column(search_types[0], name, desc) if len(search_types) == 1 else None
            if col is None:
                if name == "_lastUpdated":
                    col = R.last_updated
                elif name == "_id":
                    col = R.res_id
                else:
                    continue
            order.append(col.desc() if desc else col.asc())
        order += [R.res_type, R.res_id]
        # Two steps: order and page the keys alone, then fetch the page's documents. Sorting
        # whole rows would drag every match's JSON through the sorter.
        stmt = select(R.res_type, R.res_id).where(where).order_by(*order).limit(q.count + 1).offset(q.offset)
        keys = [(r.res_type, r.res_id) for r in conn.execute(stmt)]
        has_next = len(keys) > q.count
        keys = keys[:q.count]
        rank = {k: i for i, k in enumerate(keys)}
        matches = sorted(self.store.read_many(conn, keys), key=lambda s: rank[(s.res_type, s.res_id)])
        if q.total != "none":
            if q.offset == 0 and not has_next:
                total = len(matches)
            elif q.total in ("accurate", "estimate"):
                total = conn.execute(select(func.count()).select_from(resources).where(where)).scalar_one()
        included = self.includes(conn, matches, q.includes, q.revincludes)
        return SearchResult(matches, included, total, has_next)

    # ------------------------------------------------------------------ _include / _revinclude
    def includes(self, conn: Connection, matches: list[Stored], includes: list[Include],
                 revincludes: list[Include]) -> list[Stored]:
        """search.html#include. ``:iterate`` repeats over what was included until nothing new
        appears. The result is never truncated silently: past ``max_include`` the request fails."""
        if not matches or not (includes or revincludes):
            return []
        seen = {(s.res_type, s.res_id) for s in matches}
        out: list[Stored] = []
        frontier = matches
        first = True
        while frontier:
            new: list[Stored] = []
            inc = [i for i in includes if first or i.iterate]
            rev = [i for i in revincludes if first or i.iterate]
            if not inc and not rev:
                break
            keys = self._include_keys(conn, frontier, inc) + self._revinclude_keys(conn, frontier, rev)
            keys = [k for k in dict.fromkeys(keys) if k not in seen]
            if len(seen) + len(keys) - len(matches) > self.max_include:
                raise TooCostly(
                    f"the includes of this page exceed {self.max_include} resources; narrow the search "
                    "or lower _count")
            if keys:
                new = self.store.read_many(conn, keys)
                for s in new:
                    seen.add((s.res_type, s.res_id))
                out.extend(new)
            frontier = new
            first = False
        return out

    def _include_keys(self, conn: Connection, frontier: list[Stored], incs: list[Include]) -> list[tuple[str, str]]:
        keys: list[tuple[str, str]] = []
        for inc in incs:
            # the frontier was read by FhirStore.read_many, which gives each resource's key
            pks = [s.res_pk for s in frontier if s.res_type == inc.source_type]
            if not pks:
                continue
            for i in range(0, len(pks), 500):
                conds = [REF.res_pk.in_(pks[i:i + 500]), REF.target_id.is_not(None)]
                if inc.param != "*":
                    conds.append(param_is(REF.param, self.registry.get(inc.source_type, inc.param)))
                if inc.target_type:
                    conds.append(REF.target_type == inc.target_type)
                keys += [(r.target_type, r.target_id)
                         for r in conn.execute(select(REF.target_type, REF.target_id).where(*conds))]
        return keys

    def _revinclude_keys(self, conn: Connection, frontier: list[Stored], revs: list[Include]) -> list[tuple[str, str]]:
        keys: list[tuple[str, str]] = []
        for rev in revs:
            by_type: dict[str, list[str]] = {}
            for s in frontier:
                if rev.target_type and s.res_type != rev.target_type:
                    continue
                by_type.setdefault(s.res_type, []).append(s.res_id)
            for ttype, ids in by_type.items():
                for i in range(0, len(ids), 500):
                    conds = [REF.target_type == ttype, REF.target_id.in_(ids[i:i + 500]),
                             REF.res_type == rev.source_type]
                    if rev.param != "*":
                        conds.append(param_is(REF.param, self.registry.get(rev.source_type, rev.param)))
                    keys += [(rev.source_type, r.res_id)
                             for r in conn.execute(select(REF.res_id).where(*conds))]
        return keys

    # ------------------------------------------------------------------ compartments
    def compartment_condition(self, res_type: str, patient_ids: list[str]):
        """Membership of ``res_type`` resources in the compartments of the given patients
        (compartmentdefinition-patient): any of the type's compartment parameters points there."""
        params = self.registry.compartment_params(res_type)
        if res_type == "Patient":
            return R.res_id.in_(patient_ids)
        if not params:
            return None
        codes = stored_codes(self.registry, res_type, params, target_type="Patient")
        sub = select(REF.res_id).where(REF.res_type == res_type, REF.param.in_(codes),
                                       REF.target_type == "Patient", REF.target_id.in_(patient_ids))
        return R.res_id.in_(sub)

    def everything(self, conn: Connection, patient_ids: list[str], *, types: list[str] | None = None,
                   since: int | None = None, count: int = 1000, offset: int = 0) -> tuple[list[Stored], bool]:
        """Patient/$everything (patient-operation-everything): the patients and every resource in
        their compartments, ordered by type and id so that paging is stable."""
        pairs = conn.execute(
            select(REF.res_type, REF.param, REF.res_id).where(
                REF.target_type == "Patient", REF.target_id.in_(patient_ids))).all()
        keys = {("Patient", pid) for pid in patient_ids}
        in_compartment: dict[str, frozenset[str]] = {}
        for r in pairs:
            codes = in_compartment.get(r.res_type)
            if codes is None:
                codes = in_compartment[r.res_type] = frozenset(
                    stored_codes(self.registry, r.res_type, self.registry.compartment_params(r.res_type),
                                 target_type="Patient"))
            if r.param in codes:
                keys.add((r.res_type, r.res_id))
        if types:
            keys = {k for k in keys if k[0] in types}
        ordered = sorted(keys)
        page = ordered[offset:offset + count]
        stored = self.store.read_many(conn, page)
        if since is not None:
            stored = [s for s in stored if s.last_updated >= since]
        rank = {k: i for i, k in enumerate(page)}
        stored.sort(key=lambda s: rank[(s.res_type, s.res_id)])
        return stored, offset + count < len(ordered)

