"""Batch and transaction bundles (http.html#transaction).

A transaction is one database transaction: entries run in the order the specification gives
(DELETE, POST, PUT/PATCH, GET), ``urn:uuid`` and other full URLs are replaced by the ids the
server assigns, conditional references (``Organization?identifier=sys|val``) are resolved inside
the transaction, and any failure rolls the whole bundle back. Plain creates are written together
in one batch. A batch runs each entry on its own and reports each outcome.
"""

from __future__ import annotations

import os
import re
from collections.abc import Container
from urllib.parse import parse_qsl, urlsplit

import orjson

from hub.errors import HubError, InvalidRequest, InvalidResource, MultipleMatches, NotFound, PreconditionFailed
from hub.fhir.model import ID_RE, Stored, instant
from hub.fhir.search.extract import IndexRows, extract_index
from hub.fhir.store import new_id
from hub.fhir.validation import validate_resource
from hub.security.access import Access

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
#: a relative URL that urlsplit would give back whole as its path: no scheme, query, fragment,
#: nor a character it strips or treats apart
_PLAIN_URL = re.compile(r"[A-Za-z0-9/._-]+")


def _entry_request(entry: dict, i: int) -> tuple[str, str, list[tuple[str, str]]]:
    req = entry.get("request")
    if not isinstance(req, dict) or not req.get("method") or not req.get("url"):
        raise InvalidRequest(f"Bundle.entry[{i}].request needs method and url", expression=[f"Bundle.entry[{i}].request"])
    method = str(req["method"]).upper()
    if method not in _ORDER:
        raise InvalidRequest(f"Bundle.entry[{i}].request.method {method!r} is not supported")
    url = str(req["url"])
    if _PLAIN_URL.fullmatch(url):
        # "Type/id" (every entry of an HL7 message): what urlsplit gives for it, without its
        # cost (a third of the time spent on an entry's request before the store runs)
        return method, url.strip("/"), []
    parts = urlsplit(url)
    path = parts.path
    return method, path.strip("/"), parse_qsl(parts.query, keep_blank_values=True)


def _walk_references(node, fn) -> int:
    """Apply ``fn`` to every ``reference`` string in a resource (Reference.reference), depth
    first in the order of the keys; a result other than None replaces the reference. Returns how
    many were replaced."""
    changed = 0
    if isinstance(node, dict):
        for k, v in node.items():
            # exact JSON types first (most values are strings), subclasses after them
            tv = type(v)
            if tv is str:
                if k == "reference":
                    new = fn(v)
                    if new is not None:
                        node[k] = new
                        changed += 1
            elif tv is dict:
                changed += _walk_references(v, fn)
            elif tv is list:
                # the items walked here, not in a call per list: most lists hold objects
                for x in v:
                    if isinstance(x, (dict, list)):
                        changed += _walk_references(x, fn)
            elif k == "reference" and isinstance(v, str):
                new = fn(v)
                if new is not None:
                    node[k] = new
                    changed += 1
            elif isinstance(v, (dict, list)):
                changed += _walk_references(v, fn)
    elif isinstance(node, list):
        for x in node:
            if isinstance(x, (dict, list)):
                changed += _walk_references(x, fn)
    return changed


def _is_conditional(ref: str) -> bool:
    """A conditional reference (``Patient?identifier=sys|val``, http.html#trules), which only
    the transaction can resolve."""
    return "?" in ref and not ref.startswith(("http:", "https:", "urn:"))


class Checked:
    """Entries of a transaction bundle validated and indexed ahead, outside the write
    transaction (:func:`check_entries`): validation and search-index extraction are functions of
    the resource alone. Held per resource object; an entry whose resource is replaced or whose
    references the transaction rewrites is checked again inside it, as any other. A resource may
    be validated without index rows (a store hook changes it as it is written, which makes its
    rows again)."""

    __slots__ = ("_by_id", "_final")

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[dict, str, IndexRows | None]] = {}
        self._final: set[int] = set()  # id() of checked resources whose references need no rewriting

    def add(self, res: dict, rtype: str, index: IndexRows | None, *, final: bool = False) -> None:
        self._by_id[id(res)] = (res, rtype, index)
        if final:
            self._final.add(id(res))
        else:
            self._final.discard(id(res))

    def references_final(self, res) -> bool:
        """Whether ``res`` was checked with references the transaction leaves as they are
        (:func:`resolve_put_references` found none it must rewrite), so it need not walk them."""
        hit = self._by_id.get(id(res))
        return hit is not None and hit[0] is res and id(res) in self._final

    def index_of(self, res, rtype: str) -> IndexRows | None:
        """The index rows of ``res`` as validated for ``rtype``, or None if it was not (or
        was validated without them)."""
        return self.checked_as(res, rtype)[1]

    def checked_as(self, res, rtype: str) -> tuple[bool, IndexRows | None]:
        """Whether ``res`` was validated for ``rtype``, and its index rows if they were made."""
        hit = self._by_id.get(id(res))
        if hit is None or hit[0] is not res or hit[1] != rtype:
            return False, None
        return True, hit[2]

    def forget(self, res) -> None:
        self._by_id.pop(id(res), None)
        self._final.discard(id(res))

    def __len__(self) -> int:
        return len(self._by_id)


