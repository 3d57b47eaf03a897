"""Yilian terminology: code systems, value sets, concept maps and UCUM units, in memory.

Public API::

    from terminology import Terminology, ucum, urls
    t = Terminology.load_default()
    t.lookup(system, code)                      # CodeSystem/$lookup
    t.validate_code(valueset_url, system, code)  # ValueSet/$validate-code
    t.translate(system, code)                   # ConceptMap/$translate
    t.expand(valueset_url)                      # ValueSet/$expand
    t.add(resource)                             # CodeSystem / ValueSet / ConceptMap received via FHIR
    t.add_lab_codes(csv_path, "H001")           # a hospital's local lab code file
    t.standardize(codeable_concept, "H001")     # add LOINC / catalogue codings beside local ones
    ucum.convert(Decimal("5.5"), "mmol/L", "umol/L")

Packaged data and its sources: ``terminology/packaged/PROVENANCE.md``. Usage: ``terminology/README.md``.
"""

from terminology import ucum, urls
from terminology.errors import (InvalidResource, NotSupported, TerminologyError, UnknownConceptMap,
                                UnknownValueSet)
from terminology.labcodes import UNIT_PRODUCT_PROPERTY, read_lab_code_csv
from terminology.model import Concept, Designation, LookupResult, Product, Property, Translation
from terminology.service import CodeSystemIndex, Terminology

__all__ = [
    "Terminology", "CodeSystemIndex", "Concept", "Designation", "LookupResult", "Product", "Property",
    "Translation", "TerminologyError", "InvalidResource", "NotSupported", "UnknownConceptMap",
    "UnknownValueSet", "UNIT_PRODUCT_PROPERTY", "read_lab_code_csv", "ucum", "urls",
]
