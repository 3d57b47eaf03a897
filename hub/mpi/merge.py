"""Patient merge and unmerge: re-pointing records from one Patient to another.

FHIR R4 patient merge semantics (patient.html#links, the ``Patient.link`` types): after
merging *merged* into *survivor*, the survivor carries ``link: {other: merged, type: replaces}``,
the merged Patient ``link: {other: survivor, type: replaced-by}`` and ``active: false``, and every
resource that referred to the merged Patient refers to the survivor. IHE PMIR (ITI-93 "merge")
and HL7 v2 ADT A40 (merge patient — patient identifier list) mean the same.

Records are re-pointed as new versions through the FHIR store, inside the caller's write
transaction, so search indexes, history and the store hooks (the master patient index) see the
change like any other write. Which reference elements were re-pointed is kept (``mpi_merge_move``)
so that :func:`undo_merge` puts exactly those back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import orjson
from sqlalchemy import Connection, and_, or_, select, update

from hub.errors import Conflict, Gone, InvalidRequest, NotFound
from hub.fhir.model import now_us
from hub.mpi.tables import mpi_merge, mpi_merge_move, mpi_nonmatch
from hub.storage.schema import sp_reference

_REF = sp_reference.c
_CHUNK = 500
#: records of what happened, about the Patient as it was then: never rewritten by a merge
_EVIDENCE_TYPES = ("AuditEvent", "Provenance")

Path = tuple[str | int, ...]


def move_patient_records(svc, conn: Connection, survivor_id: str, merged_id: str, *, source: str,
                         actor: str | None = None) -> int:
    """Merge ``Patient/<merged_id>`` into ``Patient/<survivor_id>`` in the caller's transaction.

    Every resource whose reference index points at the merged Patient (but AuditEvent and
    Provenance, which record the past) gets a new version with
    each such reference (any element named ``reference``, in any nesting, absolute or relative,
    version-specific or not) re-pointed to the survivor; then the two Patients get their
    ``replaces``/``replaced-by`` links and the merged one ``active=false``. Returns the number of
    resources re-pointed (the two Patients themselves not counted).

    Repeating a merge that is already in place is harmless: it moves whatever still points at
    the merged Patient and adds no duplicate links. ``source`` says what asked for the merge
    (``hl7v2-A40``, ``fhir-$merge``, ``review`` …) and is kept with the merge record.

    Raises :class:`~hub.errors.NotFound`/:class:`~hub.errors.Gone` when a Patient is unknown or
    deleted, :class:`~hub.errors.InvalidRequest` for a merge into itself,
    :class:`~hub.errors.Conflict` when the merged Patient was already merged into another
    Patient or the survivor has itself been merged away.
    """
    if survivor_id == merged_id:
        raise InvalidRequest(f"Patient/{merged_id} cannot be merged into itself")
    store = svc.store
    survivor = _current_patient(store, conn, survivor_id, "survivor")
    merged = _current_patient(store, conn, merged_id, "merged")
    if (other := _linked(survivor, "replaced-by")) is not None:
        raise Conflict(f"the survivor Patient/{survivor_id} was itself merged into {other}")
    if (other := _linked(merged, "replaced-by")) not in (None, f"Patient/{survivor_id}"):
        raise Conflict(f"Patient/{merged_id} was already merged into {other}")

    merge_id = str(uuid.uuid4())
    moved = 0
    keys = _referring(conn, merged_id, exclude={("Patient", survivor_id), ("Patient", merged_id)})
    for chunk in _chunks(keys):
        versions, moves = [], []
        for rtype, rid in chunk:
            cur = store.read(conn, rtype, rid, for_update=True)
            if cur is None or cur.deleted:
                continue
            res = cur.resource()
            # a Patient's own links (golden record, replaces …) are identity statements, not
            # records of the merged patient: they are left as they are
            skip = {"link"} if rtype == "Patient" else set()
            paths = _repoint(res, merged_id, survivor_id, skip=skip)
            if not paths:
                continue
            versions.append(store.prepare_update(conn, rtype, rid, res, current=cur))
            moves.append({"merge_id": merge_id, "res_type": rtype, "res_id": rid,
                          "paths": orjson.dumps(paths).decode()})
        if versions:
            store.write(conn, versions)
            conn.execute(mpi_merge_move.insert(), moves)
            moved += len(versions)

    surv_res, merged_res = survivor.resource(), merged.resource()
    changed = []
    if _add_link(surv_res, merged_id, "replaces"):
        changed.append(store.prepare_update(conn, "Patient", survivor_id, surv_res, current=survivor))
    if _add_link(merged_res, survivor_id, "replaced-by") | _set_inactive(merged_res):
        changed.append(store.prepare_update(conn, "Patient", merged_id, merged_res, current=merged))
    conn.execute(mpi_merge.insert().values(merge_id=merge_id, survivor_id=survivor_id, merged_id=merged_id,
                                           source=source, actor=actor, ts=now_us()))
    if changed:
        store.write(conn, changed)
    return moved


def undo_merge(svc, conn: Connection, merged_id: str, *, source: str, actor: str | None = None) -> tuple[str, int]:
    """Unmerge: undo the latest merge of ``Patient/<merged_id>``, in the caller's transaction.

    The reference elements that merge re-pointed go back to the merged Patient (only those
    still pointing at the survivor: a later, deliberate change is kept), both Patients lose the
    ``replaces``/``replaced-by`` links of that merge, and the merged Patient is active again.
    The two Patients are recorded as different people (``mpi_nonmatch``): an unmerge is a
    person's decision, which automatic matching must not undo by linking them again.
    Returns ``(survivor_id, number of resources re-pointed back)``; 404 when no merge of that
    Patient is in force."""
    row = conn.execute(
        select(mpi_merge).where(mpi_merge.c.merged_id == merged_id, mpi_merge.c.undone.is_(None))
        .order_by(mpi_merge.c.ts.desc()).limit(1)).first()
    if row is None:
        raise NotFound(f"Patient/{merged_id} has no merge in force to undo")
    survivor_id = row.survivor_id
    store = svc.store
    survivor = _current_patient(store, conn, survivor_id, "survivor")
    merged = _current_patient(store, conn, merged_id, "merged")
    # every merge of this pair that is in force (a repeated A40 adds one without moving more)
    merge_ids = [r.merge_id for r in conn.execute(
        select(mpi_merge.c.merge_id).where(mpi_merge.c.merged_id == merged_id,
                                           mpi_merge.c.survivor_id == survivor_id,
                                           mpi_merge.c.undone.is_(None)))]
    moves = conn.execute(select(mpi_merge_move).where(mpi_merge_move.c.merge_id.in_(merge_ids))).all()
    back = 0
    for chunk in _chunks(moves):
        versions = []
        for m in chunk:
            cur = store.read(conn, m.res_type, m.res_id, for_update=True)
            if cur is None or cur.deleted:
                continue
            res = cur.resource()
            if _repoint_paths(res, [tuple(p) for p in orjson.loads(m.paths)], survivor_id, merged_id):
                versions.append(store.prepare_update(conn, m.res_type, m.res_id, res, current=cur))
        if versions:
            store.write(conn, versions)
            back += len(versions)
    surv_res, merged_res = survivor.resource(), merged.resource()
    changed = []
    if _drop_link(surv_res, merged_id, "replaces"):
        changed.append(store.prepare_update(conn, "Patient", survivor_id, surv_res, current=survivor))
    if _drop_link(merged_res, survivor_id, "replaced-by") | _set_active(merged_res):
        changed.append(store.prepare_update(conn, "Patient", merged_id, merged_res, current=merged))
    conn.execute(update(mpi_merge).where(mpi_merge.c.merge_id.in_(merge_ids)).values(undone=now_us()))
    record_nonmatch(conn, survivor_id, merged_id, actor=actor)
    if changed:
        store.write(conn, changed)
    return survivor_id, back


def referring_records(conn: Connection, pid: str, *, exclude: set[tuple[str, str]] = frozenset()) -> list[tuple[str, str]]:
    """(type, id) of the resources a merge of ``Patient/<pid>`` would re-point."""
    return _referring(conn, pid, exclude=set(exclude))


def merged_into(conn: Connection, patient_id: str) -> str | None:
    """The survivor a Patient is merged into (merge in force), or None."""
    row = conn.execute(
        select(mpi_merge.c.survivor_id).where(mpi_merge.c.merged_id == patient_id, mpi_merge.c.undone.is_(None))
        .order_by(mpi_merge.c.ts.desc()).limit(1)).first()
    return row.survivor_id if row else None


def record_nonmatch(conn: Connection, a: str, b: str, *, actor: str | None) -> None:
    """Record that Patients ``a`` and ``b`` are different people (never linked automatically)."""
    lo, hi = sorted((a, b))
    exists = conn.execute(select(mpi_nonmatch.c.patient_a).where(
        mpi_nonmatch.c.patient_a == lo, mpi_nonmatch.c.patient_b == hi)).first()
    if exists is None:
        conn.execute(mpi_nonmatch.insert().values(patient_a=lo, patient_b=hi, actor=actor, ts=now_us()))


# --------------------------------------------------------------------------- helpers

def _current_patient(store, conn: Connection, pid: str, role: str):
    cur = store.read(conn, "Patient", pid, for_update=True)
    if cur is None:
        raise NotFound(f"the {role} Patient/{pid} is not known")
    if cur.deleted:
        raise Gone(f"the {role} Patient/{pid} was deleted")
    return cur


def _referring(conn: Connection, pid: str, *, exclude: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Resources whose reference index points at ``Patient/<pid>`` (typed, or a bare id), except
    audit and provenance records, which keep saying what happened to whom at the time."""
    q = select(_REF.res_type, _REF.res_id).where(
        _REF.target_id == pid, or_(_REF.target_type == "Patient", _REF.target_type.is_(None)),
        _REF.res_type.not_in(_EVIDENCE_TYPES),
        # Patient.link (golden records, replaces …) states identity; it is not a record to move
        ~and_(_REF.res_type == "Patient", _REF.param == "link")).distinct()
    return sorted({(r.res_type, r.res_id) for r in conn.execute(q)} - exclude)


