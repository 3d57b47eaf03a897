"""The stored search index rows (hub.fhir.search.extract.stored_rows) over real HTTP on both
engines: parameters that share their rows with others (Observation ``combo-*``, ``phonetic``,
Coverage ``patient``, EnrollmentRequest ``subject``) store only the rest and still answer every
kind of search; each search stays an index lookup (EXPLAIN on both engines)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import or_, select, text

from hub.fhir.search.query import R
from hub.storage.schema import sp_composite, sp_quantity, sp_string, sp_token
from tests.conftest import unique

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def world(fhir):
    tag = unique("ix")
    meta = {"tag": [{"system": "urn:yilian:test", "code": tag}]}
    family = "Ouyang" + tag
    patient = fhir.post("/Patient", json={"resourceType": "Patient", "meta": meta, "gender": "female",
                                          "name": [{"family": family, "given": ["Xiu"]}]}).json()
    subject = {"reference": f"Patient/{patient['id']}"}

    def quantity(value, unit):
        return {"value": value, "unit": unit, "system": UCUM, "code": unit}

    glucose = fhir.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "meta": meta, "subject": subject,
        "code": {"coding": [{"system": LOINC, "code": "2345-7"}]}, "effectiveDateTime": "2024-01-10",
        "valueQuantity": quantity(5.4, "mmol/L")}).json()
    pressure = fhir.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "meta": meta, "subject": subject,
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}, "effectiveDateTime": "2024-01-11",
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": quantity(120, "mm[Hg]")},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": quantity(80, "mm[Hg]")},
            {"code": {"coding": [{"system": LOINC, "code": "2345-7"}]}, "valueQuantity": quantity(9.9, "mmol/L")}],
    }).json()
    coverage = fhir.post("/Coverage", json={
        "resourceType": "Coverage", "status": "active", "meta": meta, "beneficiary": subject,
        "payor": [{"reference": f"Patient/{patient['id']}"}]}).json()
    enrollment = fhir.post("/EnrollmentRequest", json={
        "resourceType": "EnrollmentRequest", "status": "active", "meta": meta, "candidate": subject}).json()
    return {"tag": tag, "family": family, "patient": patient, "glucose": glucose, "pressure": pressure,
            "coverage": coverage, "enrollment": enrollment}


def _ids(fhir, path: str, params: dict, mode: str = "match") -> list[str]:
    r = fhir.get(path, params=params)
    assert r.status_code == 200, r.text
    return [e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == mode
            and not e["resource"]["id"].startswith("mpi-")]


def test_covered_parameters_keep_only_their_own_rows(hub, world):
    """The glucose Observation's combo rows are all code/value-quantity rows: none stored; the
    blood pressure's are code and component-code rows: none stored either."""
    with hub.hub.engine.connect() as c:
        for table in (sp_token, sp_quantity, sp_composite):
            stored = c.execute(select(table.c.param).where(
                table.c.res_type == "Observation",
                table.c.res_id.in_([world["glucose"]["id"], world["pressure"]["id"]]),
                table.c.param.like("combo-%"))).all()
            assert stored == [], table.name
        names = c.execute(select(sp_string.c.param).where(
            sp_string.c.res_type == "Patient", sp_string.c.res_id == world["patient"]["id"])).scalars().all()
        assert "name" in names and "phonetic" not in names


@pytest.mark.parametrize("params, expected", [
    ({"combo-code": "2345-7"}, {"glucose", "pressure"}),
    ({"combo-code": f"{LOINC}|85354-9"}, {"pressure"}),
    ({"combo-code": "8480-6"}, {"pressure"}),
    ({"combo-code:not": "2345-7"}, set()),
    ({"combo-code:not": "8462-4"}, {"glucose"}),
    ({"combo-code:missing": "false"}, {"glucose", "pressure"}),
    ({"combo-code:missing": "true"}, set()),
    ({"combo-value-quantity": "5.4"}, {"glucose"}),
    ({"combo-value-quantity": f"120|{UCUM}|mm[Hg]"}, {"pressure"}),
    ({"combo-value-quantity": "gt100"}, {"pressure"}),
    ({"combo-code-value-quantity": "2345-7$5.4"}, {"glucose"}),
    ({"combo-code-value-quantity": "2345-7$9.9"}, {"pressure"}),
    ({"combo-code-value-quantity": "8480-6$120"}, {"pressure"}),
    ({"combo-code-value-quantity": "8480-6$80"}, set()),
    ({"combo-code": "8480-6", "code": "85354-9"}, {"pressure"}),
    ({"code": "2345-7", "combo-code": "8462-4"}, set()),
])
def test_searches_on_covered_parameters(fhir, world, params, expected):
    got = _ids(fhir, "/Observation", {"_tag": world["tag"], **params})
    assert set(got) == {world[k]["id"] for k in expected}


