"""The master patient index over real HTTP, on SQLite and PostgreSQL: golden records and links,
guards, re-matching, the review queue, $match, $ihe-pix, $merge/$unmerge, $everything across
hospitals, linked searches and the MHD-style document lookup."""

from __future__ import annotations

import httpx
import pytest

from hub.mpi import gb11643_check_character
from hub.mpi.index import GOLDEN_TAG, PERSON_SYSTEM
from tests.conftest import RunningHub, make_settings, unique

RID = "urn:oid:2.16.156.10011.1.3"


def resident_id(birth: str, serial: str, female: bool) -> str:
    """A valid GB 11643 number for a birth date (YYYYMMDD) and a 2-digit serial."""
    body = "110105" + birth + serial + ("2" if female else "1")
    return body + gb11643_check_character(body)


def patient(org: str, name: str, birth: str, gender: str = "female", *, rid: str | None = None,
            phone: str | None = None, address: str | None = None, **kw) -> dict:
    res = {"resourceType": "Patient", "meta": {"source": f"https://{org}.example.org/his"},
           "identifier": [{"system": f"https://yilian.example.org/fhir/sid/{org}/mrn", "value": unique()}],
           "name": [{"text": name}], "gender": gender, "birthDate": birth, **kw}
    if rid:
        res["identifier"].append({"system": RID, "value": rid})
    if phone:
        res["telecom"] = [{"system": "phone", "value": phone}]
    if address:
        res["address"] = [{"text": address}]
    return res


def create(fhir, res: dict) -> dict:
    r = fhir.post(f"/{res['resourceType']}", json=res)
    assert r.status_code == 201, r.text
    return r.json()


def golden_of(res: dict) -> str:
    refs = [lk["other"]["reference"] for lk in res.get("link", []) if lk["type"] == "refer"]
    assert len(refs) == 1, res.get("link")
    return refs[0].split("/")[1]


def ids(bundle: dict, rtype: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])
            if rtype is None or e["resource"]["resourceType"] == rtype}


@pytest.fixture(scope="module")
def mpi_client(hub):
    with httpx.Client(base_url=hub.root, timeout=60,
                      headers={"Authorization": f"Bearer {hub.token('system/*.cruds yilian/mpi', subject='reviewer-1')}"}) as c:
        yield c


def _birth() -> tuple[str, str]:
    """A birth date unlikely to collide with other tests' records (the index is module-wide)."""
    import random

    y, m, d = random.randint(1940, 2000), random.randint(1, 12), random.randint(1, 28)
    return f"{y}-{m:02d}-{d:02d}", f"{y}{m:02d}{d:02d}"


# --------------------------------------------------------------------------- linking

def test_same_person_at_three_hospitals_becomes_one_golden_record(fhir):
    iso, compact = _birth()
    rid = resident_id(compact, "31", female=True)
    a = create(fhir, patient("h1", "欧阳秀英", iso, rid=rid, phone="13812345678"))
    b = create(fhir, patient("h2", "欧阳秀英", iso, rid=rid))  # same resident ID: deterministic
    c = create(fhir, {**patient("h3", "x", iso, phone="13812345678"),  # pinyin only, same phone
                      "name": [{"text": "Ouyang Xiuying"}]})
    person = golden_of(a)
    assert golden_of(b) == person and golden_of(c) == person
    golden = fhir.get(f"/Patient/{person}").json()
    assert GOLDEN_TAG["code"] in [t["code"] for t in golden["meta"]["tag"]]
    assert {"system": PERSON_SYSTEM, "value": person} in [
        {k: i[k] for k in ("system", "value")} for i in golden["identifier"]]
    assert sorted(lk["other"]["reference"] for lk in golden["link"] if lk["type"] == "seealso") == \
        sorted(f"Patient/{x['id']}" for x in (a, b, c))
    # the golden record carries no source identifier: a conditional create by MRN finds one Patient
    mrn = a["identifier"][0]
    found = fhir.get("/Patient", params={"identifier": f"{mrn['system']}|{mrn['value']}"}).json()
    assert ids(found) == {a["id"]}
    # each source keeps its organization visible
    assert fhir.get(f"/Patient/{c['id']}").json()["meta"]["source"] == "https://h3.example.org/his"


