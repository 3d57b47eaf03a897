"""The FHIR interaction pipeline, independent of HTTP (http.html).

parse → authorize → execute → audit → respond. The HTTP layer (``hub.api``) turns a request into
a :class:`FhirRequest` and a :class:`FhirResponse` back into bytes; batch and transaction bundles
run their entries through the same :meth:`FhirService.handle`, so scopes, validation and audit
apply identically on every path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import jsonpatch
from sqlalchemy import Connection, Engine, select, text

from hub.audit import AuditSink, has_pending, materialize_all
from hub.errors import (
    Conflict,
    Forbidden,
    Gone,
    HubError,
    InvalidRequest,
    InvalidResource,
    MultipleMatches,
    NotFound,
    NotSupported,
    PreconditionFailed,
)
from hub.fhir.model import ID_RE, Stored, http_date, instant
from hub.fhir.search.execute import SearchExecutor, SearchResult
from hub.fhir.search.extract import extract_index, parse_date_range, rows_of_param
from hub.fhir.search.query import Compiler, QueryParser, SearchQuery
from hub.fhir.search.registry import Registry, get_registry
from hub.fhir.store import FhirStore
from hub.fhir.summary import apply_elements, apply_summary
from hub.fhir.validation import validate_resource
from hub.security.access import Access
from hub.storage.db import write_tx
from hub.storage.schema import resources as T

log = logging.getLogger("yilian.fhir")


@dataclass
class FhirRequest:
    method: str
    path: str  # relative to the FHIR base, without leading slash: "Patient/1/_history/2"
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: object | None = None  # parsed JSON

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class FhirResponse:
    status: int
    body: object | None = None  # JSON-serializable (orjson; may hold orjson.Fragment)
    headers: dict[str, str] = field(default_factory=dict)
    stored: Stored | None = None
    # for the audit record
    resources: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)


def _etag_version(value: str | None) -> int | None:
    """``W/"3"`` → 3 (http.html#concurrency)."""
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    try:
        return int(v)
    except ValueError:
        raise InvalidRequest(f"If-Match {value!r} is not a version ETag like W/\"3\"") from None


class FhirService:
    def __init__(self, engine: Engine, *, base_url: str, audit: AuditSink | None = None,
                 registry: Registry | None = None, default_count: int = 50, max_count: int = 1000,
                 max_include: int = 10_000):
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self.registry = registry or get_registry()
        self.store = FhirStore()
        self.parser = QueryParser(self.registry, default_count=default_count, max_count=max_count)
        self.compiler = Compiler(self.registry, self.parser, self.base_url)
        self.executor = SearchExecutor(self.registry, self.compiler, max_include=max_include)
        self.audit = audit
        self.pg = engine.dialect.name == "postgresql"
        # named operations (operations.html): (resource type or None for system level, name) →
        # handler(svc, req, access, rtype, rid) -> FhirResponse; components register their own
        self.operations: dict[tuple[str | None, str], Callable] = {}
        # the Patient ids whose records count as one person's ($everything, linked searches);
        # the master patient index replaces this with its golden-record links
        self.linked_patients: Callable[[Connection, str], list[str]] = lambda conn, pid: [pid]
        # rewrites of a type search's parameters before parsing, (type, query) -> query (the
        # master patient index expands ``patient:linked=…`` here)
        self.search_rewriters: list[Callable[[str, list[tuple[str, str]]], list[tuple[str, str]]]] = []

    def register_operation(self, name: str, handler: Callable, *, types: tuple[str, ...] | None = None) -> None:
        """Serve ``$name`` on each of ``types`` (type and instance level; the handler receives
        ``rid=None`` at type level), or at the system level when ``types`` is None."""
        for t in (types or (None,)):
            self.operations[(t, name)] = handler

    # ------------------------------------------------------------------ entry point
    def handle(self, req: FhirRequest, access: Access) -> FhirResponse:
        interaction = "unknown"
        try:
            interaction, run = self._dispatch(req, access)
            if _may_see_audit_events(req):
                self.materialize_audit()
            resp = run()
        except HubError as e:
            parts = req.path.strip("/").split("/")
            refs = ["/".join(parts[:2])] if len(parts) >= 2 and not parts[1].startswith(("$", "_")) else []
            resp = FhirResponse(e.status, e.outcome(), resources=refs)
            self._audit(access, interaction, req, resp)
            raise
        self._audit(access, interaction, req, resp)
        return resp

    def _audit(self, access: Access, interaction: str, req: FhirRequest, resp: FhirResponse) -> None:
        if self.audit is None or interaction in ("unknown", "capabilities"):
            return
        query = urlencode(req.query) if req.query else None
        p = access.principal
        self.audit.record_access(interaction=interaction, status=resp.status, who=p.subject,
                                 client_id=p.client_id, organization=p.organization, address=access.address,
                                 resources=resp.resources, patients=resp.patients,
                                 query=(req.path + "?" + query) if query else None, observer=self.base_url)

    def materialize_audit(self) -> None:
        """Make every journalled access an AuditEvent resource (hub.audit) before an interaction
        that can see AuditEvents, so none is missing from its answer."""
        if has_pending(self.engine):
            materialize_all(self.engine)

    def _dispatch(self, req: FhirRequest, access: Access) -> tuple[str, Callable[[], FhirResponse]]:
        """Route a request: (interaction name, the call that performs it)."""
        parts = [p for p in req.path.strip("/").split("/") if p]
        m = req.method
        if not parts:
            if m == "POST":
                kind = req.body.get("type") if isinstance(req.body, dict) else None
                return ("transaction" if kind == "transaction" else "batch"), lambda: self._bundle(req, access)
            if m == "GET":
                return "search-system", lambda: self.search_system(req, access)
            raise NotSupported(f"{m} on the base URL is not supported", status=405)
        if parts[0].startswith("$") and len(parts) == 1:
            return "operation", lambda: self.operation(req, access, None, None, parts[0][1:])
        if parts[0] == "_history" and len(parts) == 1 and m == "GET":
            return "history-system", lambda: self.history(req, access, None, None)
        rtype = parts[0]
        if rtype not in self.registry.resource_types:
            raise NotFound(f"unknown resource type {rtype!r}")
        if len(parts) == 1:
            if m == "GET":
                return "search-type", lambda: self.search_type(req, access, rtype)
            if m == "POST":
                return "create", lambda: self.create(req, access, rtype)
            if m == "PUT":
                return "update", lambda: self.conditional_update(req, access, rtype)
            if m == "DELETE":
                return "delete", lambda: self.conditional_delete(req, access, rtype)
            if m == "PATCH":
                return "patch", lambda: self.conditional_patch(req, access, rtype)
            raise NotSupported(f"{m} on a type is not supported", status=405)
        second = parts[1]
        if second == "_search" and len(parts) == 2 and m == "POST":
            return "search-type", lambda: self.search_type(req, access, rtype)
        if second == "_history" and len(parts) == 2 and m == "GET":
            return "history-type", lambda: self.history(req, access, rtype, None)
        if second.startswith("$"):
            return "operation", lambda: self.operation(req, access, rtype, None, second[1:])
        rid = second
        if not ID_RE.match(rid):
            raise InvalidRequest(f"{rid!r} is not a valid resource id")
        if len(parts) == 2:
            if m in ("GET", "HEAD"):
                return "read", lambda: self.read(req, access, rtype, rid)
            if m == "PUT":
                return "update", lambda: self.update(req, access, rtype, rid)
            if m == "DELETE":
                return "delete", lambda: self.delete(req, access, rtype, rid)
            if m == "PATCH":
                return "patch", lambda: self.patch(req, access, rtype, rid)
            raise NotSupported(f"{m} on a resource is not supported", status=405)
        third = parts[2]
        if third == "_history" and m == "GET":
            if len(parts) == 3:
                return "history-instance", lambda: self.history(req, access, rtype, rid)
            if len(parts) == 4:
                return "vread", lambda: self.vread(req, access, rtype, rid, parts[3])
        if third.startswith("$") and len(parts) == 3:
            return "operation", lambda: self.operation(req, access, rtype, rid, third[1:])
        if len(parts) == 3 and m == "GET" and third in self.registry.resource_types:
            return "search-type", lambda: self.compartment_search(req, access, rtype, rid, third)
        raise NotFound(f"no interaction at {req.path!r}")

    # ------------------------------------------------------------------ helpers
    def _prefer_return(self, req: FhirRequest) -> str:
        prefer = req.header("prefer") or ""
        for part in prefer.split(";"):
            part = part.strip()
            if part.startswith("return="):
                return part[7:].strip()
        return "representation"

    def _strict(self, req: FhirRequest) -> bool:
        prefer = req.header("prefer") or ""
        return "handling=lenient" not in prefer

    def _write_response(self, req: FhirRequest, stored: Stored, status: int) -> FhirResponse:
        headers = {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated),
                   "Location": f"{self.base_url}/{stored.location}"}
        ret = self._prefer_return(req)
        if ret == "minimal":
            body = None
        elif ret == "OperationOutcome":
            body = {"resourceType": "OperationOutcome", "issue": [
                {"severity": "information", "code": "informational",
                 "diagnostics": f"{stored.res_type}/{stored.res_id} version {stored.version} stored"}]}
        else:
            body = stored.fragment() if stored.content else None
        refs = [f"{stored.res_type}/{stored.res_id}"]
        return FhirResponse(status, body, headers, stored, resources=refs,
                            patients=[stored.res_id] if stored.res_type == "Patient" else [])

    def _body_resource(self, req: FhirRequest, rtype: str) -> dict:
        if not isinstance(req.body, dict):
            raise InvalidResource("the request body must be a FHIR resource (JSON object)")
        validate_resource(req.body, rtype)
        return req.body

    def _lock(self, conn: Connection, key: str) -> None:
        """Serialize conditional interactions on the same condition (PostgreSQL advisory lock;
        on SQLite the write transaction already holds the database's single write lock)."""
        if self.pg:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})

    def _match_ids(self, conn: Connection, rtype: str, query: str, *, limit: int = 2) -> list[str]:
        items = parse_qsl(query, keep_blank_values=True)
        if not items:
            raise InvalidRequest("a conditional interaction needs search criteria")
        q = self.parser.parse(rtype, items, strict=True)
        conds = self.executor.conditions(rtype, q.filters)
        return [r[0] for r in conn.execute(select(T.c.res_id).where(*conds).limit(limit))]

    # ------------------------------------------------------------------ read
    def read(self, req: FhirRequest, access: Access, rtype: str, rid: str) -> FhirResponse:
        access.require(rtype, "read")
        with self.engine.connect() as conn:
            s = self.store.read_current(conn, rtype, rid)
            self._check_compartment(conn, access, rtype, rid, "read")
        headers = {"ETag": s.etag, "Last-Modified": http_date(s.last_updated)}
        inm = req.header("if-none-match")
        if inm and _etag_version(inm) == s.version:
            return FhirResponse(304, None, headers, s, resources=[f"{rtype}/{rid}"])
        body = s.fragment()
        summary = dict(req.query).get("_summary")
        elements = dict(req.query).get("_elements")
        if summary or elements:
            res = s.resource()
            if summary:
                res = apply_summary(res, summary)
            if elements:
                res = apply_elements(res, [e.strip() for e in elements.split(",") if e.strip()])
            body = res
        return FhirResponse(200, body, headers, s, resources=[f"{rtype}/{rid}"],
                            patients=[rid] if rtype == "Patient" else [])

    def vread(self, req: FhirRequest, access: Access, rtype: str, rid: str, vid: str) -> FhirResponse:
        access.require(rtype, "vread")
        try:
            version = int(vid)
        except ValueError:
            raise NotFound(f"{vid!r} is not a version of {rtype}/{rid}") from None
        with self.engine.connect() as conn:
            s = self.store.vread(conn, rtype, rid, version)
            self._check_compartment(conn, access, rtype, rid, "vread")
        return FhirResponse(200, s.fragment(), {"ETag": s.etag, "Last-Modified": http_date(s.last_updated)}, s,
                            resources=[f"{rtype}/{rid}/_history/{version}"],
                            patients=[rid] if rtype == "Patient" else [])

    def _check_compartment(self, conn: Connection, access: Access, rtype: str, rid: str, interaction: str) -> None:
        pid = access.patient_only(rtype, interaction)
        if pid is None:
            return
        cond = self.executor.compartment_condition(rtype, [pid])
        ok = cond is not None and conn.execute(
            select(T.c.res_id).where(T.c.res_type == rtype, T.c.res_id == rid, cond)).first()
        if not ok:
            raise Forbidden(f"{rtype}/{rid} is outside the patient context of this token")

    # ------------------------------------------------------------------ create / update / delete
    def create(self, req: FhirRequest, access: Access, rtype: str, conn: Connection | None = None,
               res_id: str | None = None) -> FhirResponse:
        """http.html#create, with ``If-None-Exist`` (conditional create)."""
        access.require(rtype, "create")
        resource = self._body_resource(req, rtype)
        self._check_write_compartment(access, rtype, resource, "create")
        cond = req.header("if-none-exist")
        with _tx(self.engine, conn) as c:
            if cond:
                self._lock(c, f"{rtype}?{cond}")
                found = self._match_ids(c, rtype, cond)
                if len(found) > 1:
                    raise MultipleMatches(f"If-None-Exist {cond!r} matches more than one {rtype}")
                if found:
                    s = self.store.read(c, rtype, found[0])
                    return self._write_response(req, s, 200)
            (s,) = self.store.write(c, [self.store.prepare_create(rtype, resource, res_id)])
        return self._write_response(req, s, 201)

    def update(self, req: FhirRequest, access: Access, rtype: str, rid: str,
               conn: Connection | None = None) -> FhirResponse:
        """http.html#update; update as create when the id is new; ``If-Match`` versioning."""
        resource = self._body_resource(req, rtype)
        if resource.get("id") != rid:
            raise InvalidRequest(f"the resource's id {resource.get('id')!r} does not match the URL's id {rid!r}",
                                 expression=[f"{rtype}.id"])
        if_match = _etag_version(req.header("if-match"))
        self._check_write_compartment(access, rtype, resource, "update")
        with _tx(self.engine, conn) as c:
            v = self.store.prepare_update(c, rtype, rid, resource, if_match=if_match)
            access.require(rtype, "create" if v.is_new else "update")
            (s,) = self.store.write(c, [v])
        return self._write_response(req, s, 201 if v.is_new else 200)

    def conditional_update(self, req: FhirRequest, access: Access, rtype: str,
                           conn: Connection | None = None) -> FhirResponse:
        """http.html#cond-update: no match → create, one → update it, several → 412."""
        query = urlencode(req.query)
        resource = self._body_resource(req, rtype)
        with _tx(self.engine, conn) as c:
            self._lock(c, f"{rtype}?{query}")
            found = self._match_ids(c, rtype, query)
            if len(found) > 1:
                raise MultipleMatches(f"{query!r} matches more than one {rtype}")
            if not found:
                access.require(rtype, "create")
                rid = resource.get("id")
                if rid:
                    cur = self.store.read(c, rtype, rid)
                    if cur is not None and not cur.deleted:
                        raise Conflict(f"{rtype}/{rid} exists but does not match {query!r}")
                v = (self.store.prepare_update(c, rtype, rid, resource) if rid
                     else self.store.prepare_create(rtype, resource, method="PUT"))
                (s,) = self.store.write(c, [v])
                return self._write_response(req, s, 201)
            rid = found[0]
            if resource.get("id") not in (None, rid):
                raise InvalidRequest(f"the resource's id {resource.get('id')!r} is not that of the match ({rid})")
            access.require(rtype, "update")
            v = self.store.prepare_update(c, rtype, rid, {**resource, "id": rid},
                                          if_match=_etag_version(req.header("if-match")))
            (s,) = self.store.write(c, [v])
        return self._write_response(req, s, 200)

    def delete(self, req: FhirRequest, access: Access, rtype: str, rid: str,
               conn: Connection | None = None) -> FhirResponse:
        """http.html#delete: a deletion version in history; deleting twice is fine (204)."""
        access.require(rtype, "delete")
        with _tx(self.engine, conn) as c:
            if self.store.read(c, rtype, rid) is not None:
                self._check_compartment(c, access, rtype, rid, "delete")
            v = self.store.prepare_delete(c, rtype, rid, if_match=_etag_version(req.header("if-match")))
            if v is not None:
                self.store.write(c, [v])
        headers = {"ETag": f'W/"{v.version}"'} if v else {}
        return FhirResponse(204 if self._prefer_return(req) != "OperationOutcome" else 200,
                            None if self._prefer_return(req) != "OperationOutcome" else
                            {"resourceType": "OperationOutcome", "issue": [
                                {"severity": "information", "code": "informational",
                                 "diagnostics": f"{rtype}/{rid} deleted" if v else f"{rtype}/{rid} was not there"}]},
                            headers, resources=[f"{rtype}/{rid}"], patients=[rid] if rtype == "Patient" else [])

    def conditional_delete(self, req: FhirRequest, access: Access, rtype: str,
                           conn: Connection | None = None) -> FhirResponse:
        """http.html#cdelete: deletes the single match (several matches → 412)."""
        access.require(rtype, "delete")
        query = urlencode(req.query)
        with _tx(self.engine, conn) as c:
            self._lock(c, f"{rtype}?{query}")
            found = self._match_ids(c, rtype, query)
            if len(found) > 1:
                raise MultipleMatches(f"{query!r} matches more than one {rtype}; conditional delete deletes one")
            versions = [v for v in (self.store.prepare_delete(c, rtype, rid) for rid in found) if v]
            self.store.write(c, versions)
        return FhirResponse(204, None, {}, resources=[f"{rtype}/{r}" for r in found])

    def patch(self, req: FhirRequest, access: Access, rtype: str, rid: str,
              conn: Connection | None = None) -> FhirResponse:
        """http.html#patch with JSON Patch (RFC 6902)."""
        access.require(rtype, "patch")
        ops = req.body
        if not isinstance(ops, list):
            raise InvalidRequest("a JSON Patch body is an array of operations (application/json-patch+json)")
        with _tx(self.engine, conn) as c:
            cur = self.store.read(c, rtype, rid, for_update=True)
            if cur is None:
                raise NotFound(f"{rtype}/{rid} is not known")
            if cur.deleted:
                raise Gone(f"{rtype}/{rid} was deleted")
            if_match = _etag_version(req.header("if-match"))
            if if_match is not None and if_match != cur.version:
                raise PreconditionFailed(f"{rtype}/{rid} is at version {cur.version}, not {if_match}")
            try:
                patched = jsonpatch.apply_patch(cur.resource(), ops)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as e:
                raise InvalidRequest(f"the patch cannot be applied: {e}", code="processing",
                                     status=422) from None
            if patched.get("id") != rid or patched.get("resourceType") != rtype:
                raise InvalidRequest("a patch may not change resourceType or id", status=422)
            validate_resource(patched, rtype)
            self._check_write_compartment(access, rtype, patched, "patch")
            v = self.store.prepare_update(c, rtype, rid, patched, method="PATCH", current=cur)
            (s,) = self.store.write(c, [v])
        return self._write_response(req, s, 200)

    def conditional_patch(self, req: FhirRequest, access: Access, rtype: str,
                          conn: Connection | None = None) -> FhirResponse:
        query = urlencode(req.query)
        with _tx(self.engine, conn) as c:
            found = self._match_ids(c, rtype, query)
            if len(found) != 1:
                raise (MultipleMatches if found else NotFound)(f"{query!r} matches {len(found)} {rtype}")
            return self.patch(FhirRequest(req.method, f"{rtype}/{found[0]}", [], req.headers, req.body),
                              access, rtype, found[0], conn=c)

    def _check_write_compartment(self, access: Access, rtype: str, resource: dict, interaction: str) -> None:
        pid = access.patient_only(rtype, interaction)
        if pid is None:
            return
        if rtype == "Patient" and resource.get("id") == pid:
            return
        refs = extract_index(resource).reference
        params = self.registry.compartment_params(rtype)
        if not any(r[1] == "Patient" and r[2] == pid
                   for code in params for r in rows_of_param(refs, self.registry.get(rtype, code))):
            raise Forbidden(f"the {rtype} is outside the patient context of this token")

    # ------------------------------------------------------------------ search
    def search_type(self, req: FhirRequest, access: Access, rtype: str) -> FhirResponse:
        access.require(rtype, "search-type")
        query = req.query
        for rewrite in self.search_rewriters:
            query = rewrite(rtype, query)
        q = self.parser.parse(rtype, query, strict=self._strict(req))
        extra = None
        pid = access.patient_only(rtype, "search-type")
        if pid:
            extra = self.executor.compartment_condition(rtype, [pid])
            if extra is None:
                    raise Forbidden(f"{rtype} has no patient compartment; patient/ scopes cannot search it")
        with self.engine.connect() as conn:
            res = self.executor.search(conn, q, extra_condition=extra)
        return self._searchset(req, q, res, rtype)

    def search_system(self, req: FhirRequest, access: Access) -> FhirResponse:
        q = self.parser.parse(None, req.query, strict=self._strict(req))
        if not q.types:
            raise InvalidRequest("a system-level search needs _type (which resource types to search)")
        for t in q.types:
            access.require(t, "search-system")
        with self.engine.connect() as conn:
            res = self.executor.search(conn, q)
        return self._searchset(req, q, res, "")

    def compartment_search(self, req: FhirRequest, access: Access, ctype: str, cid: str, rtype: str) -> FhirResponse:
        """search.html#compartments: ``Patient/123/Observation?…``."""
        if ctype != "Patient":
            raise NotSupported(f"only the Patient compartment is supported, not {ctype}")
        access.require(rtype, "search-type")
        pid = access.patient_only(rtype, "search-type")
        if pid and pid != cid:
            raise Forbidden("the compartment is outside the patient context of this token")
        with self.engine.connect() as conn:  # the compartment spans the person's linked records
            extra = self.executor.compartment_condition(rtype, self.linked_patients(conn, cid))
        if extra is None:
            raise InvalidRequest(f"{rtype} is not in the Patient compartment")
        q = self.parser.parse(rtype, req.query, strict=self._strict(req))
        with self.engine.connect() as conn:
            res = self.executor.search(conn, q, extra_condition=extra)
        resp = self._searchset(req, q, res, f"Patient/{cid}/{rtype}")
        resp.patients.append(cid)
        return resp

    def _searchset(self, req: FhirRequest, q: SearchQuery, res: SearchResult, path: str) -> FhirResponse:
        entries = []
        for s in res.matches:
            entries.append({"fullUrl": f"{self.base_url}/{s.res_type}/{s.res_id}",
                            "resource": self._shape(s, q), "search": {"mode": "match"}})
        for s in res.included:
            entries.append({"fullUrl": f"{self.base_url}/{s.res_type}/{s.res_id}",
                            "resource": self._shape(s, q), "search": {"mode": "include"}})
        if q.warnings:
            entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [
                {"severity": "warning", "code": "not-supported", "diagnostics": w} for w in q.warnings]},
                "search": {"mode": "outcome"}})
        bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
        if res.total is not None:
            bundle["total"] = res.total
        bundle["link"] = self._links(req, q, path, res.has_next)
        if entries:
            bundle["entry"] = entries
        patients = [s.res_id for s in res.matches if s.res_type == "Patient"]
        for k, v in req.query:
            if k in ("patient", "subject", "subject:Patient") and v:
                patients.append(v.split("/")[-1])
        return FhirResponse(200, bundle, {}, resources=[f"{s.res_type}/{s.res_id}" for s in res.matches][:100],
                            patients=patients)

    def _shape(self, s: Stored, q: SearchQuery):
        if not q.summary and not q.elements:
            return s.fragment()
        res = s.resource()
        if q.summary:
            res = apply_summary(res, q.summary)
        if q.elements:
            res = apply_elements(res, q.elements)
        return res

    def _links(self, req: FhirRequest, q: SearchQuery, path: str, has_next: bool) -> list[dict]:
        keep = [(k, v) for k, v in req.query if k not in ("_offset",)]
        if not any(k == "_count" for k, _ in keep):
            keep.append(("_count", str(q.count)))
        url = f"{self.base_url}/{path}" if path else self.base_url

        def link(rel: str, offset: int) -> dict:
            return {"relation": rel, "url": url + "?" + urlencode(keep + [("_offset", str(offset))])}

        links = [link("self", q.offset)]
        if q.offset > 0:
            links.append(link("first", 0))
            links.append(link("previous", max(0, q.offset - q.count)))
        if has_next:
            links.append(link("next", q.offset + q.count))
        return links

    # ------------------------------------------------------------------ history
    def history(self, req: FhirRequest, access: Access, rtype: str | None, rid: str | None) -> FhirResponse:
        """http.html#history with ``_since``, ``_at``, ``_count`` (and ``_offset`` for paging)."""
        if rtype:
            access.require(rtype, "history-instance" if rid else "history-type")
        else:
            # system history reveals every type: it needs a wildcard read scope
            access.require("*", "history-system")
        params = dict(req.query)
        since = at = None
        if "_since" in params:
            since = _parse_instant(params["_since"], "_since")
        if "_at" in params:
            at = _parse_instant(params["_at"], "_at", high=True)
        count = min(int(params.get("_count", 50)), 1000) if params.get("_count", "50").isdigit() else None
        if count is None:
            raise InvalidRequest("_count must be a whole number")
        offset = int(params.get("_offset", 0)) if params.get("_offset", "0").isdigit() else 0
        with self.engine.connect() as conn:
            if rid:
                cur = self.store.read(conn, rtype, rid)
                if cur is None:
                    raise NotFound(f"{rtype}/{rid} is not known")
            rows, total = self.store.history(conn, res_type=rtype, res_id=rid, since=since, at=at,
                                             count=count + 1, offset=offset)
        has_next = len(rows) > count
        rows = rows[:count]
        entries = []
        for s in rows:
            e: dict = {"fullUrl": f"{self.base_url}/{s.res_type}/{s.res_id}"}
            if s.content:
                e["resource"] = s.fragment()
            method = s.method or "PUT"
            e["request"] = {"method": method,
                            "url": f"{s.res_type}/{s.res_id}" if method not in ("POST",) else s.res_type}
            e["response"] = {"status": "201" if s.version == 1 and method != "DELETE" else
                             ("204" if method == "DELETE" else "200"),
                             "etag": s.etag, "lastModified": instant(s.last_updated)}
            entries.append(e)
        path = "/".join(p for p in (rtype, rid, "_history") if p)
        keep = [(k, v) for k, v in req.query if k != "_offset"]
        links = [{"relation": "self", "url": f"{self.base_url}/{path}?" + urlencode(keep + [("_offset", str(offset))])}]
        if has_next:
            links.append({"relation": "next",
                          "url": f"{self.base_url}/{path}?" + urlencode(keep + [("_offset", str(offset + count))])})
        bundle = {"resourceType": "Bundle", "type": "history", "total": total, "link": links}
        if entries:
            bundle["entry"] = entries
        return FhirResponse(200, bundle, {}, resources=[f"{rtype}/{rid}"] if rid else [],
                            patients=[rid] if rtype == "Patient" and rid else [])

    # ------------------------------------------------------------------ operations
    def operation(self, req: FhirRequest, access: Access, rtype: str | None, rid: str | None,
                  name: str) -> FhirResponse:
        if name == "validate" and rtype and req.method == "POST":
            return self.op_validate(req, access, rtype)
        if name == "everything" and rtype == "Patient" and rid and req.method in ("GET", "POST"):
            return self.op_everything(req, access, rid)
        handler = self.operations.get((rtype, name))
        if handler is not None:
            return handler(self, req, access, rtype, rid)
        where = f"{rtype}{'/' + rid if rid else ''}" if rtype else "the system level"
        raise NotSupported(f"operation ${name} is not supported on {where}")

    def op_validate(self, req: FhirRequest, access: Access, rtype: str) -> FhirResponse:
        """resource-operation-validate: the resource in the body (or in a Parameters ``resource``)."""
        access.require(rtype, "operation")
        body = req.body
        if isinstance(body, dict) and body.get("resourceType") == "Parameters":
            body = next((p.get("resource") for p in body.get("parameter", []) if p.get("name") == "resource"), None)
        try:
            if not isinstance(body, dict):
                raise InvalidResource("nothing to validate: send the resource as the body")
            validate_resource(body, rtype)
        except InvalidResource as e:
            return FhirResponse(200, e.outcome())
        return FhirResponse(200, {"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": "the resource is valid"}]})

    def op_everything(self, req: FhirRequest, access: Access, pid: str) -> FhirResponse:
        """Patient/{id}/$everything (patient-operation-everything), paged with _count/_offset."""
        access.require("Patient", "read")
        ctx = access.patient_only("Patient", "read")
        if ctx and ctx != pid:
            raise Forbidden("the patient is outside the patient context of this token")
        params = dict(req.query)
        count = min(int(params.get("_count", 1000)), 5000)
        offset = int(params.get("_offset", 0))
        types = [t for t in params.get("_type", "").split(",") if t] or None
        since = _parse_instant(params["_since"], "_since") if "_since" in params else None
        with self.engine.connect() as conn:
            self.store.read_current(conn, "Patient", pid)
            stored, has_next = self.executor.everything(conn, self.linked_patients(conn, pid), types=types, since=since,
                                                        count=count, offset=offset)
        for s in stored:
            if s.res_type != "Patient":
                access.require(s.res_type, "read")
        entries = [{"fullUrl": f"{self.base_url}/{s.res_type}/{s.res_id}", "resource": s.fragment(),
                    "search": {"mode": "match"}} for s in stored]
        keep = [(k, v) for k, v in req.query if k != "_offset"]
        url = f"{self.base_url}/Patient/{pid}/$everything"
        links = [{"relation": "self", "url": url + "?" + urlencode(keep + [("_offset", str(offset))])}]
        if has_next:
            links.append({"relation": "next", "url": url + "?" + urlencode(keep + [("_offset", str(offset + count))])})
        bundle: dict = {"resourceType": "Bundle", "type": "searchset", "link": links}
        if not has_next and offset == 0:
            bundle["total"] = len(entries)
        if entries:
            bundle["entry"] = entries
        return FhirResponse(200, bundle, {}, resources=[f"Patient/{pid}"], patients=[pid])

    # ------------------------------------------------------------------ bundles
    def _bundle(self, req: FhirRequest, access: Access) -> FhirResponse:
        from hub.fhir.bundles import process_bundle

        body = req.body
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise InvalidRequest("POST to the base URL takes a Bundle of type batch or transaction")
        btype = body.get("type")
        if btype not in ("batch", "transaction"):
            raise InvalidRequest(f"Bundle.type must be batch or transaction, not {btype!r}")
        prefer = self._prefer_return(req) if "return=" in (req.header("prefer") or "") else "minimal"
        return process_bundle(self, body, access, transaction=btype == "transaction", prefer=prefer)


