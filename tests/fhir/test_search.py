"""FHIR search over real HTTP on both engines (search.html): every parameter type, modifiers,
prefixes, chains, _has, _include/_revinclude, sorting, paging, _summary/_elements, errors."""

from __future__ import annotations

import pytest

from tests.conftest import unique

LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def data(fhir):
    """A small world: two patients, an organization, observations, a report."""
    tag = unique("t")
    org = fhir.post("/Organization", json={"resourceType": "Organization", "name": "Dongcheng Community Centre",
                                          "identifier": [{"system": "urn:yilian:org", "value": tag}]}).json()
    p1 = fhir.post("/Patient", json={
        "resourceType": "Patient", "meta": {"tag": [{"system": "urn:yilian:test", "code": tag}],
                                            "profile": ["http://example.org/StructureDefinition/cn-patient"]},
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X",
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}]}},
                       {"system": "urn:mrn:" + tag, "value": "A1"}],
        "name": [{"family": "Müller" + tag, "given": ["Jürgen"]}, {"text": "张三"}],
        "gender": "male", "birthDate": "1949-12-31", "telecom": [{"system": "phone", "value": "13800138000"}],
        "address": [{"city": "Beijing", "district": "Dongcheng"}],
        "managingOrganization": {"reference": f"Organization/{org['id']}"}}).json()
    p2 = fhir.post("/Patient", json={
        "resourceType": "Patient", "meta": {"tag": [{"system": "urn:yilian:test", "code": tag}]},
        "identifier": [{"system": "urn:mrn:" + tag, "value": "A2"}],
        "name": [{"family": "Li" + tag, "given": ["Na"]}], "gender": "female", "birthDate": "1990-06"}).json()
    obs = []
    for pid, code, value, unit, when, status in [
        (p1["id"], "2345-7", 5.4, "mmol/L", "2024-01-10T08:00:00+08:00", "final"),
        (p1["id"], "2345-7", 7.9, "mmol/L", "2024-03-02T08:00:00+08:00", "final"),
        (p1["id"], "4548-4", 6.1, "%", "2024-03-02T08:00:00+08:00", "preliminary"),
        (p2["id"], "2345-7", 100, "mg/dL", "2023-11-20", "final"),
    ]:
        obs.append(fhir.post("/Observation", json={
            "resourceType": "Observation", "status": status,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": "Glucose" if code == "2345-7" else "HbA1c"}],
                     "text": "血糖" if code == "2345-7" else "糖化血红蛋白"},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            "meta": {"tag": [{"system": "urn:yilian:test", "code": tag}]}}).json())
    report = fhir.post("/DiagnosticReport", json={
        "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "Chemistry panel"},
        "subject": {"reference": f"Patient/{p1['id']}"}, "result": [{"reference": f"Observation/{o['id']}"} for o in obs[:3]],
        "meta": {"tag": [{"system": "urn:yilian:test", "code": tag}]}}).json()
    return {"tag": tag, "org": org, "p1": p1, "p2": p2, "obs": obs, "report": report}


def ids(bundle: dict, mode: str = "match") -> set[str]:
    """Ids of the entries in ``mode``, leaving out the master patient index's golden records
    (``Patient/mpi-…``: one per person, carrying the same demographics as its sources)."""
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode
            and not (e["resource"]["resourceType"] == "Patient" and e["resource"]["id"].startswith("mpi-"))}


def search(fhir, path: str, **params) -> dict:
    r = fhir.get(path, params=params)
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "searchset"
    return b


def test_string_default_exact_contains_and_accents(fhir, data):
    p1, tag = data["p1"], data["tag"]
    assert ids(search(fhir, "/Patient", family="muller" + tag)) == {p1["id"]}  # accents and case folded
    assert ids(search(fhir, "/Patient", family="MÜL")) >= {p1["id"]}  # starts-with
    assert ids(search(fhir, "/Patient", **{"family:exact": "Müller" + tag})) == {p1["id"]}
    assert ids(search(fhir, "/Patient", **{"family:exact": "müller" + tag})) == set()
    assert ids(search(fhir, "/Patient", **{"name:contains": "ller" + tag[:4]})) >= {p1["id"]}
    assert ids(search(fhir, "/Patient", name="张三")) >= {p1["id"]}
    assert ids(search(fhir, "/Patient", address="dongcheng", _tag=f"urn:yilian:test|{tag}")) == {p1["id"]}