def test_sort_on_covered_parameter(fhir, world):
    """combo-code ascending: the least code of each (2345-7 for both; then by id), descending:
    85354-9 before 2345-7."""
    down = _ids(fhir, "/Observation", {"_tag": world["tag"], "_sort": "-combo-code"})
    assert down == [world["pressure"]["id"], world["glucose"]["id"]]
    down_q = _ids(fhir, "/Observation", {"_tag": world["tag"], "_sort": "-combo-value-quantity"})
    assert down_q == [world["pressure"]["id"], world["glucose"]["id"]]


def test_phonetic_is_read_from_name(fhir, world):
    assert _ids(fhir, "/Patient", {"phonetic": world["family"]}) == [world["patient"]["id"]]
    assert _ids(fhir, "/Patient", {"phonetic:exact": world["family"]}) == [world["patient"]["id"]]
    assert _ids(fhir, "/Patient", {"phonetic:missing": "false", "_tag": world["tag"]}) == [world["patient"]["id"]]


def test_covered_reference_parameters(fhir, world):
    pid = world["patient"]["id"]
    cov, enr = world["coverage"]["id"], world["enrollment"]["id"]
    assert _ids(fhir, "/Coverage", {"patient": f"Patient/{pid}"}) == [cov]
    assert _ids(fhir, "/Coverage", {"patient.family": world["family"]}) == [cov]
    assert _ids(fhir, "/Coverage", {"_id": cov, "_include": "Coverage:patient"}, "include") == [pid]
    assert _ids(fhir, "/Patient", {"_id": pid, "_revinclude": "Coverage:patient"}, "include") == [cov]
    assert _ids(fhir, "/Patient", {"_has:Coverage:patient:status": "active", "_id": pid}) == [pid]
    assert _ids(fhir, "/EnrollmentRequest", {"subject": pid}) == [enr]
    # the Patient compartment of EnrollmentRequest is its "subject", stored as "patient"
    assert _ids(fhir, f"/Patient/{pid}/EnrollmentRequest", {}) == [enr]
    every = fhir.get(f"/Patient/{pid}/$everything")
    assert every.status_code == 200, every.text
    assert {("EnrollmentRequest", enr), ("Coverage", cov)} <= {
        (e["resource"]["resourceType"], e["resource"]["id"]) for e in every.json()["entry"]}


def test_type_filtered_parameters_are_read_from_their_source(hub, fhir, world):
    """Observation ``patient`` (``subject.where(resolve() is Patient)``) stores no rows: it is
    read from the ``subject`` rows of target type Patient, for every kind of search."""
    from hub.storage.schema import sp_reference

    tag, pid = world["tag"], world["patient"]["id"]
    own = unique("grp")  # not the world's tag, which the other tests count on
    both = f"{tag},{own}"
    group = fhir.post("/Group", json={"resourceType": "Group", "type": "person", "actual": True}).json()
    grouped = fhir.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "meta": {"tag": [{"system": "urn:yilian:test", "code": own}]},
        "code": {"coding": [{"system": LOINC, "code": "2345-7"}]}, "subject": {"reference": f"Group/{group['id']}"}}
    ).json()["id"]
    with hub.hub.engine.connect() as c:
        params = c.execute(select(sp_reference.c.param).where(
            sp_reference.c.res_type == "Observation", sp_reference.c.res_id == world["glucose"]["id"])).scalars().all()
    assert "subject" in params and "patient" not in params
    obs = {world["glucose"]["id"], world["pressure"]["id"]}
    assert set(_ids(fhir, "/Observation", {"_tag": tag, "patient": pid})) == obs
    assert set(_ids(fhir, "/Observation", {"_tag": tag, "patient": f"Patient/{pid}"})) == obs
    assert set(_ids(fhir, "/Observation", {"_tag": both, "patient": group["id"]})) == set()
    assert set(_ids(fhir, "/Observation", {"_tag": both, "subject": group["id"]})) == {grouped}
    assert _ids(fhir, "/Observation", {"_tag": both, "patient:missing": "true"}) == [grouped]
    assert set(_ids(fhir, "/Observation", {"_tag": both, "patient:missing": "false"})) == obs
    assert set(_ids(fhir, "/Observation", {"_tag": tag, "patient.family": world["family"]})) == obs
    assert _ids(fhir, "/Observation", {"_tag": tag, "_include": "Observation:patient"}, "include") == [pid]
    assert set(_ids(fhir, "/Patient", {"_id": pid, "_revinclude": "Observation:patient"}, "include")) == obs
    assert _ids(fhir, "/Patient", {"_id": pid, "_has:Observation:patient:code": "85354-9"}) == [pid]
    assert set(_ids(fhir, f"/Patient/{pid}/Observation", {"_tag": tag})) == obs
    everything = {e["resource"]["id"] for e in fhir.get(f"/Patient/{pid}/$everything").json()["entry"]}
    assert obs <= everything and grouped not in everything
    assert set(_ids(fhir, "/Observation", {"_tag": both, "_sort": "-patient"})) == obs | {grouped}


