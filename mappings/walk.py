"""Running a message spec: walk the segments in order, each mapped one through its builder.

A message spec (``specs/messages/*.yaml``) names the events it covers, the builder of each
segment id, and trigger-dependent values (encounter/appointment status). Segments the spec does
not name are left alone (Z-segments are reachable by builders, e.g. ZDS for imaging orders).
"""

from __future__ import annotations

from typing import Callable

from adapters.hl7v2 import Segment

from . import build_documents, build_orders, build_patient
from .context import Context
from .errors import REQUIRED_FIELD_MISSING, MappingError
from .state import State

Builder = Callable[[Context, Segment, State], None]

BUILDERS: dict[str, Builder] = {
    "patient": build_patient.patient,
    "encounter": build_patient.encounter,
    "visit_extra": build_patient.visit_extra,
    "related_person": build_patient.related_person,
    "condition": build_patient.condition,
    "allergy": build_patient.allergy,
    "merge": build_patient.merge,
    "coverage": build_patient.coverage,
    "order_control": build_orders.order_control,
    "order_detail": build_orders.order_detail,
    "timing": build_orders.timing,
    "imaging": build_orders.imaging_procedure,
    "study_uid": build_orders.study_uid,
    "observation": build_orders.observation,
    "specimen": build_orders.specimen,
    "note": build_orders.note,
    "document": build_documents.document,
    "document_content": build_documents.document_content,
    "appointment": build_documents.appointment,
    "appointment_service": build_documents.appointment_service,
    "appointment_person": build_documents.appointment_person,
    "appointment_resource": build_documents.appointment_resource,
    "appointment_timing": build_documents.appointment_timing,
    "appointment_location": build_documents.appointment_location,
    "immunization": build_documents.immunization,
    "immunization_route": build_documents.immunization_route,
    "vaccination_order": build_documents.vaccination_order,
}


def run(ctx: Context, spec: dict, trigger: str) -> None:
    st = State(spec=spec, trigger=trigger)
    table = spec["segments"]
    builders = {name: BUILDERS[b] for name, b in table.items()}
    seen: set[str] = set()
    for seg in ctx.msg.segments:
        builder = builders.get(seg.name)
        if builder is not None:
            seen.add(seg.name)
            builder(ctx, seg, st)
    for name in spec.get("required", ()):
        if name not in seen:
            raise MappingError(REQUIRED_FIELD_MISSING, f"{name} segment is required in {spec['name']}", name)
    for finish in st.finishers:
        finish(ctx, st)
    build_orders.finish_orders(ctx, st)