def _may_see_audit_events(req: FhirRequest) -> bool:
    """Whether the request can read AuditEvents: by type or id, through _type, includes or _has,
    system-level search and history, $everything, or a bundle entry that does one of these."""
    path = req.path
    if "AuditEvent" in path or "$everything" in path:
        return True
    if req.method == "GET" and path.strip("/") in ("", "_history"):
        return True
    if any("AuditEvent" in k or "AuditEvent" in v for k, v in req.query):
        return True
    if req.method == "POST" and not path.strip("/") and isinstance(req.body, dict):
        for e in req.body.get("entry") or ():
            r = e.get("request") if isinstance(e, dict) else None
            if not isinstance(r, dict):
                continue
            url = str(r.get("url", ""))
            if str(r.get("method", "")).upper() in ("GET", "HEAD") and (
                    "AuditEvent" in url or "$everything" in url or url.split("?")[0].strip("/") in ("", "_history")):
                return True
    return False


class _tx:
    """Use the caller's connection (inside a bundle) or open a write transaction."""

    def __init__(self, engine: Engine, conn: Connection | None):
        self.engine, self.conn, self._cm = engine, conn, None

    def __enter__(self) -> Connection:
        if self.conn is not None:
            return self.conn
        self._cm = write_tx(self.engine)
        return self._cm.__enter__()

    def __exit__(self, *exc):
        if self._cm is not None:
            return self._cm.__exit__(*exc)
        return False


def _parse_instant(value: str, name: str, high: bool = False) -> int:
    try:
        lo, hi = parse_date_range(value)
    except (ValueError, TypeError):
        raise InvalidRequest(f"{name} must be an instant, not {value!r}") from None
    return hi if high else lo