#: one search per parameter type and per kind of lookup, (type, query items)
PLANNED = [
    ("Observation", [("code", "2345-7")]),
    ("Observation", [("combo-code", "http://loinc.org|8480-6")]),
    ("Observation", [("subject", "Patient/p1")]),
    ("Observation", [("patient", "p1"), ("code", "2345-7")]),
    # probes and :not look at the rows of the resource at hand, by its key
    ("Observation", [("patient", "p1"), ("code:not", "2345-7"), ("date", "2024-01-10")]),
    # (``ge``/``gt`` dates test only ``high``, which the (param, low, high) index cannot range
    # over: SQLite reads those by the index by resource, as it always has)
    ("Observation", [("date", "2024-01-10")]),
    ("Observation", [("date", "lt2024-01-01")]),
    ("Observation", [("value-quantity", "5.4")]),
    ("Observation", [("combo-value-quantity", "gt100")]),
    ("Observation", [("code-value-quantity", "2345-7$5.4")]),
    ("Observation", [("combo-code-value-quantity", "2345-7$5.4")]),
    ("Observation", [("_source", "urn:x")]),
    ("Observation", [("subject.family", "li")]),
    # derived from other parameters' rows of one target type (SearchParam.derived_from)
    ("Observation", [("patient.family", "li")]),
    ("AuditEvent", [("patient", "Patient/p1")]),
    ("Encounter", [("practitioner", "d1")]),
    ("Patient", [("name", "li")]),
    ("Patient", [("phonetic", "li")]),
    ("Patient", [("identifier", "urn:mrn|A1")]),
    ("Patient", [("_has:Observation:patient:code", "2345-7")]),
    ("Coverage", [("patient", "Patient/p1")]),
    ("RiskAssessment", [("probability", "gt0.5")]),
    # the index-usage side of 0004_fhir_write: no index by exact string nor by reference target
    ("Patient", [("family:exact", "Li")]),
    ("Observation", [("subject:identifier", "urn:mrn|A1")]),
    ("Observation", [("subject:identifier", "A1")]),
    ("QuestionnaireResponse", [("questionnaire", "http://example.org/Questionnaire/q1")]),
    ("Observation", [("subject:Patient", "p1")]),
    ("Observation", [("subject", "p1")]),
]


@pytest.mark.parametrize("res_type, items", PLANNED, ids=[f"{t}?{i[0][0]}" for t, i in PLANNED])
def test_searches_are_index_lookups_before_statistics(hub, world, res_type, items):
    """A young store, before its first ANALYZE: the same."""
    _check_plan(hub, res_type, items)


@pytest.fixture(scope="module")
def planned_store(hub, world):
    """Enough rows, and fresh planner statistics, for the plans to be the ones of a real store:
    3,000 Observations over 30 codes (a third with components), 300 Patients."""
    from hub.storage.db import write_tx

    store, engine = hub.hub.fhir.store, hub.hub.engine
    versions = []
    for i in range(300):
        versions.append(store.prepare_create("Patient", {
            "resourceType": "Patient", "name": [{"family": f"Filler{i}", "given": ["F"]}], "gender": "male"}))
    for i in range(3000):
        obs = {"resourceType": "Observation", "status": "final",
               "subject": {"reference": f"Patient/{versions[i % 300].res_id}"},
               "code": {"coding": [{"system": LOINC, "code": f"{1000 + i % 30}-0"}]},
               "effectiveDateTime": f"20{10 + i % 14}-01-01", "valueQuantity": {"value": i % 200, "unit": "mg"}}
        if i % 3 == 0:
            obs["component"] = [{"code": {"coding": [{"system": LOINC, "code": f"{2000 + i % 40}-0"}]},
                                 "valueQuantity": {"value": i % 90, "unit": "mg"}}]
        versions.append(store.prepare_create("Observation", obs))
    with write_tx(engine) as conn:
        store.write(conn, versions)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def _sql(engine, stmt) -> str:
    return str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))


def _plan(conn, sql: str) -> str:
    """The plan; on PostgreSQL with sequential scans priced out, which it rightly prefers for an
    empty table or a condition most rows meet: the plan shows what the indexes make possible."""
    if conn.dialect.name == "sqlite":
        return "\n".join(r[-1] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    conn.execute(text("SET enable_seqscan = off"))
    return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))