def test_patient_searches_list_source_records_and_golden_ones_only_when_asked(fhir):
    iso, compact = _birth()
    rid = resident_id(compact, "47", female=True)
    name = "司马相如"  # a name no other test of the module registers
    a = create(fhir, patient("h1", name, iso, rid=rid))
    b = create(fhir, patient("h2", name, iso, rid=rid))
    person = golden_of(a)
    assert golden_of(b) == person
    sources = {a["id"], b["id"]}

    def found(**params) -> set[str]:
        r = fhir.get("/Patient", params=params)
        assert r.status_code == 200, r.text
        return ids(r.json())

    # what a clinician's app asks: one entry per hospital record, no golden duplicate
    assert found(name=name) == sources
    assert found(birthdate=iso, gender="female", name=name) == sources
    bundle = fhir.get("/Patient", params={"name": name, "_count": 1}).json()
    assert len(bundle["entry"]) == 1 and bundle["entry"][0]["resource"]["id"] in sources
    assert "_tag" not in next(lk["url"] for lk in bundle["link"] if lk["relation"] == "self")
    assert ids(fhir.get(next(lk["url"] for lk in bundle["link"] if lk["relation"] == "next")).json()) <= sources
    assert ids(fhir.post("/Patient/_search", data={"name": name}).json()) == sources
    # a search naming golden records finds them
    golden = f"{GOLDEN_TAG['system']}|{GOLDEN_TAG['code']}"
    assert found(name=name, _tag=golden) == {person}
    assert found(_id=f"{person},{a['id']}") == {person, a["id"]}
    assert found(identifier=f"{PERSON_SYSTEM}|{person}") == {person}
    assert found(link=f"Patient/{a['id']}") == {person}
    assert found(name=name, **{"_tag:not": golden}) == sources


def test_twins_and_invalid_ids_are_not_linked(fhir):
    iso, compact = _birth()
    home = dict(phone="13900001111", address="北京市朝阳区建国路88号")
    t1 = create(fhir, patient("h1", "李明华", iso, "male", **home))
    t2 = create(fhir, patient("h1", "李明中", iso, "male", **home))
    assert golden_of(t1) != golden_of(t2)
    # the same placeholder ID number for two different people must not link them
    p1 = create(fhir, patient("h2", "赵一鸣", iso, "male", rid="000000000000000000"))
    p2 = create(fhir, patient("h2", "孙立", "1990-01-01", "male", rid="000000000000000000"))
    assert golden_of(p1) != golden_of(p2)


def test_golden_records_cannot_be_written_by_clients(fhir):
    a = create(fhir, patient("h1", "周晓", _birth()[0]))
    person = golden_of(a)
    golden = fhir.get(f"/Patient/{person}").json()
    golden["gender"] = "male"
    assert fhir.put(f"/Patient/{person}", json=golden).status_code == 403
    forged = {**patient("h1", "周晓", "1990-01-01"), "meta": {"tag": [GOLDEN_TAG]}}
    assert fhir.post("/Patient", json=forged).status_code == 403


def test_changed_demographics_are_matched_again(fhir):
    iso, _ = _birth()
    a = create(fhir, patient("h1", "郑国强", iso, "male", phone="13700002222"))
    b = create(fhir, patient("h2", "郑国强", iso, "male", phone="13700002222"))
    assert golden_of(a) == golden_of(b)
    # h2 corrects a mix-up: the record is somebody else
    b2 = {**b, "name": [{"text": "钱学文"}], "birthDate": "1955-02-03", "telecom": []}
    r = fhir.put(f"/Patient/{b['id']}", json=b2)
    assert r.status_code == 200
    assert golden_of(r.json()) != golden_of(a)
    golden = fhir.get(f"/Patient/{golden_of(a)}").json()
    assert [lk["other"]["reference"] for lk in golden["link"]] == [f"Patient/{a['id']}"]


