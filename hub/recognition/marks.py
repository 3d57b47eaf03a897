"""The HR mark on stored results: ``meta.tag`` codes of :data:`MARK_SYSTEM`, one per scope the
result is recognizable in (code = scope code, display = its label such as 鄂HR), each carrying
the expiry as the :data:`EXPIRY_EXTENSION` extension of the Coding (datatypes.html#Coding is an
Element, so it may carry extensions; meta.tag is where "tags that classify a resource" go,
resource.html#Meta).

The mark is the patient-independent part of the decision: catalogue item (R1), performer inside
the scope (R2), qualified at the result time (R3), final (R4). It is set on every write of an
Observation or DiagnosticReport (``FhirStore.before_write``, whatever the entry path) and
refreshed on the stored results when reference data changes (:func:`retag`). A mark the source
sent in :data:`MARK_SYSTEM` is kept as a claim in :data:`MARK_CLAIMED_SYSTEM` for rule R7.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import lru_cache

import orjson
from sqlalchemy import Connection, Engine, and_, or_, select

from hub.fhir.model import Stored
from hub.fhir.store import FhirStore, Version
from hub.recognition import results
from hub.recognition.reference import Reference
from hub.recognition.results import EXPIRY_EXTENSION, MARK_CLAIMED_SYSTEM, MARK_SYSTEM
from hub.recognition.rules import CHINA_TIME, Candidate, marked_scopes
from hub.storage.db import write_tx
from hub.storage.schema import resources as T
from hub.storage.schema import sp_token as TOK

log = logging.getLogger("yilian.recognition")

MARKED_TYPES = results.RESULT_TYPES


def candidate(ref: Reference, resource: dict, orgs_by_id: dict[str, str],
              report_performer: str | None = None) -> Candidate:
    org = results.performer(resource, orgs_by_id) or report_performer
    item, _ = ref.item_for(results.codings(resource), org)
    return Candidate(item, org, resource.get("status"), results.effective(resource),
                     claimed_marks=results.claimed_marks(resource))


def _instant(dt) -> str:
    return dt.astimezone(CHINA_TIME).isoformat(timespec="seconds")


def marks(ref: Reference, c: Candidate) -> list[dict]:
    out = []
    for entry, _q in marked_scopes(ref, c):
        tag = {"system": MARK_SYSTEM, "code": entry.scope, "display": ref.label(entry.scope)}
        if c.effective is not None:
            expires = c.effective + timedelta(days=entry.time_limit_days)
            tag = {"extension": [{"url": EXPIRY_EXTENSION, "valueDateTime": _instant(expires)}], **tag}
        out.append(tag)
    return out


def apply_marks(ref: Reference, resource: dict, orgs_by_id: dict[str, str],
                report_performer: str | None = None) -> bool:
    """Set the marks on ``resource`` (in place); True when its tags changed."""
    meta = resource.setdefault("meta", {})
    before = list(meta.get("tag") or [])
    kept, claims = [], []
    for t in before:
        if isinstance(t, dict) and t.get("system") == MARK_SYSTEM:
            if not t.get("extension") and t.get("code"):  # sent by the source, not set by the hub
                claims.append({"system": MARK_CLAIMED_SYSTEM, "code": t["code"],
                               **({"display": t["display"]} if t.get("display") else {})})
            continue
        kept.append(t)
    kept.extend(c for c in claims if c not in kept)
    c = candidate(ref, {**resource, "meta": {**meta, "tag": kept}}, orgs_by_id, report_performer)
    deserved = marks(ref, c)
    if claims:  # R7 at ingest: a data-quality alert for the sender (codes and ids only, no patient data)
        supported = {t["code"] for t in deserved} | {t["display"] for t in deserved}
        wrong = sorted({t["code"] for t in claims} - supported)
        if wrong:
            log.warning("data quality: %s/%s from %s carries HR mark(s) %s that the reference data does not support",
                        resource.get("resourceType"), resource.get("id"), c.performer or "an unknown performer",
                        ", ".join(wrong))
    after = kept + deserved
    if after:
        meta["tag"] = after
    else:
        meta.pop("tag", None)
        if not meta:
            resource.pop("meta", None)
    return after != before


def _report_performers(ref: Reference, reports: Sequence[dict], orgs_by_id: dict[str, str]) -> dict[str, str]:
    """Observation id → performer of the DiagnosticReport listing it in ``result``."""
    out: dict[str, str] = {}
    for rep in reports:
        org = results.performer(rep, orgs_by_id)
        if not org:
            continue
        for r in rep.get("result") or []:
            ref_ = str((r or {}).get("reference") or "")
            if ref_.startswith("Observation/"):
                out.setdefault(ref_.split("/", 1)[1], org)
            elif ref_.startswith("urn:uuid:"):
                out.setdefault(ref_, org)
    return out


@lru_cache(maxsize=64)
def _reports_listing_sql(dialect: str, n_ids: int) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return ("SELECT DISTINCT res_id FROM sp_reference WHERE res_type = 'DiagnosticReport' AND param = 'result' "
            f"AND target_type = 'Observation' AND target_id IN ({', '.join([mark] * n_ids)})")


def _stored_report_performers(conn: Connection, ref: Reference, orgs_by_id: dict[str, str],
                              obs_ids: list[str]) -> dict[str, str]:
    """Observation id → performer of a stored DiagnosticReport listing it in ``result``."""
    if not obs_ids:
        return {}
    # on every write of results that name no performer: a fixed SQL text straight to the DBAPI
    # cursor (as FhirStore.read does), not a SQLAlchemy statement built and compiled each time
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(_reports_listing_sql(conn.dialect.name, len(obs_ids)), tuple(obs_ids))
        rep_ids = [r for (r,) in cursor.fetchall()]
    finally:
        cursor.close()
    if not rep_ids:
        return {}
    reports = [orjson.loads(c) for (c,) in conn.execute(select(T.c.content).where(
        T.c.res_type == "DiagnosticReport", T.c.res_id.in_(rep_ids), T.c.deleted.is_(False)))]
    return _report_performers(ref, reports, orgs_by_id)


def _performers(conn: Connection, ref: Reference, orgs: dict[str, str], items: list[tuple[str, str, dict]],
                unreferenced: frozenset[str] | set[str] = frozenset()) -> dict:
    """Report performers for the Observations among ``items`` (type, id, resource) that name
    none themselves: from reports in the same write, else from stored reports. ``unreferenced``:
    Observation ids no stored report can list (created now under an id the server chose)."""
    by_report = _report_performers(ref, [r for t, _, r in items if t == "DiagnosticReport"], orgs)
    missing = [i for t, i, r in items if t == "Observation" and i not in by_report and i not in unreferenced
               and results.performer(r, orgs) is None]
    by_report.update(_stored_report_performers(conn, ref, orgs, missing))
    return by_report


def _may_change(ref: Reference, resource: dict) -> bool:
    """Whether marking can change ``resource``: it carries a tag of the mark system (the hub's or
    the source's), or one of its codes may stand for a catalogue item. Most results written are
    neither, and skip the rest of the work."""
    tags = (resource.get("meta") or {}).get("tag")
    if tags and any(isinstance(t, dict) and t.get("system") == MARK_SYSTEM for t in tags):
        return True
    codes = ref.catalogue_codes
    return bool(codes) and any(c.get("code") in codes for c in results.codings(resource))


def before_write_hook(snapshot: Callable[[Connection], Reference]):
    """A ``FhirStore.before_write`` hook that marks Observations and DiagnosticReports."""

    def hook(conn: Connection, versions: Sequence[Version]) -> None:
        todo = [v for v in versions if v.resource is not None and v.res_type in MARKED_TYPES]
        if not todo:
            return
        ref = snapshot(conn)
        todo = [v for v in todo if _may_change(ref, v.resource)]
        if not todo:
            return
        orgs = ref.orgs_by_id
        # a POST creates under a fresh id the server chose: no stored report can list it yet
        fresh = {v.res_id for v in todo if v.is_new and v.method == "POST"}
        by_report = _performers(conn, ref, orgs, [(v.res_type, v.res_id, v.resource) for v in todo], fresh)
        for v in todo:
            try:
                apply_marks(ref, v.resource, orgs, by_report.get(v.res_id))
            except Exception:  # a mark is advice: never refuse a clinical result because of it
                log.exception("could not mark %s/%s; stored without a recognition mark", v.res_type, v.res_id)
            v.amended()  # serialized and indexed again after the hooks

    return hook


def retag(engine: Engine, store: FhirStore, snapshot: Callable[[Connection], Reference], *,
          batch: int = 500) -> int:
    """Refresh the marks of the stored Observations and DiagnosticReports after a reference data
    change — those marked now or coded as a catalogue item (found through the token index, so
    the rest of the store is not read); writes a new version only where the marks change.
    Returns how many changed."""
    changed = 0
    for rtype in MARKED_TYPES:
        last = 0
        while True:
            with write_tx(engine) as conn:
                ref = snapshot(conn)
                orgs = ref.orgs_by_id
                # only results that carry a mark or have a code of a catalogue item can change
                # (in batches by resource key: an update keeps it, so none is visited twice)
                pks = [pk for (pk,) in conn.execute(
                    select(TOK.c.res_pk).distinct()
                    .where(TOK.c.res_type == rtype, TOK.c.res_pk > last,
                           or_(and_(TOK.c.param == "_tag", TOK.c.system == MARK_SYSTEM),
                               and_(TOK.c.param == "code", TOK.c.code.in_(sorted(ref.catalogue_codes)))))
                    .order_by(TOK.c.res_pk).limit(batch))]
                if not pks:
                    break
                last = pks[-1]
                rows = conn.execute(
                    select(T.c.res_id, T.c.version, T.c.last_updated, T.c.content, T.c.res_pk)
                    .where(T.c.res_pk.in_(pks), T.c.deleted.is_(False))
                    .order_by(T.c.res_id).with_for_update()).all()
                docs = [(rtype, r.res_id, orjson.loads(r.content)) for r in rows]
                by_report = _performers(conn, ref, orgs, docs)
                updates = []
                for r, (_, rid, res) in zip(rows, docs):
                    if apply_marks(ref, res, orgs, by_report.get(rid)):
                        cur = Stored(rtype, rid, r.version, r.last_updated, False, r.content, res_pk=r.res_pk)
                        updates.append(store.prepare_update(conn, rtype, rid, res, current=cur))
                if updates:
                    store.write(conn, updates)
                    changed += len(updates)
    if changed:
        log.info("recognition marks refreshed on %d results", changed)
    return changed
