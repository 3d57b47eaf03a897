"""FHIR R4 specification data used by the hub (see PROVENANCE.md)."""
