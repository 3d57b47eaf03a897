"""Migration 0004_fhir_write on a populated database, on both engines: the store as it was (with
ix_sp_reference_target and ix_sp_string_exact) gets the new index layout, and answers the
searches those indexes served exactly as before."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from hub.storage.migrate import alembic_config
from tests.conftest import RunningHub, make_settings, unique
from tests.storage import search_answers


def _populate(fhir) -> dict:
    tag = unique("m4")
    meta = {"tag": [{"system": "urn:yilian:test", "code": tag}]}
    family = "Zhuge" + tag
    pat = fhir.post("/Patient", json={"resourceType": "Patient", "meta": meta,
                                      "name": [{"family": family, "given": ["Liang"]}]}).json()
    other = fhir.post("/Patient", json={"resourceType": "Patient", "meta": meta,
                                        "name": [{"family": family.lower(), "given": ["Jin"]}]}).json()
    subject = {"reference": f"Patient/{pat['id']}"}
    for code in ("2345-7", "718-7"):
        assert fhir.post("/Observation", json={
            "resourceType": "Observation", "status": "final", "meta": meta, "subject": subject,
            "performer": [{"identifier": {"system": "urn:staff", "value": tag}}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}).status_code == 201
    assert fhir.post("/Coverage", json={"resourceType": "Coverage", "status": "active", "meta": meta,
                                        "beneficiary": subject, "payor": [subject]}).status_code == 201
    assert fhir.post("/QuestionnaireResponse", json={
        "resourceType": "QuestionnaireResponse", "status": "completed", "meta": meta, "subject": subject,
        "questionnaire": f"http://example.org/Questionnaire/{tag}"}).status_code == 201
    return {"tag": tag, "family": family, "pid": pat["id"], "other": other["id"]}


def _searches(w: dict) -> list[tuple[str, dict]]:
    tag, pid = w["tag"], w["pid"]
    return [
        ("/Patient", {"family:exact": w["family"]}),
        ("/Patient", {"family:exact": w["family"].lower()}),
        ("/Patient", {"family": w["family"]}),
        ("/Observation", {"subject": pid}),
        ("/Observation", {"subject": f"Patient/{pid}", "code": "718-7"}),
        ("/Observation", {"performer:identifier": f"urn:staff|{tag}"}),
        ("/Observation", {"performer:identifier": tag}),
        ("/QuestionnaireResponse", {"questionnaire": f"http://example.org/Questionnaire/{tag}"}),
        ("/Patient", {"_id": pid, "_revinclude": "Coverage:patient"}),
        ("/Patient", {"_has:Observation:patient:code": "718-7", "_tag": tag}),
        (f"/Patient/{pid}/Observation", {}),
        (f"/Patient/{pid}/$everything", {}),
    ]


def _answers(fhir, w) -> list[list[tuple[str, str, str]]]:
    return search_answers(fhir, _searches(w), ordered=False)


def _indexes(engine, table: str) -> dict[str, list[str]]:
    return {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes(table)}


def test_migration_0004_converts_a_populated_store(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path / "data")
    with RunningHub(settings) as h:
        with h.client() as fhir:
            world = _populate(fhir)
            before = _answers(fhir, world)
    # every search finds what was written (the exact one only the exactly spelt patient)
    assert all(before), before
    assert [k[1] for k in before[0]] == [world["pid"]] and [k[1] for k in before[1]] == [world["other"]]

    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0003_fhir_index")
        ref, string = _indexes(engine, "sp_reference"), _indexes(engine, "sp_string")
        assert ref["ix_sp_reference_target"] == ["target_type", "target_id", "param"]
        assert ref["ix_sp_reference_value"] == ["param", "target_id", "target_type", "res_type"]
        assert "ix_sp_reference_url" not in ref and "ix_sp_string_exact" in string

        with RunningHub(make_settings(db_url, tmp_path / "data")) as h:  # migrates at start
            ref, string = _indexes(engine, "sp_reference"), _indexes(engine, "sp_string")
            assert "ix_sp_reference_target" not in ref and "ix_sp_string_exact" not in string
            assert ref["ix_sp_reference_value"] == ["target_id", "param", "target_type", "res_type"]
            assert ref["ix_sp_reference_url"] == ["param", "url"]
            assert ref["ix_sp_reference_identifier"] == ["param", "id_value"]
            with h.client() as fhir:
                assert _answers(fhir, world) == before
    finally:
        engine.dispose()