def _chunks(items: list) -> Iterator[list]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _points_at(ref: str, pid: str) -> str | None:
    """The text before ``Patient/<pid>`` when ``ref`` is a literal reference to that Patient
    (``Patient/x``, ``Patient/x/_history/2``, ``http://base/Patient/x``, bare ``x``), else None."""
    if ref == pid:
        return ""
    head, sep, tail = ref.partition("/_history/")
    if sep and not tail.isdigit():
        return None
    target = f"Patient/{pid}"
    if head == target:
        return ""
    if head.endswith("/" + target) and head.startswith(("http://", "https://")):
        return head[: -len(target)]
    return None


def _repoint(node, old: str, new: str, *, skip: set[str] = frozenset(), path: Path = ()) -> list[Path]:
    """Re-point, in place, every ``reference`` to Patient ``old`` to Patient ``new`` (dropping a
    version: the survivor's versions are not the merged Patient's). Returns the paths changed."""
    out: list[Path] = []
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            prefix = _points_at(ref, old)
            if prefix is not None and (prefix or ref != old or node.get("type") in (None, "Patient")):
                node["reference"] = f"{prefix}Patient/{new}"
                out.append(path + ("reference",))
        for k, v in node.items():
            if k not in skip and isinstance(v, (dict, list)):
                out.extend(_repoint(v, old, new, path=path + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_repoint(v, old, new, path=path + (i,)))
    return out


def _repoint_paths(res: dict, paths: list[Path], old: str, new: str) -> bool:
    """Re-point the references at ``paths`` that still point at Patient ``old``."""
    changed = False
    for p in paths:
        node = res
        try:
            for k in p[:-1]:
                node = node[k]
        except (KeyError, IndexError, TypeError):
            continue
        ref = node.get(p[-1]) if isinstance(node, dict) else None
        prefix = _points_at(ref, old) if isinstance(ref, str) else None
        if prefix is not None:
            node[p[-1]] = f"{prefix}Patient/{new}"
            changed = True
    return changed


def _linked(res_stored, link_type: str) -> str | None:
    for link in res_stored.resource().get("link") or []:
        if link.get("type") == link_type:
            return (link.get("other") or {}).get("reference")
    return None


def _add_link(res: dict, other_id: str, link_type: str) -> bool:
    links = res.setdefault("link", [])
    ref = f"Patient/{other_id}"
    if any(lk.get("type") == link_type and (lk.get("other") or {}).get("reference") == ref for lk in links):
        return False
    links.append({"other": {"reference": ref}, "type": link_type})
    return True


def _drop_link(res: dict, other_id: str, link_type: str) -> bool:
    links = res.get("link") or []
    ref = f"Patient/{other_id}"
    keep = [lk for lk in links
            if not (lk.get("type") == link_type and (lk.get("other") or {}).get("reference") == ref)]
    if len(keep) == len(links):
        return False
    if keep:
        res["link"] = keep
    else:
        res.pop("link", None)
    return True


def _set_inactive(res: dict) -> bool:
    if res.get("active") is False:
        return False
    res["active"] = False
    return True


def _set_active(res: dict) -> bool:
    if res.get("active") is True:
        return False
    res["active"] = True
    return True


__all__ = ["move_patient_records", "undo_merge", "merged_into", "referring_records", "record_nonmatch"]
