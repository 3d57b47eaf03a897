"""Benchmark :func:`hub.fhir.search.extract.extract_index` on the Synthea corpus.

Usage::

    python -m hub.fhir.search.bench_extract [GLOB] [--repeat N]

Loads every resource of the Synthea R4 transaction bundles (default
``/work/shared/corpus/fhir/synthea/*.json.bz2``), rewrites ``urn:uuid:``
references to ``Type/id`` as transaction processing would, then times the
extraction alone (best of ``--repeat`` passes, cyclic GC frozen so that the
benchmark does not measure collections of the loaded corpus) and prints the
average microseconds of the thread's CPU per resource overall and per resource
type (CPU, not wall clock: the machine may be shared).
"""

from __future__ import annotations

import argparse
import bz2
import gc
import glob
import time
from collections import Counter, defaultdict

import orjson

from hub.fhir.search.extract import compile_all, extract_index

DEFAULT_GLOB = "/work/shared/corpus/fhir/synthea/*.json.bz2"


def load_resources(pattern: str = DEFAULT_GLOB) -> list[dict]:
    """All entry resources of the matching bundles, ``urn:uuid:`` references resolved."""
    out: list[dict] = []
    for path in sorted(glob.glob(pattern)):
        with bz2.open(path) as fh:
            bundle = orjson.loads(fh.read())
        full = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in bundle.get("entry", []) if "fullUrl" in e and "id" in e["resource"]}
        resources = [e["resource"] for e in bundle.get("entry", [])]
        stack: list = list(resources)
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                ref = x.get("reference")
                if isinstance(ref, str) and ref in full:
                    x["reference"] = full[ref]
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)
        out.extend(resources)
    return out


def bench(resources: list[dict], repeat: int = 3) -> tuple[float, dict[str, float], Counter]:
    """Best-of-``repeat`` average CPU µs/resource, and µs/resource per type (last pass)."""
    compile_all()
    gc.collect()
    gc.freeze()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        for r in resources:
            extract_index(r)
        best = min(best, time.thread_time() - t0)
    per_type: dict[str, float] = defaultdict(float)
    counts: Counter = Counter()
    for r in resources:
        t0 = time.thread_time()
        extract_index(r)
        per_type[r["resourceType"]] += time.thread_time() - t0
        counts[r["resourceType"]] += 1
    gc.unfreeze()
    return best / len(resources) * 1e6, {k: v / counts[k] * 1e6 for k, v in per_type.items()}, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pattern", nargs="?", default=DEFAULT_GLOB)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    resources = load_resources(args.pattern)
    avg, per_type, counts = bench(resources, args.repeat)
    print(f"{len(resources)} resources: {avg:.1f} us of CPU/resource (best of {args.repeat})")
    for rt, v in sorted(per_type.items(), key=lambda kv: -kv[1] * counts[kv[0]]):
        print(f"  {rt:28s} {counts[rt]:6d}  {v:8.1f} us")


if __name__ == "__main__":
    main()
