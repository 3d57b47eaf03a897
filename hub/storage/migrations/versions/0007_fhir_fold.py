"""FHIR search index: parameters derived from others store no rows

A reference parameter whose every branch is ``X.where(resolve() is T)`` of a stored parameter's
branches X (Observation ``patient`` = ``subject.where(resolve() is Patient)``) is read from that
parameter's rows of target type T, and a parameter whose branches are the union of other
parameters' (Observation ``combo-code`` = ``code | component-code``, Patient ``phonetic`` =
``name``) from theirs (``SearchParam.derived_from``, hub.fhir.search.registry.covering_params).
Their rows are deleted: the rows of the type-filtered ones (which 0003_fhir_index kept whole),
and what 0003 left of the unions (their rows the others lack: none, their branches being all
the others').

Revision ID: 0007_fhir_fold
Revises: 0006_fhir_res_pk
"""
from alembic import op
import sqlalchemy as sa

# after the resource key: the rows its downgrade restores carry their resource's res_pk
revision = "0007_fhir_fold"
down_revision = "0006_fhir_res_pk"
branch_labels = None
depends_on = None


#: (resource type, parameter, its sources: (parameter, target type)), all in sp_reference, as the
#: R4 registry gives them when this revision was made
TYPE_FILTERED = (
    ("Account", "patient", (("subject", "Patient"),)),
    ("Appointment", "location", (("actor", "Location"),)),
    ("Appointment", "patient", (("actor", "Patient"),)),
    ("Appointment", "practitioner", (("actor", "Practitioner"),)),
    ("AppointmentResponse", "location", (("actor", "Location"),)),
    ("AppointmentResponse", "patient", (("actor", "Patient"),)),
    ("AppointmentResponse", "practitioner", (("actor", "Practitioner"),)),
    ("AuditEvent", "patient", (("agent", "Patient"), ("entity", "Patient"))),
    ("Basic", "patient", (("subject", "Patient"),)),
    ("CarePlan", "patient", (("subject", "Patient"),)),
    ("CareTeam", "patient", (("subject", "Patient"),)),
    ("ChargeItem", "patient", (("subject", "Patient"),)),
    ("ClinicalImpression", "patient", (("subject", "Patient"),)),
    ("Communication", "patient", (("subject", "Patient"),)),
    ("CommunicationRequest", "patient", (("subject", "Patient"),)),
    ("Composition", "patient", (("subject", "Patient"),)),
    ("Condition", "patient", (("subject", "Patient"),)),
    ("Contract", "patient", (("subject", "Patient"),)),
    ("DeviceRequest", "patient", (("subject", "Patient"),)),
    ("DiagnosticReport", "patient", (("subject", "Patient"),)),
    ("DocumentManifest", "patient", (("subject", "Patient"),)),
    ("DocumentReference", "patient", (("subject", "Patient"),)),
    ("Encounter", "patient", (("subject", "Patient"),)),
    ("Encounter", "practitioner", (("participant", "Practitioner"),)),
    ("Flag", "patient", (("subject", "Patient"),)),
    ("Goal", "patient", (("subject", "Patient"),)),
    ("GuidanceResponse", "patient", (("subject", "Patient"),)),
    ("ImagingStudy", "patient", (("subject", "Patient"),)),
    ("Invoice", "patient", (("subject", "Patient"),)),
    ("List", "patient", (("subject", "Patient"),)),
    ("MeasureReport", "patient", (("subject", "Patient"),)),
    ("Media", "patient", (("subject", "Patient"),)),
    ("MedicationAdministration", "patient", (("subject", "Patient"),)),
    ("MedicationDispense", "patient", (("subject", "Patient"),)),
    ("MedicationRequest", "patient", (("subject", "Patient"),)),
    ("MedicationStatement", "patient", (("subject", "Patient"),)),
    ("Observation", "patient", (("subject", "Patient"),)),
    ("Person", "patient", (("link", "Patient"),)),
    ("Person", "practitioner", (("link", "Practitioner"),)),
    ("Person", "relatedperson", (("link", "RelatedPerson"),)),
    ("Procedure", "patient", (("subject", "Patient"),)),
    ("Provenance", "patient", (("target", "Patient"),)),
    ("QuestionnaireResponse", "patient", (("subject", "Patient"),)),
    ("RequestGroup", "patient", (("subject", "Patient"),)),
    ("RiskAssessment", "patient", (("subject", "Patient"),)),
    ("ServiceRequest", "patient", (("subject", "Patient"),)),
    ("Specimen", "patient", (("subject", "Patient"),)),
    ("Task", "patient", (("subject", "Patient"),)),
)

#: (table, resource type, parameter) of the unions of other parameters, which 0003_fhir_index
#: left with the rows the others lack
UNIONS = (
    ("sp_token", "CapabilityStatement", "version"),
    ("sp_uri", "CodeSystem", "url"),
    ("sp_reference", "Coverage", "patient"),
    ("sp_reference", "EnrollmentRequest", "subject"),
    ("sp_reference", "Linkage", "source"),
    ("sp_token", "Observation", "combo-code"),
    ("sp_composite", "Observation", "combo-code-value-concept"),
    ("sp_composite", "Observation", "combo-code-value-quantity"),
    ("sp_token", "Observation", "combo-data-absent-reason"),
    ("sp_token", "Observation", "combo-value-concept"),
    ("sp_quantity", "Observation", "combo-value-quantity"),
    ("sp_string", "Patient", "phonetic"),
    ("sp_string", "Person", "phonetic"),
    ("sp_string", "Practitioner", "phonetic"),
    ("sp_string", "RelatedPerson", "phonetic"),
    ("sp_reference", "ResearchSubject", "patient"),
)

_REFERENCE_COLUMNS = "target_type, target_id, url, id_system, id_value"


def upgrade() -> None:
    bind = op.get_bind()
    deleted = [("sp_reference", t, p) for t, p, _ in TYPE_FILTERED] + list(UNIONS)
    for table in sorted({table for table, _, _ in deleted}):
        for res_type, params in _by_type([(t, p) for tb, t, p in deleted if tb == table]).items():
            bind.execute(sa.text(f"DELETE FROM {table} WHERE res_type = :t AND param IN :params")
                         .bindparams(sa.bindparam("params", expanding=True)), {"t": res_type, "params": params})


def downgrade() -> None:
    """The type-filtered parameters hold their rows again (the unions' rest was empty)."""
    bind = op.get_bind()
    for res_type, param, sources in TYPE_FILTERED:
        which = " OR ".join(f"(param = :s{i} AND target_type = :t{i})" for i in range(len(sources)))
        values = {f"s{i}": s for i, (s, _) in enumerate(sources)} | {f"t{i}": t for i, (_, t) in enumerate(sources)}
        bind.execute(sa.text(
            f"INSERT INTO sp_reference (res_type, res_id, res_pk, param, {_REFERENCE_COLUMNS}) "
            f"SELECT DISTINCT res_type, res_id, res_pk, :p, {_REFERENCE_COLUMNS} FROM sp_reference "
            f"WHERE res_type = :t AND ({which})"), {"t": res_type, "p": param, **values})


def _by_type(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for res_type, param in pairs:
        out.setdefault(res_type, []).append(param)
    return out