def resolve_put_references(bundle: dict) -> set[int]:
    """Point the references to a plain PUT entry's ``fullUrl`` at its ``Type/id``, in place, as
    the transaction would (http.html#trules: a PUT entry's id is the one in its URL, known
    without the database), so a caller can do it before the write transaction. Returns the
    id() of the resources still holding references only the transaction can rewrite (to
    another entry's ``fullUrl``, conditional ones); pass it to :func:`check_entries` as
    ``pending``."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return set()
    url_map: dict[str, str] = {}
    others: set[str] = set()  # full URLs whose id the transaction assigns (POST) or finds
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("fullUrl"), str):
            continue
        req = e.get("request") if isinstance(e.get("request"), dict) else {}
        url = str(req.get("url") or "")
        full = e["fullUrl"]
        if (str(req.get("method") or "").upper() in ("PUT", "PATCH") and _PLAIN_URL.fullmatch(url)
                and len(url.strip("/").split("/")) == 2 and full not in url_map and full not in others):
            url_map[full] = url.strip("/")
        else:  # a full URL given twice is left to the transaction's plan (the later entry holds)
            others.add(full)
            url_map.pop(full, None)
    resources = [e.get("resource") for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    if not _any_reference_to_rewrite(resources, url_map, others):
        return set()  # nothing to rewrite anywhere (the HL7 mappings refer by Type/id)
    pending: set[int] = set()
    for res in resources:
        found = False

        def to_path(ref: str) -> str | None:
            nonlocal found
            new = url_map.get(ref)
            if new is None and (ref in others or _is_conditional(ref)):
                found = True
            return new

        _walk_references(res, to_path)
        if found:
            pending.add(id(res))
    return pending


#: a "reference" key with a string value in JSON text (a key when "{" or "," stands before it:
#: inside a string every quote is escaped); the value as written, escapes included. The literal
#: comes first so that the scan looks for it alone (a character class first made it 8x slower)
_REFERENCE_IN_JSON = re.compile(rb'"reference":"([^"\\]*(?:\\.[^"\\]*)*)"')


def _any_reference_to_rewrite(resources: list, url_map: dict, others: set) -> bool:
    """Whether any reference in ``resources`` is a key of ``url_map``, in ``others`` or
    conditional. One serialization and a scan of it cost a fraction of walking the resources
    in Python; where it finds one, the caller walks them."""
    try:
        blob = orjson.dumps(resources)
    except TypeError:  # not JSON (the transaction will say so): walk
        return True
    # the full URLs of a bundle mostly share their beginning (the server's base): where no
    # reference starts with it and no "?" is anywhere, none is a full URL or conditional —
    # one substring search instead of a look at each reference
    prefix = os.path.commonprefix([*url_map, *others]) if url_map or others else None
    if b"?" not in blob and (prefix is None or (
            len(prefix) >= 8 and b'"reference":"' + orjson.dumps(prefix)[1:-1] not in blob)):
        return False
    for m in _REFERENCE_IN_JSON.finditer(blob):
        if blob[m.start() - 1] not in b"{,":
            continue  # not a key
        raw = m.group(1)
        ref = orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
        if ref in url_map or ref in others or _is_conditional(ref):
            return True
    return False


def check_entries(bundle: dict, *, pending: set[int] | None = None, unindexed: Container[int] = ()) -> Checked:
    """Validate and index the POST and plain PUT entries of a transaction bundle, without the
    database. An entry that fails is left out: the transaction checks it again and words its
    error with the entry's place, exactly as without this step. ``pending``: the bundle's
    references were resolved by :func:`resolve_put_references`, which returned it; the
    transaction then walks only these resources' references. ``unindexed``: id() of resources
    only validated, as a store hook changes them when they are written (the master patient
    index's link to the golden record), and the store then makes their index rows anew."""
    checked = Checked()
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return checked
    for e in entries:
        if not isinstance(e, dict):
            continue
        req = e.get("request")
        res = e.get("resource")
        if not isinstance(req, dict) or not isinstance(res, dict) or req.get("ifMatch"):
            continue
        method = str(req.get("method") or "").upper()
        url = str(req.get("url") or "")
        if "?" in url:
            continue
        parts = url.strip("/").split("/")
        if not ((method == "POST" and len(parts) == 1) or (method == "PUT" and len(parts) == 2)):
            continue
        try:
            validate_resource(res, parts[0])
        except HubError:
            continue
        checked.add(res, parts[0], None if id(res) in unindexed else extract_index(res),
                    final=pending is not None and id(res) not in pending)
    return checked


class _WriteChecks:
    """The access checks of a bundle's writes, made once per resource type and interaction:
    for a caller not confined to a patient's compartment they depend on nothing else, and a
    bundle's entries are of a few types (an HL7 message: 15 entries, 6 types)."""

    __slots__ = ("svc", "access", "_granted", "_unconfined")

    def __init__(self, svc, access: Access) -> None:
        self.svc = svc
        self.access = access
        self._granted: set[tuple[str, str]] = set()
        self._unconfined: set[tuple[str, str]] = set()

    def require(self, rtype: str, interaction: str) -> None:
        if (rtype, interaction) not in self._granted:
            self.access.require(rtype, interaction)
            self._granted.add((rtype, interaction))

    def compartment(self, rtype: str, res: dict, interaction: str) -> None:
        """:meth:`FhirService._check_write_compartment`, skipped where no ``patient/`` scope
        confines the caller."""
        if (rtype, interaction) in self._unconfined:
            return
        if self.access.patient_only(rtype, interaction) is None:
            self._unconfined.add((rtype, interaction))
            return
        self.svc._check_write_compartment(self.access, rtype, res, interaction)


def _response_entry(svc, stored: Stored | None, status: int, prefer: str, body=None) -> dict:
    resp: dict = {"status": str(status)}
    out: dict = {}
    if stored is not None:
        resp["location"] = f"{stored.res_type}/{stored.res_id}/_history/{stored.version}"
        resp["etag"] = stored.etag
        resp["lastModified"] = instant(stored.last_updated)
        out["fullUrl"] = f"{svc.base_url}/{stored.res_type}/{stored.res_id}"
        if prefer == "representation" and stored.content:
            out["resource"] = stored.fragment()
    elif body is not None:
        out["resource"] = body
    out["response"] = resp
    return out


def _plan(svc, conn, entries, parsed):
    """Step 1 of a transaction: an id for every entry that creates or names a resource, so
    references can be rewritten. ``conn`` is needed only by ``ifNoneExist`` entries."""
    url_map: dict[str, str] = {}
    plan: list[tuple[int, str, str, list, dict | None, str | None]] = []
    for i, (entry, (method, path, query)) in enumerate(zip(entries, parsed)):
        res = entry.get("resource")
        parts = path.split("/")
        rid = None
        if method == "POST":
            if len(parts) != 1 or parts[0] not in svc.registry.resource_types:
                raise InvalidRequest(f"Bundle.entry[{i}]: POST url must be a resource type, not {path!r}")
            cond = (entry.get("request") or {}).get("ifNoneExist")
            if cond:
                svc._lock(conn, f"{parts[0]}?{cond}")
                found = svc._match_ids(conn, parts[0], cond)
                if len(found) > 1:
                    raise MultipleMatches(f"Bundle.entry[{i}]: ifNoneExist {cond!r} matches several {parts[0]}")
                if found:
                    rid = found[0]
                    plan.append((i, "MATCHED", parts[0], [], res, rid))
                else:
                    rid = new_id()
                    plan.append((i, method, parts[0], [], res, rid))
            else:
                rid = new_id()
                plan.append((i, method, parts[0], [], res, rid))
            if entry.get("fullUrl"):
                url_map[entry["fullUrl"]] = f"{parts[0]}/{rid}"
        elif method in ("PUT", "PATCH") and len(parts) == 2:
            if entry.get("fullUrl"):
                url_map[entry["fullUrl"]] = path
            plan.append((i, method, parts[0], query, res, parts[1]))
        else:
            plan.append((i, method, parts[0] if parts else "", query, res, parts[1] if len(parts) > 1 else None))
    return url_map, plan


def process_bundle(svc, bundle: dict, access: Access, *, transaction: bool, prefer: str = "minimal",
                   conn=None, checked: Checked | None = None, currents: dict | None = None,
                   locations_only: bool = False, defer: list | None = None):
    """Run a batch or transaction bundle. ``conn``: run the transaction on the caller's
    connection (inside its transaction or savepoint, e.g. the HL7 ingest applying one message
    together with its raw-log status) instead of opening a write transaction. ``checked``: its
    entries validated and indexed ahead (:func:`check_entries`), so that the write
    transaction does not spend its lock on that. ``currents``: the stored current versions
    (None: none) of plain ``PUT Type/id`` entries, read by the caller on ``conn`` in this
    transaction (the HL7 ingest's stale guard reads them anyway), so they are not read again.
    ``locations_only``: the response entries of the writes carry their status and location only
    (what the HL7 ingest reads of them), not the etag, lastModified and fullUrl. ``defer`` (with
    ``conn``): the writes the transaction ends with are not made but their versions appended to
    it, for the caller to write on ``conn`` with other transactions' in one
    :meth:`FhirStore.write` (the HL7 ingest, for the messages of a batch); their response
    entries are None then."""
    if checked is None:
        checked = Checked()
    if defer is not None and conn is None:
        raise ValueError("deferred writes need the caller's connection")
    from hub.fhir.service import FhirResponse, _tx

    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidRequest("Bundle.entry must be a list")
    if not transaction:
        return FhirResponse(200, {"resourceType": "Bundle", "type": "batch-response",
                                  "entry": [_batch_entry(svc, e, i, access) for i, e in enumerate(entries)]})
    parsed = [_entry_request(e, i) for i, e in enumerate(entries)]
    read_ahead = dict(currents) if currents and conn is not None else {}  # read on the caller's connection
    results: list[dict | None] = [None] * len(entries)
    checks = _WriteChecks(svc, access)
    touched: list[str] = []
    patients: list[str] = []
    # the work that needs no database is done before the write transaction when it can be:
    # ids and references between entries, then validation and index rows (check_entries); a
    # conditional create (ifNoneExist) needs the transaction's view to be planned
    planned = None
    with_conditional: set[int] = set()  # planned: id() of the resources holding conditional references
    if conn is None and not any(isinstance(e, dict) and (e.get("request") or {}).get("ifNoneExist")
                                for e in entries):
        planned = _plan(svc, None, entries, parsed)
        url_map = planned[0]
        found_conditional = False

        def to_assigned_id(ref: str) -> str | None:
            nonlocal found_conditional
            new = url_map.get(ref)
            if new is None and _is_conditional(ref):
                found_conditional = True
            return new

        for (_i, _m, _t, _q, res, _rid) in planned[1]:
            if isinstance(res, dict):
                found_conditional = False
                if _walk_references(res, to_assigned_id):
                    checked.forget(res)  # a caller's rows of it hold the references it had before
                if found_conditional:  # the only references the transaction still rewrites
                    with_conditional.add(id(res))
        if not len(checked):
            checked = check_entries(bundle)
    with _tx(svc.engine, conn) as conn:
        url_map, plan = planned or _plan(svc, conn, entries, parsed)

        # 2. rewrite references: full URLs of entries → assigned ids; conditional references
        cond_cache: dict[str, str] = {}

        def rewrite(ref: str) -> str | None:
            if planned is None and ref in url_map:  # planned: rewritten before the transaction
                return url_map[ref]
            if _is_conditional(ref):
                if ref not in cond_cache:
                    rtype, _, q = ref.partition("?")
                    if rtype not in svc.registry.resource_types:
                        raise InvalidRequest(f"conditional reference {ref!r}: unknown type {rtype!r}")
                    found = svc._match_ids(conn, rtype, q)
                    if not found:
                        found = _match_in_bundle(svc, rtype, q, plan)
                    if len(found) != 1:
                        raise (MultipleMatches if found else NotFound)(
                            f"conditional reference {ref!r} matches {len(found)} resources (it must match one)")
                    cond_cache[ref] = f"{rtype}/{found[0]}"
                return cond_cache[ref]
            return None

        for (_i, _m, _t, _q, res, _rid) in plan:
            # resources whose references were resolved ahead and need nothing of the transaction
            # are not walked: walking every resource cost the HL7 ingest a tenth of its lock time
            if (isinstance(res, dict) and (planned is None or id(res) in with_conditional)
                    and not checked.references_final(res) and _walk_references(res, rewrite)):
                checked.forget(res)  # its references changed: checked again below

        # 3. run in the specified order
        creates = []
        ordered = sorted(plan, key=lambda p: _ORDER.get(p[1], 1))
        # current versions of the plain PUT entries, read together when the first is prepared;
        # forgotten whenever an entry is written on its own (a later PUT may target what it wrote)
        currents: dict[tuple[str, str], Stored | None] = read_ahead

        def current_of(rtype: str, rid: str, from_index: int):
            if (rtype, rid) not in currents:
                currents.clear()
                currents.update(svc.store.read_versions(conn, [
                    (t, r) for _i, m, t, q, _res, r in ordered[from_index:]
                    if m == "PUT" and r and not q and ID_RE.match(r)], for_update=True))
            return currents.get((rtype, rid), False)

        for n, (i, method, rtype, query, res, rid) in enumerate(ordered):
            try:
                if method == "MATCHED":
                    s = svc.store.read(conn, rtype, rid)
                    results[i] = _response_entry(svc, s, 200, prefer)
                elif method == "POST":
                    checks.require(rtype, "create")
                    if not isinstance(res, dict):
                        raise InvalidRequest(f"Bundle.entry[{i}].resource is missing")
                    validated, index = checked.checked_as(res, rtype)
                    if not validated:
                        validate_resource(res, rtype)
                    checks.compartment(rtype, res, "create")
                    v = svc.store.prepare_create(rtype, res, rid)
                    v.index = index
                    creates.append((i, v))
                    continue
                elif method == "PUT" and rid and not query and not (entries[i].get("request") or {}).get("ifMatch"):
                    # a plain update (the HL7 ingest's every entry): written with the bundle's
                    # other writes in one store.write, so store hooks run once per bundle
                    create_only = (entries[i].get("request") or {}).get("ifNoneMatch") == "*"
                    creates.append((i, _prepare_put(svc, conn, checks, rtype, rid, res, create_only=create_only,
                                                    current=lambda: current_of(rtype, rid, n),
                                                    checked=checked.checked_as(res, rtype))))
                    continue
                else:
                    if creates:  # later entries may search or read what was created
                        _flush(svc, conn, creates, results, prefer, touched, locations_only)
                        creates = []
                    currents.clear()
                    r = _run_entry(svc, conn, access, method, rtype, rid, query, res, entries[i])
                    results[i] = _response_entry(svc, r.stored, r.status, prefer, r.body if r.stored is None else None)
                    touched += r.resources
                    patients += r.patients
            except HubError as e:
                e.diagnostics = f"Bundle.entry[{i}]: {e.diagnostics}"
                raise
        if creates and defer is not None:
            defer.extend(v for _, v in creates)
        elif creates:
            _flush(svc, conn, creates, results, prefer, touched, locations_only)
    patients += [t.split("/")[1] for t in touched if t.startswith("Patient/")]
    return FhirResponse(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": results}, {},
                        resources=touched[:200], patients=list(dict.fromkeys(patients)))


def _flush(svc, conn, creates, results, prefer, touched, locations_only: bool = False) -> None:
    stored = svc.store.write(conn, [v for _, v in creates])
    for (i, v), s in zip(creates, stored):
        status = 201 if v.is_new else 200
        results[i] = ({"response": {"status": str(status), "location": s.location}} if locations_only
                      else _response_entry(svc, s, status, prefer))
        touched.append(f"{s.res_type}/{s.res_id}")


def _prepare_put(svc, conn, checks: _WriteChecks, rtype: str, rid: str, res, *, create_only: bool = False,
                 current=lambda: False, checked: tuple[bool, IndexRows | None] = (False, None)):
    """The version a plain ``PUT Type/id`` entry writes (http.html#update, update as create);
    the same checks as :meth:`FhirService.update`, without writing yet. ``create_only``
    (``ifNoneMatch: *``, RFC 9110 §13.1.2): 412 when the resource exists. ``current()``: the
    stored current version read ahead (None: there is none), or False to read it here.
    ``checked``: whether the resource was validated ahead, and its index rows if they were made
    (:meth:`Checked.checked_as`)."""
    if not ID_RE.match(rid):
        raise InvalidRequest(f"{rid!r} is not a valid id")
    if not isinstance(res, dict):
        raise InvalidResource("the request body must be a FHIR resource (JSON object)")
    validated, index = checked
    if not validated:
        validate_resource(res, rtype)
    if res.get("id") != rid:
        raise InvalidRequest(f"the resource's id {res.get('id')!r} does not match the URL's id {rid!r}",
                             expression=[f"{rtype}.id"])
    checks.compartment(rtype, res, "update")
    v = svc.store.prepare_update(conn, rtype, rid, res, current=current())
    v.index = index
    if create_only and not v.is_new:
        raise PreconditionFailed(f"{rtype}/{rid} exists; ifNoneMatch * only creates it")
    checks.require(rtype, "create" if v.is_new else "update")
    return v


def _match_in_bundle(svc, rtype: str, query: str, plan) -> list[str]:
    """A conditional reference to a resource created earlier in the same bundle: match its
    token parameters (the ``identifier=system|value`` form bundles use) in memory."""
    from hub.fhir.search.extract import extract_index, rows_of_param

    items = parse_qsl(query)
    out = []
    for (_i, method, t, _q, res, rid) in plan:
        if t != rtype or method != "POST" or not isinstance(res, dict):
            continue
        tokens = extract_index(res).token
        ok = True
        for k, v in items:
            sys_, _, code = v.rpartition("|") if "|" in v else (None, "", v)
            sp = svc.registry.get(rtype, k)
            rows = rows_of_param(tokens, sp) if sp is not None else []
            if not any(row[2] == code and (sys_ is None or row[1] == sys_) for row in rows):
                ok = False
                break
        if ok:
            out.append(rid)
    return out


def _run_entry(svc, conn, access, method, rtype, rid, query, res, entry):
    from hub.fhir.service import FhirRequest

    req_el = entry.get("request") or {}
    headers = {}
    if req_el.get("ifMatch"):
        headers["if-match"] = req_el["ifMatch"]
    if req_el.get("ifNoneExist"):
        headers["if-none-exist"] = req_el["ifNoneExist"]
    if method == "PUT":
        req = FhirRequest("PUT", f"{rtype}/{rid}" if rid else rtype, query, headers, res)
        if rid:
            if not ID_RE.match(rid):
                raise InvalidRequest(f"{rid!r} is not a valid id")
            return svc.update(req, access, rtype, rid, conn=conn)
        return svc.conditional_update(req, access, rtype, conn=conn)
    if method == "PATCH":
        body = res
        if isinstance(res, dict) and res.get("resourceType") == "Binary" and res.get("data"):
            import base64

            import orjson
            body = orjson.loads(base64.b64decode(res["data"]))
        return svc.patch(FhirRequest("PATCH", f"{rtype}/{rid}", [], headers, body), access, rtype, rid, conn=conn)
    if method == "DELETE":
        req = FhirRequest("DELETE", f"{rtype}/{rid}" if rid else rtype, query, headers)
        if rid:
            return svc.delete(req, access, rtype, rid, conn=conn)
        return svc.conditional_delete(req, access, rtype, conn=conn)
    # GET / HEAD inside a transaction: a read-only interaction
    path = "/".join(p for p in (rtype, rid) if p)
    _interaction, run = svc._dispatch(FhirRequest("GET", path, query, headers), access)
    return run()


def _batch_entry(svc, entry: dict, i: int, access: Access) -> dict:
    from hub.fhir.service import FhirRequest

    try:
        method, path, query = _entry_request(entry, i)
        req_el = entry.get("request") or {}
        headers = {}
        if req_el.get("ifMatch"):
            headers["if-match"] = req_el["ifMatch"]
        if req_el.get("ifNoneExist"):
            headers["if-none-exist"] = req_el["ifNoneExist"]
        body = entry.get("resource")
        if isinstance(body, dict):
            # a batch entry may not refer to another entry's urn:uuid (http.html#brules)
            bad = []
            _walk_references(body, lambda r: bad.append(r) if r.startswith("urn:uuid:") else None)
            if bad:
                raise InvalidRequest(f"batch entries cannot reference other entries ({bad[0]}); use a transaction")
        r = svc.handle(FhirRequest(method, path, query, headers, body), access)
        if r.stored is not None:
            return _response_entry(svc, r.stored, r.status, "representation" if method == "GET" else "minimal")
        out = {"response": {"status": str(r.status)}}
        if r.body is not None:
            out["resource"] = r.body
        return out
    except HubError as e:
        return {"response": {"status": str(e.status), "outcome": e.outcome()}}

