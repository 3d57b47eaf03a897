"""AuditEvents for DICOM activity (DICOM PS3.15 Annex A.5 event IDs, in FHIR AuditEvent form as
IHE BALP maps them): instances transferred, queries, deletions, exports, refused objects."""

from __future__ import annotations

from hub.audit import outcome_code
from hub.fhir.model import instant, now_us

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENTS = {
    "transferred": ("110104", "DICOM Instances Transferred", "R"),
    "query": ("110112", "Query", "E"),
    "deleted": ("110105", "DICOM Study Deleted", "D"),
    "export": ("110106", "Export", "R"),
    "import": ("110107", "Import", "C"),
}


def dicom_event(kind: str, *, who: str, address: str | None, observer: str, studies: list[str],
                patients: list[str] = (), status: int = 200, detail: str | None = None,
                destination: str | None = None) -> dict:
    code, display, action = EVENTS[kind]
    agents = [{"who": {"identifier": {"system": "urn:yilian:principal", "value": who}}, "requestor": True,
               **({"network": {"address": address, "type": "2"}} if address else {})}]
    if destination:
        agents.append({"who": {"identifier": {"system": "urn:dicom:ae", "value": destination}},
                       "requestor": False,
                       "type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]}})
    entities = [{"what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}},
                 "type": {"system": DCM, "code": "110180", "display": "Study Instance UID"}}
                for uid in dict.fromkeys(studies)]
    entities += [{"what": {"reference": f"Patient/{pid}"},
                  "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}
                 for pid in dict.fromkeys(patients)]
    if detail:
        entities.append({"description": detail})
    ev = {"resourceType": "AuditEvent", "type": {"system": DCM, "code": code, "display": display},
          "action": action, "recorded": instant(now_us()), "outcome": outcome_code(status),
          "agent": agents, "source": {"observer": {"display": observer}}}
    if entities:
        ev["entity"] = entities
    return ev