# --------------------------------------------------------------------------- review queue

def _review_for(mpi_client, pid: str) -> dict:
    items = mpi_client.get("/mpi/reviews", params={"status": "open", "_count": 500}).json()["items"]
    mine = [i for i in items if pid in (i["patient"].split("/")[1], i["candidate"].split("/")[1])]
    assert len(mine) == 1, items
    return mine[0]


def test_review_accept_with_optimistic_concurrency(fhir, mpi_client):
    y = _birth()[0][:8]
    a = create(fhir, patient("h1", "吴丽娟", y + "15"))
    b = create(fhir, patient("h3", "吴丽娟", y + "16"))  # one digit off, nothing else: ask a person
    assert golden_of(a) != golden_of(b)
    item = _review_for(mpi_client, b["id"])
    assert item["status"] == "open" and item["score"] > 0 and "birth_date:near" in item["explanation"]
    one = mpi_client.get(f"/mpi/reviews/{item['id']}")
    assert one.headers["etag"] == f'W/"{item["version"]}"'
    assert mpi_client.post(f"/mpi/reviews/{item['id']}/accept").status_code == 428
    stale = mpi_client.post(f"/mpi/reviews/{item['id']}/accept", headers={"If-Match": 'W/"99"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    ok = mpi_client.post(f"/mpi/reviews/{item['id']}/accept", headers={"If-Match": one.headers["etag"]})
    assert ok.status_code == 200 and ok.json()["status"] == "accepted"
    assert ok.json()["decidedBy"] == "reviewer-1"
    again = mpi_client.post(f"/mpi/reviews/{item['id']}/accept", headers={"If-Match": ok.headers["etag"]})
    assert again.status_code == 409
    pa, pb = fhir.get(f"/Patient/{a['id']}").json(), fhir.get(f"/Patient/{b['id']}").json()
    assert golden_of(pa) == golden_of(pb)
    links = mpi_client.get(f"/mpi/patients/{b['id']}").json()
    assert links["source"] == "manual" and links["person"] == f"Patient/{golden_of(pa)}"
    actions = [(h["action"], h["source"]) for h in links["history"]]
    assert actions[:2] == [("unlink", "manual"), ("link", "manual")] and actions[-1] == ("new-person", "auto")
    assert links["history"][1]["actor"] == "reviewer-1"
    assert mpi_client.get(f"/mpi/patients/{unique()}").status_code == 404
    # a manual link is kept when the record changes, even where automation would not link it
    pb["telecom"] = [{"system": "phone", "value": "13100009999"}]
    assert golden_of(fhir.put(f"/Patient/{b['id']}", json=pb).json()) == golden_of(pa)


def test_review_reject_is_never_overridden_by_automation(fhir, mpi_client):
    y = _birth()[0][:8]
    a = create(fhir, patient("h1", "冯建军", y + "11", "male"))
    b = create(fhir, patient("h2", "冯建军", y + "12", "male"))
    item = _review_for(mpi_client, b["id"])
    r = mpi_client.post(f"/mpi/reviews/{item['id']}/reject", headers={"If-Match": f'W/"{item["version"]}"'})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    # b now says exactly what a says: automation alone would link them, the decision stands
    b2 = {**fhir.get(f"/Patient/{b['id']}").json(), "birthDate": a["birthDate"]}
    assert golden_of(fhir.put(f"/Patient/{b['id']}", json=b2).json()) != golden_of(a)


def test_a_transaction_with_two_registrations_of_one_person_links_them(fhir):
    iso, compact = _birth()
    rid = resident_id(compact, "88", female=False)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{unique()}", "resource": patient(org, "司马光", iso, "male", rid=rid),
         "request": {"method": "POST", "url": "Patient"}} for org in ("h1", "h2")]}
    r = fhir.post("", json=bundle, headers={"Prefer": "return=representation"})
    assert r.status_code == 200, r.text
    created = [e["resource"] for e in r.json()["entry"]]
    assert [c["resourceType"] for c in created] == ["Patient", "Patient"]  # the golden record is not an entry
    assert golden_of(created[0]) == golden_of(created[1])
    # written once, with the write: one version linking both sources
    golden = fhir.get(f"/Patient/{golden_of(created[0])}").json()
    assert golden["meta"]["versionId"] == "1"
    assert sorted(lk["other"]["reference"] for lk in golden["link"]) == sorted(f"Patient/{c['id']}" for c in created)


