"""Packaged terminology resources (FHIR JSON bundles); see PROVENANCE.md."""
