"""De-identified export of a study: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile, with the retain options of Table E.1-1 chosen in the settings.

The per-attribute actions (D, Z, X, U and their combinations) are those of the standard's
Table E.1-1 as the ``dicom-anonymizer`` package encodes them (its 2026c table). On top, within
one request (one :class:`Deidentifier`): every UID is remapped consistently (E.3.9; the same
original UID gets the same new UID in every instance of the export), each patient gets one
pseudonym, and the attributes PS3.15 E.1.1 asks for record what was done (Patient Identity
Removed, De-identification Method and its code sequence, CID 7050).
"""

from __future__ import annotations

import hashlib
from io import BytesIO

from dicomanonymizer import simpledicomanonymizer as lib
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from hub.errors import InvalidRequest

DCM = "DCM"
#: Table E.1-1 retain options → (CID 7050 code, meaning)
OPTIONS = {
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_longitudinal_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
}
_KEEP = {
    "retain_patient_characteristics": ("PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup",
                                       "SmokingStatus", "PregnancyStatus", "PatientSexNeutered"),
    "retain_device_identity": ("DeviceSerialNumber", "StationName", "DeviceUID", "DetectorID", "GantryID",
                               "PlateID", "CassetteID", "GeneratorID", "DeviceDescription"),
    "retain_institution_identity": ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
                                    "InstitutionCodeSequence", "InstitutionalDepartmentTypeCodeSequence"),
}
_RULES_VERSION = "dicomfields_2026c"


def _keep(dataset, tag) -> None:
    return None


class Deidentifier:
    """One export request: UIDs and pseudonyms consistent across its instances."""

    def __init__(self, retain: list[str] | tuple[str, ...] = (), *, pseudonym_prefix: str = "ANON"):
        unknown = [o for o in retain if o not in OPTIONS]
        if unknown:
            raise InvalidRequest(f"unknown de-identification options {unknown}; known: {', '.join(OPTIONS)}")
        self.retain = tuple(retain)
        self.prefix = pseudonym_prefix
        self.uids: dict[str, str] = {}
        self.patients: dict[str, str] = {}
        self.rules = self._rules()

    def _rules(self) -> dict:
        rules = lib.initialize_actions(_RULES_VERSION)
        extra: dict = {}
        for tag in rules:
            if len(tag) != 2:
                continue
            try:
                vr = dictionary_VR((tag[0] << 16) | tag[1])
            except KeyError:
                continue
            if vr == "UI":
                extra[tag] = _keep  # UIDs are remapped by this class, consistently (E.3.9)
            elif vr in ("DA", "DT", "TM") and "retain_longitudinal_full_dates" in self.retain:
                extra[tag] = _keep
        for option, keywords in _KEEP.items():
            if option in self.retain:
                for kw in keywords:
                    t = tag_for_keyword(kw)
                    if t is not None:
                        extra[(t >> 16, t & 0xFFFF)] = _keep
        rules.update(extra)
        return rules

    def new_uid(self, uid: str) -> str:
        if uid not in self.uids:
            self.uids[uid] = generate_uid()
        return self.uids[uid]

    def _remap_uids(self, ds: Dataset) -> None:
        def visit(dataset, elem):
            if elem.VR != "UI" or not elem.value:
                return
            values = elem.value if isinstance(elem.value, (list, tuple)) or type(elem.value).__name__ == "MultiValue" \
                else [elem.value]
            out = []
            for v in values:
                # well-known UIDs (SOP classes, transfer syntaxes, coding schemes) identify no one
                out.append(v if UID(str(v)).is_valid and UID(str(v)).name != str(v) else self.new_uid(str(v)))
            elem.value = out if len(out) > 1 else out[0]

        ds.walk(visit)
        if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    def pseudonym(self, patient_id: str) -> str:
        if patient_id not in self.patients:
            self.patients[patient_id] = f"{self.prefix}{len(self.patients) + 1:04d}"
        return self.patients[patient_id]

    def apply(self, raw: bytes) -> bytes:
        ds = dcmread(BytesIO(raw))
        original_pid = str(ds.get("PatientID", ""))
        if "retain_uids" not in self.retain:
            self._remap_uids(ds)
        lib.anonymize_dataset(ds, extra_anonymization_rules=self.rules,
                              delete_private_tags="retain_safe_private" not in self.retain,
                              base_rules_gen=lambda: lib.initialize_actions(_RULES_VERSION))
        pseudonym = self.pseudonym(original_pid)
        ds.PatientID = pseudonym
        ds.PatientName = pseudonym
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "PS3.15 E basic" + "".join(f" +{o}" for o in self.retain)
        codes = [("113100", "Basic Application Confidentiality Profile")] + [OPTIONS[o] for o in self.retain]
        seq = []
        for code, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, DCM, meaning
            seq.append(item)
        ds.DeidentificationMethodCodeSequence = seq
        if "retain_longitudinal_full_dates" not in self.retain:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()


def digest(values: list[str]) -> str:
    """A short fingerprint for the audit record (never the values themselves)."""
    return hashlib.sha256("|".join(sorted(values)).encode()).hexdigest()[:16]
