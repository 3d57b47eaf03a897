"""What the hub owns for DICOM: blob store, ingest, peers, the DIMSE server, ImagingStudy sync,
deletion and de-identified export. Built by :class:`hub.api.app.Hub`."""

from __future__ import annotations

import logging

from hub.dicom import index
from hub.dicom.audit import dicom_event
from hub.dicom.blobs import make_blob_store
from hub.dicom.imaging_study import ImagingStudySync
from hub.dicom.peers import PeerRegistry
from hub.dicom.store import DicomStore
from hub.errors import NotFound
from hub.security.access import Access
from hub.storage.db import write_tx

log = logging.getLogger("yilian.dicom")


class DicomService:
    def __init__(self, settings, engine, fhir, audit=None):
        self.settings = settings
        self.engine = engine
        self.fhir = fhir
        self.audit = audit
        self.blobs = make_blob_store(settings)
        self.peers = PeerRegistry(engine, settings.dicom_aes)
        # the public DICOMweb base, beside the public FHIR base (never from a request's Host header)
        self.web_base = web_base = fhir.base_url.rsplit("/fhir", 1)[0] + "/dicom-web"
        self.imaging = ImagingStudySync(engine, fhir, web_base=web_base, ae_title=settings.dicom_ae_title,
                                        host=settings.dicom_host, port=settings.dicom_port)
        self.store = DicomStore(engine, self.blobs, org_of=self.org_of, on_stored=self.imaging.notify)
        self.imaging.before_sync = self.store.fill_metadata
        self.server = None
        self.imaging.start()

    def org_of(self, issuer: str, source_ae: str) -> str:
        """The organization whose identifier systems qualify a study's PatientID and accession:
        IssuerOfPatientID mapped by the settings (or used as the code), else the sending AE's
        organization, else the configured default."""
        if issuer:
            return self.settings.dicom_issuer_orgs.get(issuer, issuer)
        peer = self.peers.get(source_ae) if source_ae else None
        if peer is not None and peer.org:
            return peer.org
        return self.settings.dicom_default_org

    def start_scp(self) -> None:
        from hub.dicom.scp import DicomServer  # pynetdicom only when the DIMSE services run

        self.server = DicomServer(self.settings, self.engine, self.store, self.peers, audit=self.audit,
                                  on_activity=self.imaging.busy)
        self.server.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.imaging.close()

    # ------------------------------------------------------------------ deletion (with audit)
    def delete(self, access: Access, *, study_uid: str, series_uid: str | None = None,
               sop_uid: str | None = None) -> int:
        """Delete a study, series or instance: index rows, then blobs no longer referenced; the
        ImagingStudy follows. Needs ``delete`` on ImagingStudy; one AuditEvent (DCM 110105)."""
        access.require("ImagingStudy", "delete")
        with write_tx(self.engine) as conn:
            n = len(index.instances(conn, level="IMAGE", keys={
                "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid or "", "SOPInstanceUID": sop_uid or ""}))
            if n == 0:
                raise NotFound("no such study, series or instance")
            keys = index.delete(conn, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
        for k in keys:
            self.blobs.delete(k)
        self.imaging.sync(study_uid)
        if self.audit is not None:
            what = "instance" if sop_uid else "series" if series_uid else "study"
            self.audit.record(dicom_event("deleted", who=access.principal.subject, address=access.address,
                                          observer=self.fhir.base_url, studies=[study_uid],
                                          detail=f"deleted {what}: {n} instance(s)"))
        return n
