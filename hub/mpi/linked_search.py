"""``:linked`` — a search over every record of the person a Patient reference belongs to.

``Observation?patient:linked=Patient/123&code=…`` is answered as
``Observation?patient=Patient/123,Patient/456,…&code=…`` where 456 … are the source Patients the
master patient index links to the same person (at any member of the alliance). The qualifier
follows the MDM idea of expanding a patient reference to its linked records (HAPI FHIR's
``:mdm`` modifier does the same); it is this hub's extension, announced in the
CapabilityStatement documentation (docs/mpi.md).

Misuse answers an OperationOutcome (400): ``:linked`` on a parameter that is not a reference to
Patient, a value that is not a Patient reference, or combined with a chain.
"""

from __future__ import annotations

from hub.errors import InvalidRequest

MODIFIER = "linked"


class LinkedSearch:
    def __init__(self, svc, mpi):
        self.svc = svc
        self.mpi = mpi

    def __call__(self, rtype: str | None, query: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if not any(k.partition(".")[0].endswith(":" + MODIFIER) for k, _ in query):
            return query
        out = []
        with self.svc.engine.connect() as conn:
            for key, value in query:
                name, dot, chain = key.partition(".")
                base, _, modifier = name.partition(":")
                if modifier != MODIFIER:
                    out.append((key, value))
                    continue
                if dot:
                    raise InvalidRequest(f"{key}: the :linked modifier cannot be combined with a chain")
                if rtype is None:
                    raise InvalidRequest(":linked needs a resource type (Observation?patient:linked=…)")
                sp = self.svc.registry.get(rtype, base)
                if sp is None or sp.type != "reference" or (sp.targets and "Patient" not in sp.targets):
                    raise InvalidRequest(f"{base}:linked — :linked applies to reference parameters that can "
                                         f"point at a Patient; {rtype}.{base} is not one")
                ids: list[str] = []
                for v in value.split(","):
                    pid = _patient_id(v.strip())
                    if pid is None:
                        raise InvalidRequest(f"{base}:linked={v!r}: the value must be a Patient reference "
                                             "(Patient/123 or 123)")
                    ids.extend(self.mpi.linked_patients(conn, pid))
                out.append((base, ",".join(f"Patient/{i}" for i in dict.fromkeys(ids))))
        return out


def _patient_id(value: str) -> str | None:
    if value.startswith("http://") or value.startswith("https://"):
        value = value.split("/fhir/", 1)[-1] if "/fhir/" in value else value
    if value.startswith("Patient/"):
        value = value[len("Patient/"):]
    if "/" in value or not value or len(value) > 64:
        return None
    if not all(c.isalnum() or c in "-." for c in value):
        return None
    return value
