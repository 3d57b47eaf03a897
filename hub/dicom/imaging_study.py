"""Each stored study as a FHIR ``ImagingStudy`` (R4 imagingstudy.html), kept up to date.

The resource id is ``mappings.identity.imaging_study_id(StudyInstanceUID)``; identifiers are the
Study Instance UID (``urn:dicom:uid``, ``urn:oid:<uid>``) and the accession number in the
organization's accession system. ``subject`` is the Patient of PatientID (+ IssuerOfPatientID,
mapped to an organization) in that organization's MRN system, the same id the HL7 v2 mappings
derive; ``basedOn`` is the ``ServiceRequest`` carrying the accession number, whichever of the
two arrives first: a ServiceRequest written later is noticed by the FHIR store's ``after_write``
hook. Writes go through the FHIR service (validation, indexes, audit).

Studies are synchronized once the hub's DICOM side has been quiet for half a second: no instance
stored (a 300-image series makes one ImagingStudy version, not 300, and a burst is not slowed by
FHIR writes) and no C-FIND, C-GET or C-MOVE served (a viewer's queries right after a burst are
not slowed by the headers' decoding and the FHIR writes); at the latest 60 s after their first
new instance, as Orthanc's ``StableAge`` makes a study stable 60 s after its last instance.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, select

from hub.dicom.schema import dicom_instances as I, dicom_series as SE, dicom_studies as ST
from hub.dicom.schema import dicom_study_pending as PENDING
from hub.errors import HubError
from hub.fhir.service import FhirRequest
from hub.security.access import Access
from hub.security.scopes import parse_scopes
from hub.security.tokens import Principal
from hub.storage.db import write_tx
from mappings.identity import DICOM_UID, imaging_study_id, org_system, patient_id, resource_id

log = logging.getLogger("yilian.dicom")

DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
HUB_CONNECTION_TYPE = "urn:yilian:endpoint-connection-type"  # DIMSE has no code in R4's system


def endpoint_ids() -> dict[str, str]:
    return {"wado": resource_id("Endpoint", "urn:yilian:dicom", "dicom-wado-rs"),
            "dimse": resource_id("Endpoint", "urn:yilian:dicom", "dicom-dimse")}


def endpoints(web_base: str, ae_title: str, host: str, port: int) -> list[dict]:
    ids = endpoint_ids()
    payload = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                            "code": "DICOM"}], "text": "DICOM"}]
    return [
        {"resourceType": "Endpoint", "id": ids["wado"], "status": "active",
         "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs"}, "name": "Yilian DICOMweb",
         "payloadType": payload, "payloadMimeType": ["application/dicom"], "address": web_base},
        {"resourceType": "Endpoint", "id": ids["dimse"], "status": "active",
         "connectionType": {"system": HUB_CONNECTION_TYPE, "code": "dicom-dimse"},
         "name": f"Yilian DICOM Q/R {ae_title}", "payloadType": payload, "address": f"dicom://{ae_title}@{host}:{port}"},
    ]


def _date_time(d: str, t: str) -> str | None:
    if len(d) != 8 or not d.isdigit():
        return None
    out = f"{d[:4]}-{d[4:6]}-{d[6:8]}"
    t = t.split(".")[0]
    if len(t) >= 4 and t[:4].isdigit():
        ss = t[4:6] if len(t) >= 6 and t[4:6].isdigit() else "00"
        out += f"T{t[:2]}:{t[2:4]}:{ss}+08:00"  # DICOM times are local; the alliance is in UTC+8
    return out


def _human_name(pn: str) -> dict:
    parts = pn.split("=")[0].split("^")
    name: dict = {"text": pn.split("=")[-1].replace("^", " ").strip() if "=" in pn else pn.replace("^", " ").strip()}
    if parts and parts[0]:
        name["family"] = parts[0]
    given = [p for p in parts[1:3] if p]
    if given:
        name["given"] = given
    return name


_GENDER = {"M": "male", "F": "female", "O": "other"}


def patient_system_and_id(org: str, patient: str, study_uid: str) -> tuple[str, str, str]:
    system = org_system(org, "mrn")
    value = patient or f"unidentified-{study_uid}"  # ImagingStudy.subject is 1..1
    return system, value, patient_id(system, value)


_SYNC_SLICE = 20  # studies synchronized between two looks at whether the hub is still quiet


class ImagingStudySync:
    """Builds and writes ImagingStudy resources; a background thread batches notifications."""

    def __init__(self, engine, fhir, *, web_base: str, ae_title: str, host: str, port: int, delay: float = 0.5,
                 max_delay: float = 60.0):
        self.engine = engine
        self.fhir = fhir
        self.web_base = web_base.rstrip("/")
        self.ae_title, self.host, self.port = ae_title, host, port
        self.delay = delay
        self.access = Access(Principal(subject=f"dicom:{ae_title}", client_id="yilian-dicom",
                                       scopes=parse_scopes("system/*.cruds"), scope_text="system/*.cruds"))
        self._pending: dict[str, float] = {}  # study → last notification
        self._first: dict[str, float] = {}  # study → first notification not yet written
        self._last_any = 0.0
        self.max_delay = max_delay
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="imaging-study-sync", daemon=True)
        self._endpoints_written = False
        self.before_sync: Callable[[str], object] | None = None  # e.g. filling in instance headers
        fhir.store.after_write.append(self._after_write)

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(10)
        self.flush()

    def notify(self, study_uid: str) -> None:
        with self._cv:
            now = time.monotonic()
            known = study_uid in self._pending
            self._pending[study_uid] = now
            self._first.setdefault(study_uid, now)
            self._last_any = now
            if not known:  # the worker wakes by itself for studies it already knows of
                self._cv.notify()

    def busy(self) -> None:
        """DICOM work other than storing is going on (a query, a retrieval, an association
        ending): studies wait for the store to be quiet, as during a burst of instances. A
        lock-free store of a float: called at every C-FIND, C-GET and C-MOVE."""
        self._last_any = time.monotonic()

    def flush(self) -> None:
        with self._cv:
            uids = list(self._pending)
            self._pending.clear()
            self._first.clear()
        for uid in uids:
            self.sync(uid)

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    return
                now = time.monotonic()
                # wait until the hub's DICOM side is quiet (no instance stored and no query or
                # retrieval for `delay`), so that FHIR writes and header decoding do not compete
                # with a burst or with the associations of a viewer's queries for the database
                # and the CPU; a study waiting longer than `max_delay` is written anyway
                quiet = now - self._last_any >= self.delay
                due = [u for u, t in self._pending.items()
                       if (quiet and now - t >= self.delay) or now - self._first[u] >= self.max_delay]
                # a few at a time: work that starts meanwhile is noticed between two slices
                due = due[:_SYNC_SLICE]
                for u in due:
                    del self._pending[u]
                    del self._first[u]
                if not due:
                    self._cv.wait(self.delay / 2 if self._pending else 1.0)
                    continue
            for uid in due:
                # overdue while the hub is busy: the ImagingStudy only; the headers as DICOM JSON
                # are filled in by their first reader (WADO-RS metadata, QIDO-RS includefield,
                # an image-level C-FIND asking for more than the index holds)
                self.sync(uid, before=quiet)
            if not quiet:  # and a pause after each slice, so that it trickles beside the work
                with self._cv:
                    if not self._stop:
                        self._cv.wait(self.delay)

    # ------------------------------------------------------------------ writing
    def _ensure_endpoints(self) -> None:
        if self._endpoints_written:
            return
        for ep in endpoints(self.web_base, self.ae_title, self.host, self.port):
            self.fhir.handle(FhirRequest("PUT", f"Endpoint/{ep['id']}", body=ep), self.access)
        self._endpoints_written = True

    def sync(self, study_uid: str, *, before: bool = True) -> None:
        """Write the study's ImagingStudy (or delete it when the study is gone); ``before=False``
        skips :attr:`before_sync` (the instance headers, which their readers fill in on demand)."""
        try:
            # the mark is read before the study: an instance indexed after this read touches it
            # again, so the mark stays for the sync its notification brings (or the next start)
            with self.engine.connect() as conn:
                touched = conn.execute(select(PENDING.c.touched).where(PENDING.c.study_uid == study_uid)).scalar()
            if before and self.before_sync is not None:
                self.before_sync(study_uid)
            self._ensure_endpoints()
            with self.engine.connect() as conn:
                resource, patient = self.build(conn, study_uid)
            rid = imaging_study_id(study_uid)
            if resource is None:
                try:
                    self.fhir.handle(FhirRequest("DELETE", f"ImagingStudy/{rid}"), self.access)
                except HubError:
                    pass
            else:
                if patient is not None:
                    with self.engine.connect() as conn:
                        known = self.fhir.store.read(conn, "Patient", patient["id"]) is not None
                    if not known:  # a Patient from the HL7 feed, when there is one, is never overwritten
                        self.fhir.handle(FhirRequest("PUT", f"Patient/{patient['id']}", body=patient), self.access)
                self.fhir.handle(FhirRequest("PUT", f"ImagingStudy/{rid}", body=resource), self.access)
            if touched is not None:
                with write_tx(self.engine) as conn:
                    conn.execute(PENDING.delete().where(PENDING.c.study_uid == study_uid,
                                                        PENDING.c.touched == touched))
        except Exception:
            log.exception("could not write the ImagingStudy of a study")  # its mark stays for the next start

    def recover(self) -> int:
        """Queue the studies whose ImagingStudy a previous run did not write (it stopped between
        the C-STORE responses and the sync after the burst); :meth:`start` calls it."""
        try:
            with self.engine.connect() as conn:
                uids = [r[0] for r in conn.execute(select(PENDING.c.study_uid))]
        except Exception:
            log.exception("could not read the studies left pending")
            return 0
        for uid in uids:
            self.notify(uid)
        if uids:
            log.info("%d studies left pending by a previous run: their ImagingStudy is written again", len(uids))
        return len(uids)

    def build(self, conn: Connection, study_uid: str) -> tuple[dict | None, dict | None]:
        st = conn.execute(select(ST).where(ST.c.study_uid == study_uid)).first()
        if st is None:
            return None, None
        series = conn.execute(select(SE).where(SE.c.study_uid == study_uid)
                              .order_by(SE.c.series_number, SE.c.series_uid)).all()
        insts = conn.execute(select(I.c.series_uid, I.c.sop_uid, I.c.sop_class, I.c.instance_number)
                             .where(I.c.study_uid == study_uid)
                             .order_by(I.c.series_uid, I.c.instance_number, I.c.sop_uid)).all()
        by_series: dict[str, list] = {}
        for r in insts:
            by_series.setdefault(r.series_uid, []).append(r)
        org = st.org or "hub"
        system, value, pid = patient_system_and_id(org, st.patient_id, study_uid)
        ids = endpoint_ids()
        res: dict = {
            "resourceType": "ImagingStudy", "id": imaging_study_id(study_uid),
            "identifier": [{"use": "official", "system": DICOM_UID, "value": f"urn:oid:{study_uid}"}],
            "status": "available",
            "subject": {"reference": f"Patient/{pid}", "identifier": {"system": system, "value": value}},
            "endpoint": [{"reference": f"Endpoint/{ids['wado']}"}, {"reference": f"Endpoint/{ids['dimse']}"}],
            "numberOfSeries": len(series), "numberOfInstances": len(insts),
        }
        if st.accession:
            acc_system = org_system(org, "accession")
            res["identifier"].append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                                      "system": acc_system, "value": st.accession})
            found = self.fhir._match_ids(conn, "ServiceRequest", f"identifier={acc_system}|{st.accession}", limit=5)
            if found:
                res["basedOn"] = [{"reference": f"ServiceRequest/{sr}"} for sr in sorted(found)]
        mods = sorted({s.modality for s in series if s.modality})
        if mods:
            res["modality"] = [{"system": DCM, "code": m} for m in mods]
        started = _date_time(st.study_date, st.study_time)
        if started:
            res["started"] = started
        if st.description:
            res["description"] = st.description
        res["series"] = []
        for s in series:
            item: dict = {"uid": s.series_uid, "modality": {"system": DCM, "code": s.modality or "OT"},
                          "numberOfInstances": len(by_series.get(s.series_uid, [])), "endpoint": res["endpoint"][:1]}
            if s.series_number is not None:
                item["number"] = s.series_number
            if s.description:
                item["description"] = s.description
            item["instance"] = [{"uid": i.sop_uid, "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i.sop_class}"},
                                 **({"number": i.instance_number} if i.instance_number is not None else {})}
                                for i in by_series.get(s.series_uid, [])]
            res["series"].append(item)
        patient = {"resourceType": "Patient", "id": pid, "identifier": [
            {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": system, "value": value}]}
        if st.patient_name:
            patient["name"] = [_human_name(st.patient_name)]
        if st.sex in _GENDER:
            patient["gender"] = _GENDER[st.sex]
        if len(st.birth_date) == 8 and st.birth_date.isdigit():
            patient["birthDate"] = f"{st.birth_date[:4]}-{st.birth_date[4:6]}-{st.birth_date[6:8]}"
        return res, patient

    # ------------------------------------------------------------------ ServiceRequest arriving later
    def _after_write(self, conn: Connection, versions: Sequence) -> None:
        accessions = []
        for v in versions:
            if v.res_type != "ServiceRequest" or v.resource is None:
                continue
            for ident in v.resource.get("identifier") or []:
                system, val = ident.get("system") or "", ident.get("value")
                if val and system.endswith("/accession"):
                    accessions.append((system, val))
        if not accessions:
            return
        rows = conn.execute(select(ST.c.study_uid, ST.c.org, ST.c.accession)
                            .where(ST.c.accession.in_([a for _, a in accessions]))).all()
        wanted = set(accessions)
        for r in rows:
            if (org_system(r.org or "hub", "accession"), r.accession) not in wanted:
                continue
            resource, _ = self.build(conn, r.study_uid)
            if resource is None:
                continue
            cur = self.fhir.store.read(conn, "ImagingStudy", resource["id"])
            if cur is None or cur.deleted:
                continue  # not written yet: the pending sync will link it
            old = cur.resource()
            if old.get("basedOn") == resource.get("basedOn"):
                continue
            old["basedOn"] = resource.get("basedOn", [])
            self.fhir.store.write(conn, [self.fhir.store.prepare_update(conn, "ImagingStudy", resource["id"], old)])
