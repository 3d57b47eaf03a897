"""Canonical URLs of the code systems, value sets and concept maps the hub uses.

FHIR and HL7 URLs are the published ones (FHIR R4 4.0.1, terminology.hl7.org). Code systems the
hub defines itself (Chinese national standards, regional catalogue, hospital-local codes) live
under one base, :data:`DEFAULT_HUB_BASE`, as design/CONVENTIONS.md asks ("define canonical URLs
under the hub's base, keep OIDs as identifiers"). A deployment that uses another base passes it to
:meth:`terminology.Terminology.load_default`, which rewrites the packaged resources; the helpers
below take the same ``base`` argument.
"""

from __future__ import annotations

#: Base of every canonical URL the hub mints. Packaged data is written with this base.
DEFAULT_HUB_BASE = "https://yilian.example.org/fhir"

# --- external systems -------------------------------------------------------------------------
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"

ADMINISTRATIVE_GENDER = "http://hl7.org/fhir/administrative-gender"
OBSERVATION_STATUS = "http://hl7.org/fhir/observation-status"
DIAGNOSTIC_REPORT_STATUS = "http://hl7.org/fhir/diagnostic-report-status"
REQUEST_STATUS = "http://hl7.org/fhir/request-status"
REQUEST_INTENT = "http://hl7.org/fhir/request-intent"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_MARITAL_STATUS = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
V3_NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
V3_OBSERVATION_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def v2_table(table: str) -> str:
    """Code system URL of HL7 v2 table ``table`` ("0001" or 1 → .../CodeSystem/v2-0001)."""
    return f"http://terminology.hl7.org/CodeSystem/v2-{int(table):04d}"


def v2_valueset(table: str) -> str:
    """Value set URL of HL7 v2 table ``table``."""
    return f"http://terminology.hl7.org/ValueSet/v2-{int(table):04d}"


# --- hub-defined systems ------------------------------------------------------------------------
#: slugs of the hub-defined Chinese national code systems (CodeSystem.id as well)
GBT_2261_1_SEX = "gbt-2261.1-sex"
GBT_2261_2_MARITAL = "gbt-2261.2-marital-status"
GBT_3304_ETHNICITY = "gbt-3304-ethnicity"
LAB_CATALOGUE = "lab-catalogue"


def code_system(slug: str, base: str = DEFAULT_HUB_BASE) -> str:
    """Canonical URL of a hub-defined code system: ``{base}/CodeSystem/{slug}``."""
    return f"{base.rstrip('/')}/CodeSystem/{slug}"


def value_set(slug: str, base: str = DEFAULT_HUB_BASE) -> str:
    """Canonical URL of a hub-defined value set: ``{base}/ValueSet/{slug}``."""
    return f"{base.rstrip('/')}/ValueSet/{slug}"


def concept_map(slug: str, base: str = DEFAULT_HUB_BASE) -> str:
    """Canonical URL of a hub-defined concept map: ``{base}/ConceptMap/{slug}``."""
    return f"{base.rstrip('/')}/ConceptMap/{slug}"


def local_code_system(org_code: str, kind: str = "lab", base: str = DEFAULT_HUB_BASE) -> str:
    """Default system of a hospital's local codes (``{base}/CodeSystem/local/{org}/{kind}``).

    Used when a local code arrives without a system (HL7 v2 CWE with a local coding-system name
    such as ``L`` or ``99zzz``); a hospital may publish its own URL instead (CSV ``local_system``).
    """
    return f"{base.rstrip('/')}/CodeSystem/local/{org_code}/{kind}"


def lab_local_concept_map(org_code: str, base: str = DEFAULT_HUB_BASE) -> str:
    """URL of the ConceptMap built from organization ``org_code``'s local lab code file."""
    return concept_map(f"lab-local-{org_code}", base)
