"""The hub as a regional PACS: DICOM services (PS3.4), DICOMweb (PS3.18) and ImagingStudy.

``store`` is the one ingest path (C-STORE and STOW-RS), ``index`` the metadata tables and the
PS3.4 C.2.2.2 matching both C-FIND and QIDO-RS use, ``scp`` the DIMSE services, ``web`` the
DICOMweb routes, ``imaging_study`` the FHIR side. See docs/dicom.md.
"""