def test_review_decisions_are_audited(db_url, tmp_path):
    """Refused and accepted decisions each leave an AuditEvent (IHE BALP, like FHIR accesses);
    a second hub on the same database reads what the first flushed when it stopped."""
    subject = unique("reviewer-")
    with RunningHub(make_settings(db_url, tmp_path)) as h, h.client() as c:
        y = _birth()[0][:8]
        create(c, patient("h1", "沈从文", y + "13", "male"))
        b = create(c, patient("h2", "沈从文", y + "14", "male"))
        token = h.token("yilian/mpi", subject=subject)
        with httpx.Client(base_url=h.root, headers={"Authorization": f"Bearer {token}"}) as m:
            item = _review_for(m, b["id"])
            assert m.post(f"/mpi/reviews/{item['id']}/reject", headers={"If-Match": 'W/"9"'}).status_code == 412
            assert m.post(f"/mpi/reviews/{item['id']}/reject",
                          headers={"If-Match": f'W/"{item["version"]}"'}).status_code == 200
    with RunningHub(make_settings(db_url, tmp_path)) as h2, h2.client() as admin:
        found = admin.get("/AuditEvent", params={"subtype": "operation", "_count": 1000}).json()
        mine = [e["resource"] for e in found.get("entry", [])
                if e["resource"]["agent"][0]["who"]["identifier"]["value"] == subject]
        assert sorted(e["outcome"] for e in mine) == ["0", "0", "4"]  # list, reject; the stale attempt
        decided = [e for e in mine if any(x.get("what", {}).get("reference") == f"Patient/{b['id']}"
                                          for x in e.get("entity", []))]
        assert decided


def test_review_api_needs_the_mpi_scope(hub):
    with httpx.Client(base_url=hub.root, headers={"Authorization": f"Bearer {hub.token('system/*.cruds')}"}) as c:
        assert c.get("/mpi/reviews").status_code == 403
    assert httpx.get(hub.root + "/mpi/reviews").status_code == 401


# --------------------------------------------------------------------------- operations

def _match(fhir, res: dict, **params) -> httpx.Response:
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": res}]}
    for k, v in params.items():
        body["parameter"].append({"name": k, ("valueBoolean" if isinstance(v, bool) else "valueInteger"): v})
    return fhir.post("/Patient/$match", json=body)


def test_match_returns_grades_and_scores(fhir):
    iso, compact = _birth()
    rid = resident_id(compact, "52", female=True)
    a = create(fhir, patient("h1", "韩雪梅", iso, rid=rid))
    query = {"resourceType": "Patient", "name": [{"text": "韩雪梅"}], "gender": "female", "birthDate": iso}
    r = _match(fhir, query)
    assert r.status_code == 200
    entry = next(e for e in r.json()["entry"] if e["resource"]["id"] == a["id"])
    assert entry["search"]["extension"][0]["valueCode"] == "certain" and 0.99 <= entry["search"]["score"] <= 1
    near = {**query, "birthDate": iso[:8] + ("11" if iso[8:] != "11" else "12")}
    graded = {e["resource"]["id"]: e["search"]["extension"][0]["valueCode"] for e in _match(fhir, near).json().get("entry", [])}
    assert graded.get(a["id"]) in ("probable", "possible")
    only = _match(fhir, near, onlyCertainMatches=True).json()
    assert a["id"] not in ids(only)
    assert _match(fhir, {"resourceType": "Observation"}).status_code == 422
    assert fhir.post("/Patient/$match", json={"resourceType": "Patient"}).status_code == 400