def test_token_forms_and_modifiers(fhir, data):
    p1, p2, tag = data["p1"], data["p2"], data["tag"]
    sysval = "urn:oid:2.16.156.10011.1.3|11010519491231002X"
    assert ids(search(fhir, "/Patient", identifier=sysval)) == {p1["id"]}
    assert ids(search(fhir, "/Patient", identifier=f"urn:mrn:{tag}|")) == {p1["id"], p2["id"]}
    assert ids(search(fhir, "/Patient", gender="female", _tag=f"urn:yilian:test|{tag}")) == {p2["id"]}
    assert ids(search(fhir, "/Patient", **{"gender:not": "female", "_tag": f"urn:yilian:test|{tag}"})) == {p1["id"]}
    assert ids(search(fhir, "/Patient", **{"identifier:of-type":
               "http://terminology.hl7.org/CodeSystem/v2-0203|NI|11010519491231002X"})) == {p1["id"]}
    glucose = {o["id"] for o in data["obs"] if o["code"]["coding"][0]["code"] == "2345-7"}
    assert ids(search(fhir, "/Observation", **{"code:text": "血糖", "_tag": f"urn:yilian:test|{tag}"})) == glucose
    assert ids(search(fhir, "/Observation", code=f"{LOINC}|2345-7", _tag=f"urn:yilian:test|{tag}")) == glucose
    # OR within a parameter, AND across repeats
    both = search(fhir, "/Observation", code="2345-7,4548-4", _tag=f"urn:yilian:test|{tag}")
    assert len(ids(both)) == 4
    assert ids(search(fhir, "/Patient", telecom="13800138000")) == {p1["id"]}


def test_missing(fhir, data):
    tag = data["tag"]
    assert ids(search(fhir, "/Patient", **{"telecom:missing": "true", "_tag": f"urn:yilian:test|{tag}"})) == {data["p2"]["id"]}
    assert ids(search(fhir, "/Patient", **{"telecom:missing": "false", "_tag": f"urn:yilian:test|{tag}"})) == {data["p1"]["id"]}


def test_date_prefixes_and_precision(fhir, data):
    p1, p2, tag = data["p1"], data["p2"], data["tag"]
    t = {"_tag": f"urn:yilian:test|{tag}"}
    assert ids(search(fhir, "/Patient", birthdate="1949", **t)) == {p1["id"]}
    assert ids(search(fhir, "/Patient", birthdate="1949-12-31", **t)) == {p1["id"]}
    assert ids(search(fhir, "/Patient", birthdate="gt1950", **t)) == {p2["id"]}
    assert ids(search(fhir, "/Patient", birthdate="lt1950-01-01", **t)) == {p1["id"]}
    assert ids(search(fhir, "/Patient", birthdate="ge1990-06-15", **t)) == {p2["id"]}  # month overlaps
    assert ids(search(fhir, "/Patient", birthdate="eq1990-06-15", **t)) == set()  # month not inside a day
    assert ids(search(fhir, "/Patient", birthdate="ne1949-12-31", **t)) == {p2["id"]}
    assert ids(search(fhir, "/Patient", birthdate="sa1980", **t)) == {p2["id"]}
    assert ids(search(fhir, "/Patient", birthdate="eb1980", **t)) == {p1["id"]}
    assert ids(search(fhir, "/Patient", birthdate="ap1949-12-30", **t)) == {p1["id"]}
    # a range: both bounds
    obs = search(fhir, "/Observation", date=["ge2024-01-01", "lt2024-03-01"], **t)
    assert ids(obs) == {data["obs"][0]["id"]}
    # time zones: 2024-01-10T08:00+08:00 is 2024-01-10T00:00Z
    assert ids(search(fhir, "/Observation", date="2024-01-10T00:00:00Z", **t)) == {data["obs"][0]["id"]}