def _assert_index_lookups(plan: str) -> None:
    """No index table is read whole. SQLite: each is SEARCHed by more than the type, never
    SCANned. PostgreSQL: no sequential scan, and every index scan on one has an index condition
    (a whole-index scan with a filter reads the table just the same)."""
    assert not re.search(r"SCAN sp_|Seq Scan on sp_", plan), plan
    # every row of the type, by the index by resource, is no lookup either
    assert not re.search(r"SEARCH sp_\w+ USING (COVERING )?INDEX \w+ \(res_type=\?\)", plan), plan
    lines = plan.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"Index (Only )?Scan (Backward )?using \w+ on sp_", line):
            depth = len(line) - len(line.lstrip(" ->"))
            details = []
            for nxt in lines[i + 1:]:
                if len(nxt) - len(nxt.lstrip(" ")) <= depth or nxt.lstrip().startswith("->"):
                    break
                details.append(nxt)
            assert any("Index Cond" in d for d in details), plan


@pytest.mark.parametrize("res_type, items", PLANNED, ids=[f"{t}?{i[0][0]}" for t, i in PLANNED])
def test_searches_are_index_lookups(hub, planned_store, res_type, items):
    _check_plan(hub, res_type, items)


def _check_plan(hub, res_type: str, items: list) -> None:
    svc = hub.hub.fhir
    q = svc.parser.parse(res_type, items)
    stmt = select(R.res_id).where(*svc.executor.conditions(res_type, q.filters))
    sql = _sql(hub.hub.engine, stmt)
    with hub.hub.engine.connect() as conn:
        plan = _plan(conn, sql)
    _assert_index_lookups(plan)


def test_include_revinclude_and_sort_are_index_lookups(hub, planned_store):
    from hub.fhir.search.execute import REF

    svc = hub.hub.fhir
    sort = svc.compiler.sort_column("Observation", "combo-code", False)
    statements = [
        # _include: the references of the page's resources, by their keys
        select(REF.target_type, REF.target_id).where(
            REF.res_pk.in_([1, 2]), REF.target_id.is_not(None), REF.param == "subject"),
        select(REF.res_id).where(REF.target_type == "Patient", REF.target_id.in_(["p1"]),
                                 REF.res_type == "Coverage", REF.param.in_(["patient", "beneficiary"])),
        select(R.res_id).where(R.res_type == "Observation", R.res_id.in_(["a", "b"])).order_by(sort),
        # $everything: every reference to the patients, whatever the param
        select(REF.res_type, REF.param, REF.res_id).where(REF.target_type == "Patient", REF.target_id.in_(["p1"])),
        # the master patient index's merge: typed or bare references to one patient
        select(REF.res_type, REF.res_id).where(
            REF.target_id == "p1", or_(REF.target_type == "Patient", REF.target_type.is_(None))).distinct(),
    ]
    with hub.hub.engine.connect() as conn:
        for stmt in statements:
            _assert_index_lookups(_plan(conn, _sql(hub.hub.engine, stmt)))


def test_per_resource_statements_find_the_rows_by_the_resource_key(hub, planned_store):
    """What reads or deletes one resource's index rows goes by ``res_pk`` (ix_<table>_pk): the
    store's delete of an updated resource's rows, the recognition's results of a patient
    (references, codes and dates of each result), the retag's batches."""
    from hub.fhir.store import _delete_sql
    from hub.recognition import marks, recognizable

    engine = hub.hub.engine
    retag = (select(marks.TOK.c.res_pk).distinct()
             .where(marks.TOK.c.res_type == "Observation", marks.TOK.c.res_pk > 10,
                    or_(marks.TOK.c.param == "_tag", marks.TOK.c.code.in_(["2345-7"])))
             .order_by(marks.TOK.c.res_pk).limit(500))
    with engine.connect() as conn:
        mark = "?" if conn.dialect.name == "sqlite" else "%s"
        for sql in _delete_sql(conn.dialect.name):
            plan = _plan(conn, sql.replace(f"= {mark}", "= 7"))
            assert re.search(r"SEARCH sp_\w+ USING (COVERING )?INDEX ix_sp_\w+_pk \(res_pk=\?\)|"
                             r"Index (Only )?Scan using ix_sp_\w+_pk", plan), plan
        matches = recognizable._MATCHES.params(pids=["p1", "p2"], codes=["2345-7"])
        for stmt in (matches, retag):
            plan = _plan(conn, _sql(engine, stmt))
            _assert_index_lookups(plan)
        plan = _plan(conn, _sql(engine, matches))
        # whichever side the planner starts from, the other is found by the result's key
        assert re.search(r"ix_sp_(token|reference)_pk", plan) and "ix_sp_date_pk" in plan, plan