def test_ihe_pix_cross_references_identifiers(fhir):
    iso, compact = _birth()
    rid = resident_id(compact, "63", female=False)
    a = create(fhir, patient("h1", "曹操", iso, "male", rid=rid))
    b = create(fhir, patient("h2", "曹操", iso, "male", rid=rid))
    src = a["identifier"][0]
    r = fhir.get("/Patient/$ihe-pix", params={"sourceIdentifier": f"{src['system']}|{src['value']}"})
    assert r.status_code == 200
    params = r.json()["parameter"]
    targets = {p["valueReference"]["reference"] for p in params if p["name"] == "targetId"}
    assert targets == {f"Patient/{a['id']}", f"Patient/{b['id']}"}
    idents = [p["valueIdentifier"] for p in params if p["name"] == "targetIdentifier"]
    assert b["identifier"][0]["value"] in [i["value"] for i in idents]
    assert src["value"] not in [i["value"] for i in idents]
    only = fhir.get("/Patient/$ihe-pix", params={"sourceIdentifier": f"{src['system']}|{src['value']}",
                                                 "targetSystem": b["identifier"][0]["system"]}).json()
    assert [p["valueIdentifier"]["value"] for p in only["parameter"] if p["name"] == "targetIdentifier"] == \
        [b["identifier"][0]["value"]]
    assert fhir.get("/Patient/$ihe-pix", params={"sourceIdentifier": "urn:x|nobody"}).status_code == 404
    assert fhir.get("/Patient/$ihe-pix", params={"sourceIdentifier": f"{src['system']}|{src['value']}",
                                                 "targetSystem": "urn:unknown"}).status_code == 403
    assert fhir.get("/Patient/$ihe-pix").status_code == 400


def _merge_params(source: str, target: str, preview: bool = False) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{target}"}},
        {"name": "preview", "valueBoolean": preview}]}


def test_merge_and_unmerge_over_http(fhir, hub):
    iso, _ = _birth()
    a = create(fhir, patient("h1", "蒋文", iso, "male"))
    b = create(fhir, patient("h1", "姜文斌", "1961-01-02", "male"))  # a duplicate registration, badly typed
    obs = create(fhir, {"resourceType": "Observation", "status": "final", "code": {"text": "Hb"},
                        "subject": {"reference": f"Patient/{b['id']}"}})
    pre = fhir.post("/Patient/$merge", json=_merge_params(b["id"], a["id"], preview=True))
    assert pre.status_code == 200 and "1 record(s) would be" in str(pre.json())
    assert fhir.get(f"/Observation/{obs['id']}").json()["subject"]["reference"] == f"Patient/{b['id']}"
    r = fhir.post("/Patient/$merge", json=_merge_params(b["id"], a["id"]))
    assert r.status_code == 200, r.text
    result = next(p["resource"] for p in r.json()["parameter"] if p["name"] == "result")
    assert {"other": {"reference": f"Patient/{b['id']}"}, "type": "replaces"} in result["link"]
    assert fhir.get(f"/Observation/{obs['id']}").json()["subject"]["reference"] == f"Patient/{a['id']}"
    merged = fhir.get(f"/Patient/{b['id']}").json()
    assert merged["active"] is False and not any(lk["type"] == "refer" for lk in merged["link"])
    golden = fhir.get(f"/Patient/{golden_of(result)}").json()
    assert [lk["other"]["reference"] for lk in golden["link"]] == [f"Patient/{a['id']}"]

    u = fhir.post("/Patient/$unmerge", json={"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{b['id']}"}}]})
    assert u.status_code == 200, u.text
    assert fhir.get(f"/Observation/{obs['id']}").json()["subject"]["reference"] == f"Patient/{b['id']}"
    back = fhir.get(f"/Patient/{b['id']}").json()
    assert back["active"] is True and golden_of(back) != golden_of(result)
    # bad requests
    assert fhir.post("/Patient/$merge", json=_merge_params(a["id"], a["id"])).status_code == 400
    assert fhir.post("/Patient/$merge", json=_merge_params(unique(), a["id"])).status_code == 404
    assert fhir.post("/Patient/$merge", json={"resourceType": "Parameters"}).status_code == 400
    with_read_only = fhir.post("/Patient/$merge", json=_merge_params(b["id"], a["id"]),
                               headers={"Authorization": f"Bearer {hub.token('system/*.rs')}"})
    assert with_read_only.status_code == 403