def test_quantity_and_number(fhir, data):
    tag = data["tag"]
    t = {"_tag": f"urn:yilian:test|{tag}"}
    o = data["obs"]
    assert ids(search(fhir, "/Observation", **{"value-quantity": "gt7", **t})) == {o[1]["id"], o[3]["id"]}
    assert ids(search(fhir, "/Observation", **{"value-quantity": "gt7|http://unitsofmeasure.org|mmol/L", **t})) == {o[1]["id"]}
    assert ids(search(fhir, "/Observation", **{"value-quantity": "5.4", **t})) == {o[0]["id"]}
    assert ids(search(fhir, "/Observation", **{"value-quantity": "5.4||mmol/L", **t})) == {o[0]["id"]}
    assert ids(search(fhir, "/Observation", **{"value-quantity": "le6.1", **t})) == {o[0]["id"], o[2]["id"]}
    assert ids(search(fhir, "/Observation", **{"value-quantity": "ap100", **t})) == {o[3]["id"]}


def test_composite(fhir, data):
    t = {"_tag": f"urn:yilian:test|{data['tag']}"}
    o = data["obs"]
    r = search(fhir, "/Observation", **{"code-value-quantity": f"{LOINC}|2345-7$gt6", **t})
    assert ids(r) == {o[1]["id"], o[3]["id"]}
    r = search(fhir, "/Observation", **{"code-value-quantity": "4548-4$lt7", **t})
    assert ids(r) == {o[2]["id"]}


def test_reference_forms(fhir, data):
    p1 = data["p1"]["id"]
    mine = {o["id"] for o in data["obs"][:3]}
    assert ids(search(fhir, "/Observation", subject=f"Patient/{p1}")) == mine
    assert ids(search(fhir, "/Observation", patient=p1)) == mine
    assert ids(search(fhir, "/Observation", **{"subject:Patient": p1})) == mine
    assert ids(search(fhir, "/Observation", subject=f"{fhir.base_url}/Patient/{p1}".replace("//Patient", "/Patient"))) == mine


def test_uri_and_profile(fhir, data):
    prof = "http://example.org/StructureDefinition/cn-patient"
    assert ids(search(fhir, "/Patient", _profile=prof)) == {data["p1"]["id"]}
    assert data["p1"]["id"] in ids(search(fhir, "/Patient", **{"_profile:below": "http://example.org/StructureDefinition/"}))


def test_chain_and_reverse_chain(fhir, data):
    tag = data["tag"]
    mine = {o["id"] for o in data["obs"][:3]}
    r = search(fhir, "/Observation", **{"subject:Patient.identifier": "urn:oid:2.16.156.10011.1.3|11010519491231002X"})
    assert ids(r) == mine
    r = search(fhir, "/Observation", **{"patient.name": "li" + tag})
    assert ids(r) == {data["obs"][3]["id"]}
    r = search(fhir, "/Observation", **{"subject:Patient.organization.identifier": f"urn:yilian:org|{tag}"})
    assert ids(r) == mine
    # _has: patients with a glucose above 7
    r = search(fhir, "/Patient", **{"_has:Observation:patient:code-value-quantity": "2345-7$gt7",
                                    "_tag": f"urn:yilian:test|{tag}"})
    assert ids(r) == {data["p1"]["id"], data["p2"]["id"]}
    r = search(fhir, "/Patient", **{"_has:Observation:patient:status": "preliminary",
                                    "_tag": f"urn:yilian:test|{tag}"})
    assert ids(r) == {data["p1"]["id"]}


def test_include_revinclude_and_iterate(fhir, data):
    p1 = data["p1"]["id"]
    r = search(fhir, "/Observation", patient=p1, _include="Observation:subject")
    assert ids(r, "include") == {p1}
    r = search(fhir, "/DiagnosticReport", patient=p1, _include="DiagnosticReport:result")
    assert ids(r, "include") == {o["id"] for o in data["obs"][:3]}
    r = search(fhir, "/Patient", _id=p1, _revinclude="DiagnosticReport:patient")
    assert ids(r, "include") == {data["report"]["id"]}
    r = fhir.get("/Patient", params=[("_id", p1), ("_revinclude", "DiagnosticReport:patient"),
                                     ("_include:iterate", "DiagnosticReport:result"),
                                     ("_include", "Patient:organization")]).json()
    assert ids(r, "include") == {data["report"]["id"], data["org"]["id"]} | {o["id"] for o in data["obs"][:3]}


