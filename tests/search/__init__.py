"""Tests for hub.fhir.search (registry, FHIRPath subset, index extraction)."""