# --------------------------------------------------------------------------- cross-hospital lookup

@pytest.fixture()
def two_hospitals(fhir):
    iso, compact = _birth()
    rid = resident_id(compact, "77", female=True)
    a = create(fhir, patient("h1", "林黛玉", iso, rid=rid))
    b = create(fhir, patient("h2", "林黛玉", iso, rid=rid))
    assert golden_of(a) == golden_of(b)
    code = {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}
    oa = [create(fhir, {"resourceType": "Observation", "status": "final", "code": code,
                        "meta": {"source": "https://h1.example.org/lis"},
                        "subject": {"reference": f"Patient/{a['id']}"}}) for _ in range(2)]
    ob = create(fhir, {"resourceType": "Observation", "status": "final", "code": code,
                       "meta": {"source": "https://h2.example.org/lis"},
                       "subject": {"reference": f"Patient/{b['id']}"}})
    return a, b, oa, ob


def test_everything_spans_both_hospitals_with_paging(fhir, two_hospitals):
    a, b, oa, ob = two_hospitals
    full = fhir.get(f"/Patient/{a['id']}/$everything").json()
    assert {o["id"] for o in oa} | {ob["id"]} <= ids(full, "Observation")
    assert {a["id"], b["id"]} <= ids(full, "Patient")
    sources = {e["resource"]["meta"].get("source") for e in full["entry"] if e["resource"]["resourceType"] == "Observation"}
    assert sources == {"https://h1.example.org/lis", "https://h2.example.org/lis"}
    seen, url = [], f"/Patient/{b['id']}/$everything?_count=2&_type=Observation"
    while url:
        page = fhir.get(url).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
    assert sorted(seen) == sorted([o["id"] for o in oa] + [ob["id"]])
    compartment = fhir.get(f"/Patient/{b['id']}/Observation").json()
    assert ids(compartment) == {o["id"] for o in oa} | {ob["id"]}


def test_linked_search_expands_to_the_person_and_refuses_misuse(fhir, two_hospitals):
    a, b, oa, ob = two_hospitals
    plain = fhir.get("/Observation", params={"patient": f"Patient/{b['id']}", "code": "http://loinc.org|718-7"}).json()
    assert ids(plain) == {ob["id"]}
    linked = fhir.get("/Observation", params={"patient:linked": f"Patient/{b['id']}",
                                              "code": "http://loinc.org|718-7"}).json()
    assert ids(linked) == {o["id"] for o in oa} | {ob["id"]}
    for bad in ({"code:linked": "718-7"}, {"patient:linked": "Observation/1"},
                {"patient:linked.name": "x"}, {"subject:linked": "Patient/a/b"}):
        r = fhir.get("/Observation", params=bad)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", (bad, r.text)


def test_documents_of_a_person_across_members_mhd_style(fhir, two_hospitals):
    a, b, _, _ = two_hospitals
    binary = create(fhir, {"resourceType": "Binary", "contentType": "text/plain", "data": "5Ye66Zmi5bCP57uT"})
    doc = create(fhir, {"resourceType": "DocumentReference", "status": "current",
                        "meta": {"source": "https://h2.example.org/emr"},
                        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]},
                        "subject": {"reference": f"Patient/{b['id']}"},
                        "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/{binary['id']}"}}]})
    found = fhir.get("/DocumentReference", params={"patient:linked": f"Patient/{a['id']}", "status": "current"}).json()
    assert ids(found) == {doc["id"]}
    url = found["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    got = fhir.get(f"/{url}").json()
    assert got["data"] == "5Ye66Zmi5bCP57uT"