def test_sort_paging_total(fhir, data):
    t = {"_tag": f"urn:yilian:test|{data['tag']}"}
    r = search(fhir, "/Observation", _sort="-date", **t)
    dates = [e["resource"]["effectiveDateTime"] for e in r["entry"]]
    assert dates[0].startswith("2024-03-02") and dates[-1] == "2023-11-20"
    r = search(fhir, "/Observation", _sort="value-quantity", **t)
    vals = [e["resource"]["valueQuantity"]["value"] for e in r["entry"]]
    assert vals == sorted(vals)
    r = search(fhir, "/Observation", _sort="code,-date", **t)
    codes = [e["resource"]["code"]["coding"][0]["code"] for e in r["entry"]]
    assert codes == sorted(codes)
    # paging with stable links
    page1 = search(fhir, "/Observation", _count=2, _sort="_id", _total="accurate", **t)
    assert page1["total"] == 4 and len(page1["entry"]) == 2
    nxt = next(link["url"] for link in page1["link"] if link["relation"] == "next")
    page2 = fhir.get(nxt).json()
    assert len(page2["entry"]) == 2 and not ids(page1) & ids(page2)
    assert not any(link["relation"] == "next" for link in page2["link"])
    none = search(fhir, "/Observation", _count=2, _total="none", **t)
    assert "total" not in none
    count_only = search(fhir, "/Observation", _summary="count", **t)
    assert count_only["total"] == 4 and "entry" not in count_only


def test_summary_and_elements(fhir, data):
    r = search(fhir, "/Patient", _id=data["p1"]["id"], _summary="true")
    res = r["entry"][0]["resource"]
    assert "telecom" in res and "managingOrganization" in res and "address" in res
    assert any(t["code"] == "SUBSETTED" for t in res["meta"]["tag"])
    r = search(fhir, "/Patient", _id=data["p1"]["id"], _elements="gender")
    res = r["entry"][0]["resource"]
    assert set(res) == {"resourceType", "id", "meta", "gender"}


def test_id_lastupdated_tag(fhir, data):
    p1 = data["p1"]
    assert ids(search(fhir, "/Patient", _id=p1["id"])) == {p1["id"]}
    assert p1["id"] in ids(search(fhir, "/Patient", _lastUpdated="ge" + p1["meta"]["lastUpdated"][:10]))
    assert ids(search(fhir, "/Patient", _lastUpdated="lt2000-01-01", _id=p1["id"])) == set()


def test_compartment_search_and_everything(fhir, data):
    p1 = data["p1"]["id"]
    r = search(fhir, f"/Patient/{p1}/Observation", code="2345-7")
    assert ids(r) == {o["id"] for o in data["obs"][:2]}
    ev = fhir.get(f"/Patient/{p1}/$everything").json()
    got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in ev["entry"]}
    assert ("Patient", p1) in got and ("DiagnosticReport", data["report"]["id"]) in got
    assert {("Observation", o["id"]) for o in data["obs"][:3]} <= got
    assert ("Observation", data["obs"][3]["id"]) not in got
    page = fhir.get(f"/Patient/{p1}/$everything", params={"_count": 2}).json()
    assert len(page["entry"]) == 2 and any(link["relation"] == "next" for link in page["link"])


def test_system_search_with_type(fhir, data):
    r = search(fhir, "/", _type="Patient,Observation", _tag=f"urn:yilian:test|{data['tag']}")
    types = {e["resource"]["resourceType"] for e in r["entry"]}
    assert types == {"Patient", "Observation"} and len(r["entry"]) == 6


