"""``yilian load``: FHIR bundles and resources into the hub, with progress.

Files are read in name order (Synthea's ``0-hospitalInformation…`` and
``0-practitionerInformation…`` bundles sort first, as the patient bundles' conditional
references need). Each transaction bundle is one atomic transaction. Without ``--url`` the
loader writes through the hub's own FHIR service in this process (same validation, indexing
and audit as the REST API); with ``--url`` it posts to a running hub.
"""

from __future__ import annotations

import bz2
import gzip
import sys
import time
from pathlib import Path

import orjson

_SUFFIXES = (".json", ".json.bz2", ".json.gz", ".ndjson", ".ndjson.bz2", ".ndjson.gz")


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(_SUFFIXES))
        else:
            out.append(p)
    return out


def read_documents(path: Path) -> list[dict]:
    opener = bz2.open if path.name.endswith(".bz2") else gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if ".ndjson" in path.name:
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]
    return [orjson.loads(data)]


def _as_request(doc: dict):
    from hub.fhir.service import FhirRequest

    rtype = doc.get("resourceType")
    if rtype == "Bundle" and doc.get("type") in ("transaction", "batch"):
        return FhirRequest("POST", "", body=doc)
    if doc.get("id"):
        return FhirRequest("PUT", f"{rtype}/{doc['id']}", body=doc)
    return FhirRequest("POST", str(rtype), body=doc)


def _count_ok(status: int, body) -> tuple[int, int]:
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        entries = body.get("entry") or []
        ok = sum(1 for e in entries if str(e.get("response", {}).get("status", "")).startswith("2"))
        return ok, len(entries) - ok
    return (1, 0) if status < 300 else (0, 1)


def load_paths(settings, paths: list[str], *, url: str | None = None, token: str | None = None,
               concurrency: int = 1) -> int:
    files = _files(paths)
    if not files:
        print("nothing to load", file=sys.stderr)
        return 1
    if url:
        return _load_http(files, url, token)
    from hub.audit import AuditSink
    from hub.errors import HubError
    from hub.fhir.service import FhirService
    from hub.security.access import Access
    from hub.security.scopes import parse_scopes
    from hub.security.tokens import Principal
    from hub.storage.engine import make_engine, truncate_wal
    from hub.storage.migrate import upgrade

    engine = make_engine(settings.db_url)
    upgrade(engine)
    audit = AuditSink(engine) if settings.audit_enabled else None
    svc = FhirService(engine, base_url=settings.fhir_base, audit=audit)
    access = Access(Principal("yilian-load", "yilian-cli", parse_scopes("system/*.cruds"), "system/*.cruds"))
    t0 = time.perf_counter()
    total_ok = total_failed = failed_files = 0
    try:
        for n, path in enumerate(files, 1):
            for doc in read_documents(path):
                try:
                    resp = svc.handle(_as_request(doc), access)
                    ok, bad = _count_ok(resp.status, resp.body)
                except HubError as e:
                    ok, bad = 0, len(doc.get("entry") or [1])
                    failed_files += 1
                    print(f"\n{path.name}: {e.status} {e.diagnostics}", file=sys.stderr)
                total_ok += ok
                total_failed += bad
            el = time.perf_counter() - t0
            print(f"\r[{n}/{len(files)}] {total_ok} resources stored, {total_failed} failed, "
                  f"{total_ok / el:,.0f} resources/s", end="", file=sys.stderr, flush=True)
    finally:
        if audit:
            audit.close()
        truncate_wal(engine)
        engine.dispose()
    print(file=sys.stderr)
    print(f"loaded {total_ok} resources from {len(files)} files in {time.perf_counter() - t0:.1f} s"
          f" ({total_failed} failed)")
    return 1 if (total_failed or failed_files) else 0


def _load_http(files: list[Path], url: str, token: str | None) -> int:
    import httpx

    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    t0 = time.perf_counter()
    total_ok = total_failed = 0
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=300) as client:
        for n, path in enumerate(files, 1):
            for doc in read_documents(path):
                req = _as_request(doc)
                r = client.request(req.method, "/" + req.path if req.path else "", content=orjson.dumps(doc))
                ok, bad = _count_ok(r.status_code, r.json() if r.content else None)
                if r.status_code >= 300:
                    print(f"\n{path.name}: HTTP {r.status_code} {r.text[:300]}", file=sys.stderr)
                    bad = max(bad, 1)
                total_ok += ok
                total_failed += bad
            el = time.perf_counter() - t0
            print(f"\r[{n}/{len(files)}] {total_ok} resources stored, {total_failed} failed, "
                  f"{total_ok / el:,.0f} resources/s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"loaded {total_ok} resources from {len(files)} files in {time.perf_counter() - t0:.1f} s"
          f" ({total_failed} failed)")
    return 1 if total_failed else 0
