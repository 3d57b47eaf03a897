"""Small DICOM objects made with pydicom for the tests: CT, MR and CR with real pixel data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "CR": ComputedRadiographyImageStorage}


def instance(*, study_uid: str, series_uid: str, number: int = 1, modality: str = "CT", patient_id: str = "P1",
             name: str = "ZHANG^SAN", issuer: str | None = None, study_date: str = "20240315",
             study_time: str = "101500", accession: str = "", birth_date: str = "19700101", sex: str = "M",
             ts: str = ExplicitVRLittleEndian, size: int = 16, description: str = "CHEST",
             sop_uid: str | None = None, series_number: int = 1, charset: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = SOP_CLASS[modality]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, patient_id, birth_date, sex
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study_date, study_time, accession
    ds.StudyID, ds.StudyDescription, ds.ReferringPhysicianName = "1", description, "LI^SI"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, number
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
    arr = (np.arange(size * size, dtype=np.uint16).reshape(size, size) * (number + 1)) % 4096
    ds.PixelData = arr.astype(np.uint16).tobytes()
    if ts == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif ts == RLELossless:
        ds.compress(RLELossless)
    return ds


def series(n: int, **kw) -> list[Dataset]:
    return [instance(number=i + 1, **kw) for i in range(n)]


def write(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ds in datasets:
        p = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out
