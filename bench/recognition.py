"""``$recognizable`` latency for a patient with several years of results at several members.

Run: ``python bench/recognition.py [--db sqlite|postgres] [--years 5] [--requests 500]
[--others 300]``. It starts a fresh hub (``yilian hub run``, its own data folder or a fresh
PostgreSQL database on 127.0.0.1), publishes the sample reference data
(``hub/recognition/samples``, qualifications valid around today), and loads through FHIR
transaction bundles: one patient with a result a month for ``--years`` years of glucose at four
members (each with its own local code), HbA1c, potassium and haemoglobin at H001, haemoglobin
at H002 (g/dL), an uncatalogued ALT at every member, and a chest CT report a quarter; plus
``--others`` other patients with 24 results each so the indexes are not trivially small; then
``ANALYZE``, as autovacuum (PostgreSQL) or the hub's sampled ANALYZE (SQLite) would have run.

Then a physician at H002 asks ``POST Patient/{id}/$recognizable`` (Parameters ``item=CAT-GLU``),
``POST ServiceRequest/$recognizable`` (a draft order with H002's local glucose code) and
``GET Patient/{id}/$recognizable?item=CAT-GLU``, sequentially over one keep-alive connection,
after a warm-up; it prints the median, p95 and max latency (wall clock at the client, real HTTP)
and the number of candidates in an answer. Target: p95 < 20 ms. (The FHIR endpoint serves GET
requests on the event loop and POST in a worker thread; the same work answered by GET measures
slower on a loaded machine — see docs/recognition.md.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "hub" / "recognition" / "samples"
PG_ADMIN = os.environ.get("YILIAN_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SECRET = "bench-" + uuid.uuid4().hex

GLUCOSE = {"H001": ("urn:yilian:h001:lis", "GLU"), "H002": ("urn:yilian:h002:lis", "B-GLU-01"),
           "H003": ("urn:yilian:h003:lis", "0101"), "H004": ("urn:yilian:h004:lis", "GLU")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(scopes: str, org: str, subject: str) -> str:
    sys.path.insert(0, str(ROOT))
    from hub.security.tokens import TokenService

    return TokenService(issuer="yilian-hub", audience="yilian-fhir", algorithm="HS256", secret=SECRET,
                        lifetime_s=7200).issue(subject=subject, client_id=subject, scope=scopes, organization=org)


def qualifications() -> bytes:
    lines = (SAMPLES / "qualifications.csv").read_text().splitlines()
    start, end = (date.today() - timedelta(days=3650)).isoformat(), (date.today() + timedelta(days=365)).isoformat()
    return ("\n".join([lines[0]] + [",".join(line.split(",")[:6] + [start, end]) for line in lines[1:]]) + "\n").encode()


def org_ref(code: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from mappings.identity import organization_id

    return {"reference": f"Organization/{organization_id(code)}"}


def obs(pid: str, system: str, code: str, value: float, unit: str, when: datetime, org: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when.isoformat(timespec="seconds"),
            "performer": [org_ref(org)],
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def history(pid: str, years: int) -> list[dict]:
    now = datetime.now(timezone.utc)
    out = []
    for month in range(years * 12):
        when = now - timedelta(days=30 * month + 2)
        for org, (system, code) in GLUCOSE.items():
            out.append(obs(pid, system, code, 5.0 + month % 7 / 10, "mmol/L", when - timedelta(hours=3 * int(org[-1])), org))
            out.append(obs(pid, system.replace("lis", "lis2"), "ALT", 30, "U/L", when, org))
        out.append(obs(pid, "urn:yilian:h001:lis", "HBA1C", 6.1, "%", when, "H001"))
        out.append(obs(pid, "urn:yilian:h001:lis", "K", 4.2, "mmol/L", when, "H001"))
        out.append(obs(pid, "urn:yilian:h001:lis", "HGB", 130, "g/L", when, "H001"))
        out.append(obs(pid, "urn:yilian:h002:lis", "XHB", 13.1, "g/dL", when, "H002"))
        if month % 3 == 0:
            out.append({"resourceType": "DiagnosticReport", "status": "final",
                        "code": {"coding": [{"system": "urn:yilian:h001:pacs", "code": "CT-CHEST"}]},
                        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when.isoformat(timespec="seconds"),
                        "performer": [org_ref("H001")]})
    return out


def transaction(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]}


def start_hub(args, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "YILIAN_DATA_DIR": str(work / "data"), "YILIAN_PORT": str(port), "YILIAN_LOG_LEVEL": "WARNING",
           "YILIAN_TOKEN_SECRET": SECRET, "YILIAN_INGEST_WORKERS": "0"}
    if args.db_url:
        env["YILIAN_DATABASE_URL"] = args.db_url
    yilian = [sys.executable, "-m", "yilian.cli"]
    subprocess.run(yilian + ["hub", "migrate"], env=env, check=True, capture_output=True, cwd=ROOT)
    hub = subprocess.Popen(yilian + ["hub", "run"], env=env, cwd=ROOT, stdout=open(work / "hub.log", "w"),
                           stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{root}/health").status_code == 200:
                return hub, root
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"hub did not start; see {work / 'hub.log'}")


def analyze(args, work: Path) -> None:
    """Planner statistics as a store in service has them (autovacuum on PostgreSQL, the hub's
    sampled ANALYZE on SQLite), not those of tables filled a second ago."""
    from sqlalchemy import create_engine

    eng = create_engine(args.db_url or f"sqlite:///{work / 'data' / 'hub.db'}")
    with eng.begin() as c:
        c.exec_driver_sql("ANALYZE")
    eng.dispose()


def settle(client: httpx.Client) -> None:
    """Let the hub finish the work the load left behind (AuditEvents made from the audit journal
    in idle time, SQLite checkpoints): an AuditEvent search makes them all at once."""
    t0 = time.perf_counter()
    client.get("/AuditEvent", params={"_count": 1, "_summary": "count"})
    time.sleep(2)
    print(f"settled in {time.perf_counter() - t0:.1f} s")


def measure(call, n: int) -> list[float]:
    for _ in range(20):
        call()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def report(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p95 = ms[int(0.95 * (len(ms) - 1))]
    print(f"{name}: n={len(ms)}  median {statistics.median(ms):.1f} ms  p95 {p95:.1f} ms  max {ms[-1]:.1f} ms"
          f"  ({'meets' if p95 < 20 else 'MISSES'} p95 < 20 ms)")


def run(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="yilian-recognition-bench-"))
    hub = None
    try:
        hub, root = start_hub(args, work)
        admin = {"Authorization": f"Bearer {token('yilian/recognition-admin', None, 'bench-admin')}"}
        since = (date.today() - timedelta(days=3650)).isoformat()
        for kind, body in (("scopes", None), ("catalogue", None), ("codemaps", None), ("qualifications", qualifications())):
            r = httpx.post(f"{root}/recognition/reference/{kind}", params={"effective_from": since}, headers=admin,
                           content=body or (SAMPLES / f"{kind}.csv").read_bytes(), timeout=120)
            r.raise_for_status()
        loader = httpx.Client(base_url=f"{root}/fhir", timeout=600, headers={
            "Authorization": f"Bearer {token('system/*.cruds', 'H001', 'bench-loader')}"})
        pid = loader.post("/Patient", json={"resourceType": "Patient", "gender": "female"}).json()["id"]
        mine = history(pid, args.years)
        t0 = time.perf_counter()
        for i in range(0, len(mine), 500):
            loader.post("/", json=transaction(mine[i:i + 500])).raise_for_status()
        others = 0
        for k in range(0, args.others, 20):
            batch = []
            for j in range(k, min(k + 20, args.others)):
                other = loader.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()["id"]
                batch.extend(history(other, 1)[:24])
            loader.post("/", json=transaction(batch)).raise_for_status()
            others += len(batch)
        analyze(args, work)
        print(f"engine {args.db}; patient with {len(mine)} results over {args.years} years at 4 members; "
              f"{others} results of {args.others} other patients; loaded in {time.perf_counter() - t0:.1f} s")

        doctor = httpx.Client(base_url=f"{root}/fhir", timeout=60, headers={
            "Authorization": f"Bearer {token('user/Patient.rs user/Observation.rs user/DiagnosticReport.rs user/ImagingStudy.rs user/ServiceRequest.rs user/AuditEvent.rs', 'H002', 'bench-doctor')}"})
        answer = doctor.get(f"/Patient/{pid}/$recognizable", params={"item": "CAT-GLU"})
        answer.raise_for_status()
        cands = [p for p in answer.json()["parameter"] if p["name"] == "candidate"]
        decisions: dict[str, int] = {}
        for c in cands:
            d = next(x["valueCode"] for x in c["part"] if x["name"] == "decision")
            decisions[d] = decisions.get(d, 0) + 1
        total = next(x["valueInteger"] for x in answer.json()["parameter"][0]["part"] if x["name"] == "total")
        print(f"one answer: {len(cands)} candidates of {total} glucose results ({decisions}), {len(answer.content):,} bytes")

        def by_item():
            doctor.get(f"/Patient/{pid}/$recognizable", params={"item": "CAT-GLU"}).raise_for_status()

        order = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order",
                 "code": {"coding": [{"system": "urn:yilian:h002:lis", "code": "B-GLU-01"}]},
                 "subject": {"reference": f"Patient/{pid}"}}

        def by_order():
            doctor.post("/ServiceRequest/$recognizable", json=order).raise_for_status()

        def by_item_post():
            doctor.post(f"/Patient/{pid}/$recognizable", json={"resourceType": "Parameters", "parameter": [
                {"name": "item", "valueCode": "CAT-GLU"}]}).raise_for_status()

        settle(doctor)
        report("POST Patient/$recognizable (Parameters item=CAT-GLU)", measure(by_item_post, args.requests))
        report("ServiceRequest/$recognizable (draft order, local code)", measure(by_order, args.requests))
        report("GET Patient/$recognizable?item=CAT-GLU", measure(by_item, args.requests))
    finally:
        if hub is not None:
            hub.terminate()
            hub.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--years", type=int, default=5)
    ap.add_argument("--others", type=int, default=300)
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    args.db_url = None
    admin = None
    name = None
    if args.db == "postgres":
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"yilian_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        args.db_url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    try:
        run(args)
    finally:
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
