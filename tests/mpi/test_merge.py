"""Patient merge and unmerge through the FHIR store (hub.mpi.merge), checked over real HTTP,
on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from hub.errors import Conflict, InvalidRequest, NotFound
from hub.mpi.merge import merged_into, move_patient_records, undo_merge
from hub.storage.db import write_tx
from tests.conftest import unique


def _patient(fhir, **kw) -> str:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3.mrn", "value": unique()}],
            "name": [{"text": "测试"}], **kw}
    r = fhir.post("/Patient", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _post(fhir, body: dict) -> str:
    r = fhir.post(f"/{body['resourceType']}", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def _merge_links(patient: dict) -> list:
    return [lk for lk in patient.get("link", []) if lk["type"] in ("replaces", "replaced-by")]


def _merge(hub, survivor: str, merged: str) -> int:
    svc = hub.hub.fhir
    with write_tx(svc.engine) as conn:
        return move_patient_records(svc, conn, survivor, merged, source="test")


@pytest.fixture()
def records(fhir, hub):
    """A survivor, a Patient to merge into it and the merged Patient's records, referring to it
    relatively, absolutely, version-specifically and from nested elements."""
    a, b = _patient(fhir), _patient(fhir)
    obs = _post(fhir, {"resourceType": "Observation", "status": "final", "code": {"text": "Hb"},
                       "subject": {"reference": f"Patient/{b}"}})
    enc = _post(fhir, {"resourceType": "Encounter", "status": "finished",
                       "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                       "subject": {"reference": f"{hub.base}/Patient/{b}/_history/1"}})
    cond = _post(fhir, {"resourceType": "Condition", "subject": {"reference": f"Patient/{b}"},
                        "evidence": [{"detail": [{"reference": f"Patient/{b}"}]}]})
    other = _post(fhir, {"resourceType": "Observation", "status": "final", "code": {"text": "Hb"},
                         "subject": {"reference": f"Patient/{a}"}})
    return {"a": a, "b": b, "obs": obs, "enc": enc, "cond": cond, "other": other}


def test_merge_repoints_every_reference_as_new_versions_and_links_the_patients(fhir, hub, records):
    a, b = records["a"], records["b"]
    assert _merge(hub, a, b) == 3

    obs = fhir.get(f"/Observation/{records['obs']}").json()
    assert obs["subject"]["reference"] == f"Patient/{a}" and obs["meta"]["versionId"] == "2"
    enc = fhir.get(f"/Encounter/{records['enc']}").json()
    assert enc["subject"]["reference"] == f"{hub.base}/Patient/{a}"
    cond = fhir.get(f"/Condition/{records['cond']}").json()
    assert cond["subject"]["reference"] == f"Patient/{a}"
    assert cond["evidence"][0]["detail"][0]["reference"] == f"Patient/{a}"
    # history keeps what the record said before
    old = fhir.get(f"/Observation/{records['obs']}/_history/1").json()
    assert old["subject"]["reference"] == f"Patient/{b}"
    # the record that already referred to the survivor is untouched
    assert fhir.get(f"/Observation/{records['other']}").json()["meta"]["versionId"] == "1"

    # search indexes follow: the survivor's compartment holds everything, the merged one nothing
    found = fhir.get("/Observation", params={"subject": f"Patient/{a}"}).json()
    assert {records["obs"], records["other"]} <= _ids(found)
    assert _ids(fhir.get("/Observation", params={"subject": f"Patient/{b}"}).json()) == set()
    assert _ids(fhir.get("/Encounter", params={"patient": a}).json()) == {records["enc"]}

    surv = fhir.get(f"/Patient/{a}").json()
    gone = fhir.get(f"/Patient/{b}").json()
    assert {"other": {"reference": f"Patient/{b}"}, "type": "replaces"} in surv["link"]
    assert {"other": {"reference": f"Patient/{a}"}, "type": "replaced-by"} in gone["link"]
    assert gone["active"] is False
    with hub.hub.engine.connect() as conn:
        assert merged_into(conn, b) == a


def test_repeating_a_merge_moves_nothing_more_and_adds_no_duplicate_link(fhir, hub, records):
    a, b = records["a"], records["b"]
    assert _merge(hub, a, b) == 3
    late = _post(fhir, {"resourceType": "Observation", "status": "final", "code": {"text": "late"},
                        "subject": {"reference": f"Patient/{b}"}})
    assert _merge(hub, a, b) == 1  # a record that arrived for the old id after the merge
    assert fhir.get(f"/Observation/{late}").json()["subject"]["reference"] == f"Patient/{a}"
    links = fhir.get(f"/Patient/{a}").json()["link"]
    assert links.count({"other": {"reference": f"Patient/{b}"}, "type": "replaces"}) == 1


def test_unmerge_puts_back_exactly_what_the_merge_moved(fhir, hub, records):
    a, b = records["a"], records["b"]
    _merge(hub, a, b)
    svc = hub.hub.fhir
    with write_tx(svc.engine) as conn:
        assert undo_merge(svc, conn, b, source="test") == (a, 3)
    assert fhir.get(f"/Observation/{records['obs']}").json()["subject"]["reference"] == f"Patient/{b}"
    assert fhir.get(f"/Encounter/{records['enc']}").json()["subject"]["reference"] == f"{hub.base}/Patient/{b}"
    cond = fhir.get(f"/Condition/{records['cond']}").json()
    assert cond["evidence"][0]["detail"][0]["reference"] == f"Patient/{b}"
    assert fhir.get(f"/Observation/{records['other']}").json()["subject"]["reference"] == f"Patient/{a}"
    gone = fhir.get(f"/Patient/{b}").json()
    assert gone["active"] is True
    assert not _merge_links(gone) and not _merge_links(fhir.get(f"/Patient/{a}").json())
    with hub.hub.engine.connect() as conn:
        assert merged_into(conn, b) is None
    with write_tx(svc.engine) as conn, pytest.raises(NotFound):
        undo_merge(svc, conn, b, source="test")


def test_invalid_merges_are_refused_and_change_nothing(fhir, hub, records):
    a, b = records["a"], records["b"]
    c = _patient(fhir)
    with pytest.raises(InvalidRequest):
        _merge(hub, a, a)
    with pytest.raises(NotFound):
        _merge(hub, a, unique("nobody"))
    _merge(hub, a, b)
    with pytest.raises(Conflict):
        _merge(hub, c, b)  # already merged into a
    with pytest.raises(Conflict):
        _merge(hub, b, c)  # the survivor was merged away
    assert fhir.get(f"/Patient/{c}").json()["meta"]["versionId"] == "1"