def test_unknown_parameter_strict_and_lenient(fhir, data):
    r = fhir.get("/Patient", params={"nonsense": "1"})
    assert r.status_code == 400 and "nonsense" in r.json()["issue"][0]["diagnostics"]
    r = fhir.get("/Patient", params={"nonsense": "1", "_id": data["p1"]["id"]}, headers={"Prefer": "handling=lenient"})
    assert r.status_code == 200
    b = r.json()
    assert ids(b) == {data["p1"]["id"]}
    assert any(e["resource"]["resourceType"] == "OperationOutcome" for e in b["entry"])
    assert fhir.get("/Patient", params={"birthdate": "notadate"}).status_code == 400
    assert fhir.get("/Patient", params={"gender:exact": "male"}).status_code == 400
    assert fhir.get("/Observation", params={"value-quantity": "gtabc"}).status_code == 400
    assert fhir.get("/Patient", params={"_sort": "nonsense"}).status_code == 400
    assert fhir.get("/Patient", params={"_include": "Patient:nonsense"}).status_code == 400


def test_post_search(fhir, data):
    r = fhir.post("/Patient/_search", content=f"_id={data['p1']['id']}",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and ids(r.json()) == {data["p1"]["id"]}


def test_values_longer_than_the_index_columns_are_indexed_by_their_beginning(fhir):
    """Index strings are clipped to 255 characters where the rows are made
    (hub.fhir.search.extract): a longer value is stored whole and found by its first 255
    characters, on both engines, whatever the row kind."""
    value = unique("long-") + "é" * 400
    r = fhir.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": value}],
                                    "name": [{"family": value}]})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert fhir.get(f"/Patient/{rid}").json()["identifier"][0]["value"] == value
    assert ids(search(fhir, "/Patient", identifier="urn:x|" + value[:255])) == {rid}
    assert ids(search(fhir, "/Patient", **{"family:exact": value[:255]})) == {rid}
    r = fhir.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "meta": {"source": "urn:src:" + value},
        "code": {"coding": [{"system": "urn:sys:" + value, "code": value}]},
        "basedOn": [{"identifier": {"system": "urn:x", "value": value}}],
        "valueQuantity": {"value": 2.5, "system": "urn:u", "code": value}})
    assert r.status_code == 201, r.text
    oid = r.json()["id"]
    clipped = value[:255]
    assert ids(search(fhir, "/Observation", code=("urn:sys:" + value)[:255] + "|" + clipped)) == {oid}
    assert ids(search(fhir, "/Observation", _source=("urn:src:" + value)[:255])) == {oid}
    assert ids(search(fhir, "/Observation", **{"based-on:identifier": "urn:x|" + clipped})) == {oid}
    assert ids(search(fhir, "/Observation", **{"value-quantity": f"2.5|urn:u|{clipped}"})) == {oid}
    assert ids(search(fhir, "/Observation", **{"code-value-quantity": f"{clipped}$2.5|urn:u|{clipped}"})) == {oid}


def test_several_filters_start_from_one_and_check_the_others_per_resource(fhir):
    """hub.fhir.search.execute: one filter drives, the other plain lookups are per-resource
    probes; the answer is the intersection whichever filter drives (OR inside each filter)."""
    tag = unique()
    pids = [fhir.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": tag + str(i)}]}).json()["id"]
            for i in range(2)]
    made = {}
    for i, pid in enumerate(pids):
        for code in ("c1", "c2", "c3"):
            for status in ("final", "preliminary"):
                r = fhir.post("/Observation", json={
                    "resourceType": "Observation", "status": status, "subject": {"reference": f"Patient/{pid}"},
                    "code": {"coding": [{"system": "urn:codes:" + tag, "code": code}]}})
                made[(i, code, status)] = r.json()["id"]
    got = ids(search(fhir, "/Observation", patient=f"Patient/{pids[0]}", code=f"urn:codes:{tag}|c1,urn:codes:{tag}|c3",
                     status="final"))
    assert got == {made[(0, "c1", "final")], made[(0, "c3", "final")]}
    got = ids(search(fhir, "/Observation", **{"_id": ",".join(made.values()), "code": f"urn:codes:{tag}|c2",
                                              "status:not": "final"}))
    assert got == {made[(0, "c2", "preliminary")], made[(1, "c2", "preliminary")]}
    both = search(fhir, "/Observation", **{"code": f"urn:codes:{tag}|c2", "patient.identifier": f"urn:t|{tag}1",
                                           "_total": "accurate"})
    assert ids(both) == {made[(1, "c2", "final")], made[(1, "c2", "preliminary")]} and both["total"] == 2
