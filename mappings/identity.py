"""Who a patient, an organization or a result is: identifier systems and deterministic ids.

Every part of the hub (HL7 mappings, DICOM indexing, the master patient index, recognition)
derives identifier systems and resource ids here, so that the same fact arriving by two paths
lands on one resource (design/CONVENTIONS.md, ARCHITECTURE.md principle 3).

Identifier systems of things an organization numbers itself (MRN, visit, order, accession,
document numbers) are qualified by the organization's alliance code:
``{base}/sid/{org}/{kind}``; national identifiers keep their published systems.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from terminology.urls import DEFAULT_HUB_BASE

RESIDENT_ID = "urn:oid:2.16.156.10011.1.3"  # 居民身份证号 (GB 11643)
HEALTH_RECORD = "urn:oid:2.16.156.10011.1.2"  # 健康档案号
INSURANCE_CARD = "urn:oid:2.16.156.10011.1.15"  # 医保卡号
HEALTH_CARD = "urn:oid:2.16.156.10011.1.19"  # 电子健康卡
PASSPORT_CHN = "http://hl7.org/fhir/sid/passport-CHN"
DICOM_UID = "urn:dicom:uid"  # ImagingStudy.identifier for the Study Instance UID ("urn:oid:<uid>")

#: kinds of organization-qualified identifiers
KINDS = ("mrn", "visit", "placer", "filler", "accession", "document", "specimen", "appointment",
         "immunization", "practitioner", "location")

_SAFE = re.compile(r"[^A-Za-z0-9\-.]")


def organization_system(base: str = DEFAULT_HUB_BASE) -> str:
    """System of ``Organization.identifier`` holding the alliance code of a member."""
    return f"{base.rstrip('/')}/sid/organization"


def org_system(org_code: str, kind: str, base: str = DEFAULT_HUB_BASE) -> str:
    """System of the ``kind`` numbers that organization ``org_code`` assigns (``mrn``, ``visit``,
    ``placer``, ``filler``, ``accession``, ``document`` …)."""
    return f"{base.rstrip('/')}/sid/{org_code}/{kind}"


def resource_id(resource_type: str, system: str, value: str) -> str:
    """A deterministic FHIR id (``[A-Za-z0-9\\-.]{1,64}``) for the resource of ``resource_type``
    identified by (``system``, ``value``). Different types never share an id by accident."""
    digest = hashlib.sha256(f"{resource_type}|{system}|{value}".encode()).hexdigest()
    return digest[:40]


@lru_cache(maxsize=1024)  # every message names its sender's Organization, often twice
def organization_id(org_code: str, base: str = DEFAULT_HUB_BASE) -> str:
    return resource_id("Organization", organization_system(base), org_code)


def patient_id(system: str, value: str) -> str:
    """The source Patient resource of one identifier (an MRN in one organization's system)."""
    return resource_id("Patient", system, value)


def imaging_study_id(study_uid: str) -> str:
    return resource_id("ImagingStudy", DICOM_UID, f"urn:oid:{study_uid}")
