"""Measure the MPI matcher: precision / recall / F1 of automatic links, review-queue rate,
throughput, on a synthetic Chinese population (bench.mpi.population) and on FEBRL4.

Simulates the hub: records arrive one by one; each is normalized, its blocking keys are
looked up in an in-memory index (dict key → record ids, standing in for the database's
indexed key table), it is compared with every candidate, and then indexed.

Pairwise metrics (against ground truth, over all record pairs):

- ``direct``: a pair counts as auto-linked when the matcher said LINK for that pair;
- ``closure``: pairs implied by the transitive closure of LINK decisions (what the MPI's
  person clusters end up as);
- ``link+review``: recall if every REVIEW were confirmed by a person.

The review-queue rate is the share of incoming records whose best outcome is REVIEW.

    python -m bench.mpi.evaluate --people 20000          # synthetic
    python -m bench.mpi.evaluate --febrl                 # FEBRL4 only
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from hub.mpi import Outcome, PatientMatcher, Thresholds, blocking_keys, from_fhir_patient

from .population import NoiseConfig, generate_population


def scaled_noise(factor: float) -> NoiseConfig:
    """Every error rate of the default NoiseConfig multiplied by ``factor`` (capped at 0.6)."""
    base = NoiseConfig()
    return dataclasses.replace(base, **{f.name: min(0.6, getattr(base, f.name) * factor)
                                        for f in dataclasses.fields(base)})


@dataclass
class Metrics:
    records: int
    persons: int
    true_pairs: int
    compared_pairs: int
    link_pairs: int
    link_true: int
    review_pairs: int
    review_true: int
    closure_pairs: int
    closure_true: int
    review_records: int
    seconds: float
    false_links: list
    match_seconds: float = 0.0
    normalize_seconds: float = 0.0

    @staticmethod
    def _prf(tp: int, predicted: int, actual: int) -> tuple[float, float, float]:
        p = tp / predicted if predicted else 1.0
        r = tp / actual if actual else 1.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return p, r, f

    def report(self) -> str:
        d = self._prf(self.link_true, self.link_pairs, self.true_pairs)
        c = self._prf(self.closure_true, self.closure_pairs, self.true_pairs)
        lr = (self.link_true + self.review_true) / self.true_pairs if self.true_pairs else 1.0
        lines = [
            f"records={self.records} persons={self.persons} true pairs={self.true_pairs} "
            f"compared pairs={self.compared_pairs}",
            f"direct  auto-link: precision={d[0]:.5f} recall={d[1]:.5f} F1={d[2]:.5f} "
            f"(links={self.link_pairs}, false={self.link_pairs - self.link_true})",
            f"closure auto-link: precision={c[0]:.5f} recall={c[1]:.5f} F1={c[2]:.5f} "
            f"(implied pairs={self.closure_pairs}, false={self.closure_pairs - self.closure_true})",
            f"recall counting REVIEW as linked: {lr:.5f}; review pairs={self.review_pairs} "
            f"(true={self.review_true})",
            f"review-queue rate: {self.review_records / self.records:.4f} of incoming records",
            f"throughput: {self.compared_pairs / self.seconds:,.0f} comparisons/s, "
            f"{self.records / self.seconds:,.0f} records/s end to end ({self.seconds:.1f} s); "
            f"matcher alone {self.compared_pairs / max(self.match_seconds, 1e-9):,.0f} matches/s, "
            f"normalization {self.records / max(self.normalize_seconds, 1e-9):,.0f} records/s (one core)",
        ]
        return "\n".join(lines)

    @property
    def precision(self) -> float:
        return self._prf(self.link_true, self.link_pairs, self.true_pairs)[0]

    @property
    def recall(self) -> float:
        return self._prf(self.link_true, self.link_pairs, self.true_pairs)[1]


def _closure_pairs(n_records: int, links: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n_records))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    clusters: dict[int, list[int]] = defaultdict(list)
    for i in range(n_records):
        clusters[find(i)].append(i)
    return [c for c in clusters.values() if len(c) > 1]


def evaluate_synthetic(people: int = 5000, seed: int = 7, matcher: PatientMatcher | None = None,
                       keep_false: int = 20, noise: NoiseConfig | None = None) -> Metrics:
    """Generate a population and run the matcher over it as records arrive."""
    matcher = matcher or PatientMatcher()
    recs = generate_population(people, seed, noise)
    truth = [r.person_id for r in recs]
    t0 = time.perf_counter()
    demos = [from_fhir_patient(r.patient) for r in recs]
    normalize_seconds = time.perf_counter() - t0
    match_seconds = 0.0
    index: dict[str, list[int]] = defaultdict(list)
    compared = link_pairs = link_true = review_pairs = review_true = review_records = 0
    links: list[tuple[int, int]] = []
    false_links: list = []
    for i, demo in enumerate(demos):
        keys = blocking_keys(demo)
        cands: set[int] = set()
        for k in keys:
            cands.update(index[k])
        best = Outcome.NEW
        for j in cands:
            tm = time.perf_counter()
            res = matcher.match(demo, demos[j])
            match_seconds += time.perf_counter() - tm
            compared += 1
            same = truth[i] == truth[j]
            if res.outcome is Outcome.LINK:
                link_pairs += 1
                link_true += same
                links.append((i, j))
                best = Outcome.LINK
                if not same and len(false_links) < keep_false:
                    false_links.append((recs[i].patient, recs[j].patient, res.explain()))
            elif res.outcome is Outcome.REVIEW:
                review_pairs += 1
                review_true += same
                if best is Outcome.NEW:
                    best = Outcome.REVIEW
        review_records += best is Outcome.REVIEW
        for k in keys:
            index[k].append(i)
    seconds = time.perf_counter() - t0
    by_person: dict[str, int] = defaultdict(int)
    for p in truth:
        by_person[p] += 1
    true_pairs = sum(n * (n - 1) // 2 for n in by_person.values())
    closure_pairs = closure_true = 0
    for cluster in _closure_pairs(len(recs), links):
        for a, b in combinations(cluster, 2):
            closure_pairs += 1
            closure_true += truth[a] == truth[b]
    return Metrics(len(recs), len(by_person), true_pairs, compared, link_pairs, link_true,
                   review_pairs, review_true, closure_pairs, closure_true, review_records,
                   seconds, false_links, match_seconds, normalize_seconds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evaluate the MPI matcher")
    ap.add_argument("--people", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--link", type=float, default=None, help="link threshold")
    ap.add_argument("--review", type=float, default=None, help="review threshold")
    ap.add_argument("--noise-scale", type=float, default=1.0, help="multiply every error rate")
    ap.add_argument("--febrl", action="store_true", help="FEBRL4 only")
    ap.add_argument("--show-false", type=int, default=0, help="print up to N false links")
    args = ap.parse_args(argv)
    if not args.febrl:
        t = Thresholds()
        t = Thresholds(args.link if args.link is not None else t.link,
                       args.review if args.review is not None else t.review)
        m = evaluate_synthetic(args.people, args.seed, PatientMatcher(thresholds=t),
                               noise=scaled_noise(args.noise_scale))
        print(f"== synthetic Chinese population (people={args.people}, seed={args.seed}, "
              f"noise x{args.noise_scale}, "
              f"thresholds link={t.link} review={t.review})")
        print(m.report())
        for a, b, why in m.false_links[: args.show_false]:
            print("FALSE LINK:", why)
            print("   ", a)
            print("   ", b)
    from .febrl import evaluate_febrl4
    print("== FEBRL4")
    print(evaluate_febrl4().report())


if __name__ == "__main__":
    main()
