"""DICOM adapter: protocol-level pieces shared by the hub's DIMSE services and the front-end
processor (no storage, no FHIR): :mod:`adapters.dicom.reactor`, pynetdicom's association loops
made event-driven."""
