"""Every message of the shared HL7 v2 corpus through ``POST /ingest/messages``, on both engines.

Each one ends normalized (its resources stored and readable through the FHIR API), or rejected /
unsupported with a specific reason (an HL7 table 0357 code and a text); none ends ``failed``
(an internal error) and none is left ``received``. The counts per status are printed.
"""

from __future__ import annotations

import collections
import csv

import pytest

from ..adapters.conftest import CORPUS_DIR
from .conftest import item, post

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CORPUS_DIR / "index.tsv").is_file(), reason=f"HL7 v2 corpus not found at {CORPUS_DIR}"),
]


def _paths() -> list[str]:
    with open(CORPUS_DIR / "index.tsv", encoding="utf-8", newline="") as fh:
        return [row["path"] for row in csv.DictReader(fh, delimiter="\t")]


def test_every_corpus_message_is_normalized_or_rejected_with_a_reason(hub, fep, admin, capsys):
    paths = _paths()
    assert len(paths) == 567
    results = {}
    for i in range(0, len(paths), 50):
        chunk = paths[i:i + 50]
        for path, res in zip(chunk, post(fep, *[item((CORPUS_DIR / p).read_bytes(), item_id=f"corpus-{i + k}")
                                                for k, p in enumerate(chunk)])):
            results[path] = res
    counts = collections.Counter(r["status"] for r in results.values())
    problems = []
    readable = stale = 0
    for path, r in results.items():
        if r["status"] in ("failed", "received"):
            problems.append(f"{path}: {r['status']}: {r['error']}")
        elif r["status"] in ("rejected", "unsupported"):
            if not r["error"] or not r["error"].startswith("HL7 ") or r["ack_code"] not in ("AE", "AR"):
                problems.append(f"{path}: {r['status']} without a specific reason: {r['error']!r}")
        elif r["status"] == "normalized":
            if r["ack_code"] != "AA":
                problems.append(f"{path}: normalized with ACK {r['ack_code']}")
            view = admin.get(f"/ingest/messages/{r['message_id']}").json()
            if not view["resources"] and not view["skipped_stale"]:
                problems.append(f"{path}: normalized without resources")
            stale += bool(view["skipped_stale"])
            for ref in view["resources"]:
                got = hub_get(hub, ref)
                if got != 200:
                    problems.append(f"{path}: {ref} not readable ({got})")
                readable += 1
    reasons = collections.Counter((r["status"], (r["error"] or "").split(":")[0]) for r in results.values()
                                  if r["status"] in ("rejected", "unsupported"))
    with capsys.disabled():
        print(f"\ningest corpus walk: {dict(sorted(counts.items()))}; {readable} resources read back; "
              f"duplicates {sum(r['duplicate'] for r in results.values())}; {stale} with entries skipped as stale")
        for (status, reason), n in reasons.most_common(12):
            print(f"  {status:11} {n:4}  {reason}")
    assert not problems, "\n".join(problems[:40])


_fhir_clients: dict = {}


def hub_get(hub, ref: str) -> int:
    c = _fhir_clients.get(id(hub))
    if c is None:
        c = _fhir_clients[id(hub)] = hub.client("system/*.rs")
    return c.get(ref).status_code
