"""Fellegi–Sunter scoring and the patient match decision.

:class:`FellegiSunter` is field-agnostic: a model maps each field and agreement level to an
(m, u) pair — m = P(level | same person), u = P(level | different people) — and a pair's
score is the sum of log2(m/u) over its comparison vector (Fellegi & Sunter 1969). Models can
be written as configuration, estimated from labelled pairs (:meth:`FellegiSunter.estimate`)
or from unlabelled candidate pairs by EM (:meth:`FellegiSunter.estimate_em`).

:class:`PatientMatcher` is the Chinese patient configuration: deterministic rules first,
then the score, then guards against the classic false links, then thresholds → LINK /
REVIEW / NEW, with an explanation. Linking wrongly is worse than not linking, so every guard
only ever lowers an outcome.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Mapping, Sequence

from .compare import DISAGREE, EXACT, MISSING, FieldComparison, compare_demographics
from .normalize import Demographics

#: field -> level -> (m, u)
MUTable = dict[str, dict[str, tuple[float, float]]]


class Outcome(str, Enum):
    LINK = "link"
    REVIEW = "review"
    NEW = "new"


_RANK = {Outcome.NEW: 0, Outcome.REVIEW: 1, Outcome.LINK: 2}


def _cap(outcome: Outcome, ceiling: Outcome) -> Outcome:
    return outcome if _RANK[outcome] <= _RANK[ceiling] else ceiling


# --------------------------------------------------------------------------- FS model

@dataclass
class FellegiSunter:
    """Log-likelihood-ratio weights from (m, u) probabilities per field and level.

    A level absent from the table, and the level ``missing``, weigh 0. A comparison carrying
    its own ``u`` (frequency-adjusted agreement) uses it instead of the table's.
    """

    mu: MUTable
    #: weights are clamped to ±max_weight so one field can never decide alone
    max_weight: float = 30.0

    def __post_init__(self) -> None:
        # precomputed table weights; treat ``mu`` as read-only after construction
        self._table = {f: {lvl: self._log_ratio(m, u) for lvl, (m, u) in levels.items()}
                       for f, levels in self.mu.items()}

    def _log_ratio(self, m: float, u: float) -> float:
        w = math.log2(max(m, 1e-12) / max(u, 1e-12))
        return max(-self.max_weight, min(self.max_weight, w))

    def weight(self, comp: FieldComparison) -> float:
        if comp.level == MISSING:
            return 0.0
        if comp.u is not None:
            mu = self.mu.get(comp.field, {}).get(comp.level)
            return 0.0 if mu is None else self._log_ratio(mu[0], comp.u)
        return self._table.get(comp.field, {}).get(comp.level, 0.0)

    def weights(self, vector: Mapping[str, FieldComparison]) -> dict[str, float]:
        return {name: self.weight(c) for name, c in vector.items()}

    def score(self, vector: Mapping[str, FieldComparison]) -> float:
        return sum(self.weight(c) for c in vector.values())

    # estimation ---------------------------------------------------------------------

    @classmethod
    def estimate(cls, vectors: Iterable[Mapping[str, FieldComparison]], labels: Iterable[bool],
                 *, prior: MUTable | None = None, smoothing: float = 1.0, **kw) -> "FellegiSunter":
        """m/u from labelled pairs: relative level frequencies among matches (m) and
        non-matches (u), with add-``smoothing`` counts; ``missing`` is excluded (it weighs 0).
        Levels never seen keep the ``prior``'s values when given."""
        counts = {True: defaultdict(Counter), False: defaultdict(Counter)}
        for vec, label in zip(vectors, labels):
            for name, comp in vec.items():
                if comp.level != MISSING:
                    counts[bool(label)][name][comp.level] += 1
        mu: MUTable = {k: dict(v) for k, v in (prior or {}).items()}
        names = set(counts[True]) | set(counts[False])
        for name in names:
            levels = set(counts[True][name]) | set(counts[False][name]) | set((prior or {}).get(name, {}))
            tm = sum(counts[True][name].values()) + smoothing * len(levels)
            tu = sum(counts[False][name].values()) + smoothing * len(levels)
            mu.setdefault(name, {})
            for lvl in levels:
                mu[name][lvl] = ((counts[True][name][lvl] + smoothing) / tm,
                                 (counts[False][name][lvl] + smoothing) / tu)
        return cls(mu, **kw)

    @classmethod
    def estimate_em(cls, vectors: Sequence[Mapping[str, FieldComparison]], initial: MUTable, *,
                    match_share: float = 0.1, iterations: int = 50, tol: float = 1e-6,
                    **kw) -> tuple["FellegiSunter", float]:
        """Unsupervised m/u by expectation–maximisation over candidate pairs (Winkler 1988),
        assuming conditional independence of fields. Starts from ``initial``; returns the
        model and the estimated share of matches among the pairs. Only fields and levels
        present in ``initial`` are estimated."""
        keys = [tuple(sorted((n, c.level) for n, c in v.items() if c.level != MISSING and n in initial))
                for v in vectors]
        patterns = Counter(keys)
        mu = {f: dict(levels) for f, levels in initial.items()}
        p = match_share
        for _ in range(iterations):
            cm: dict[str, Counter] = defaultdict(Counter)
            cu: dict[str, Counter] = defaultdict(Counter)
            total_g = 0.0
            n = 0
            for pattern, count in patterns.items():
                lm = math.log(p)
                lu = math.log(1 - p)
                for f, lvl in pattern:
                    m, u = mu[f].get(lvl, (1e-6, 1e-6))
                    lm += math.log(max(m, 1e-12))
                    lu += math.log(max(u, 1e-12))
                g = 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, lu - lm))))
                total_g += g * count
                n += count
                for f, lvl in pattern:
                    cm[f][lvl] += g * count
                    cu[f][lvl] += (1 - g) * count
            new_p = min(max(total_g / n, 1e-6), 1 - 1e-6)
            delta = abs(new_p - p)
            p = new_p
            for f in mu:
                sm, su = sum(cm[f].values()), sum(cu[f].values())
                for lvl in mu[f]:
                    m = (cm[f][lvl] + 1e-3) / (sm + 1e-3 * len(mu[f]))
                    u = (cu[f][lvl] + 1e-3) / (su + 1e-3 * len(mu[f]))
                    delta = max(delta, abs(m - mu[f][lvl][0]))
                    mu[f][lvl] = (m, u)
            if delta < tol:
                break
        return cls(mu, **kw), p


# --------------------------------------------------------------------------- defaults

#: Default (m, u) per field and level for Chinese patient records. m values are error rates
#: of registration data (typo, swap, missing …); u values are chance agreement between two
#: different people, inflated for household fields (family members share phones and
#: addresses, so that agreement alone must never be able to link).
DEFAULT_MU: MUTable = {
    "surname": {EXACT: (0.95, 0.01), "homophone": (0.012, 0.002), "similar": (0.008, 0.002),
                "typo": (0.005, 0.01), DISAGREE: (0.02, 0.9)},
    "given": {EXACT: (0.92, 0.0004), "homophone": (0.03, 0.001), "similar": (0.02, 0.0005),
              "typo": (0.01, 0.005), DISAGREE: (0.02, 0.99)},
    "sex": {EXACT: (0.98, 0.5), DISAGREE: (0.005, 0.5)},
    "birth_date": {EXACT: (0.94, 5e-5), "swap": (0.015, 5e-5), "near": (0.025, 3e-3),
                   DISAGREE: (0.01, 0.999)},
    "resident_id": {EXACT: (0.8, 1e-8), "near": (0.02, 1e-6), DISAGREE: (0.002, 0.99)},
    "phone": {EXACT: (0.6, 0.001), DISAGREE: (0.35, 0.98)},
    "address": {EXACT: (0.55, 0.001), "similar": (0.2, 0.002), "district": (0.1, 0.05),
                DISAGREE: (0.15, 0.95)},
    "identifier": {EXACT: (0.3, 1e-7), DISAGREE: (0.02, 0.9)},
}


@dataclass(frozen=True)
class Thresholds:
    """score ≥ link → LINK; ≥ review → REVIEW; else NEW.

    The defaults were set on synthetic populations of 10⁴–10⁵ people. The chance that some
    *other* person agrees on name and birth date grows with the index, so for larger indexes
    raise the link threshold by about log2 of the growth (see :meth:`for_population`).
    """

    link: float = 22.0
    review: float = 10.0

    @classmethod
    def for_population(cls, persons: int, *, reference: int = 100_000,
                       link: float = 22.0, review: float = 10.0) -> "Thresholds":
        """Thresholds scaled to an index of ``persons`` people: + log2(persons / reference)
        on both thresholds (never below the defaults)."""
        extra = max(0.0, math.log2(max(persons, 1) / reference))
        return cls(link + extra, review + extra)


# --------------------------------------------------------------------------- decision

@dataclass
class MatchResult:
    """Outcome of comparing two records, with the evidence behind it."""

    outcome: Outcome
    score: float
    rule: str | None = None                     # deterministic rule that decided, if any
    guards: list[str] = field(default_factory=list)
    levels: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def explain(self) -> str:
        parts = [f"{self.outcome.value} score={self.score:.1f}"]
        if self.rule:
            parts.append(f"rule={self.rule}")
        if self.guards:
            parts.append("guards=" + ",".join(self.guards))
        parts.append(" ".join(f"{k}:{v}({self.weights.get(k, 0):+.1f})" for k, v in self.levels.items()
                              if v != MISSING))
        return "; ".join(parts)


_NAME_AGREE = {EXACT, "homophone"}
_NAME_CLOSE = {EXACT, "homophone", "similar"}


class PatientMatcher:
    """Decide whether two Chinese patient records are the same person.

    Order of evaluation (each step can only lower what follows from the previous):

    1. deterministic rules: the same usable resident ID (valid GB 11643 number consistent
       with the record's birth date and sex) → LINK; the same identifier in the same system
       → LINK; unless the records contradict each other (then REVIEW);
    2. otherwise the Fellegi–Sunter score against the thresholds; a resident ID that is only
       ``near`` (one digit from an invalid number) counts toward REVIEW, never toward LINK;
    3. guards: newborn placeholder vs named person, twins, household members (siblings),
       one-character sibling names, namesakes, different birth orders, minimum evidence.
    """

    def __init__(self, model: FellegiSunter | None = None, thresholds: Thresholds | None = None):
        self.model = model or FellegiSunter(DEFAULT_MU)
        self.thresholds = thresholds or Thresholds()

    # public ---------------------------------------------------------------------------

    def compare(self, a: Demographics, b: Demographics) -> dict[str, FieldComparison]:
        return compare_demographics(a, b)

    def match(self, a: Demographics, b: Demographics) -> MatchResult:
        vector = compare_demographics(a, b)
        weights = self.model.weights(vector)
        levels = {k: c.level for k, c in vector.items()}
        score = sum(weights.values())
        result = MatchResult(Outcome.NEW, score, levels=levels, weights=weights)

        rule = self._deterministic(a, b, levels)
        if rule is not None:
            result.rule, result.outcome = rule
            return result

        link_score = score - (weights["resident_id"] if levels["resident_id"] == "near" else 0.0)
        if link_score >= self.thresholds.link:
            outcome = Outcome.LINK
        elif score >= self.thresholds.review:
            outcome = Outcome.REVIEW
        else:
            outcome = Outcome.NEW
        for name, ceiling in self._guards(a, b, levels):
            if _RANK[ceiling] < _RANK[outcome]:
                result.guards.append(name)
                outcome = ceiling
        result.outcome = outcome
        return result

    # steps ----------------------------------------------------------------------------

    @staticmethod
    def _contradiction(a: Demographics, b: Demographics, levels: dict[str, str]) -> str | None:
        if levels["sex"] == DISAGREE:
            return "sex"
        if levels["birth_date"] == DISAGREE:
            return "birth_date"
        if levels["surname"] == DISAGREE or levels["given"] == DISAGREE:
            return "name"
        if levels["resident_id"] == DISAGREE:
            return "resident_id"
        if a.is_newborn_placeholder != b.is_newborn_placeholder:
            return "newborn"
        if a.birth_order and b.birth_order and a.birth_order != b.birth_order:
            return "birth_order"
        return None

    def _deterministic(self, a: Demographics, b: Demographics,
                       levels: dict[str, str]) -> tuple[str, Outcome] | None:
        if levels["resident_id"] == EXACT:
            why = self._contradiction(a, b, levels)
            return ("resident_id", Outcome.LINK) if why is None else (f"resident_id-contradicted-by-{why}", Outcome.REVIEW)
        if levels["identifier"] == EXACT:
            why = self._contradiction(a, b, levels)
            return ("identifier", Outcome.LINK) if why is None else (f"identifier-contradicted-by-{why}", Outcome.REVIEW)
        return None

    @staticmethod
    def _guards(a: Demographics, b: Demographics, levels: dict[str, str]) -> Iterable[tuple[str, Outcome]]:
        s, g, dob = levels["surname"], levels["given"], levels["birth_date"]
        household = levels["phone"] == EXACT or levels["address"] in (EXACT, "similar")

        # newborn registered under the mother's name vs a named person (mother or later self)
        if a.is_newborn_placeholder != b.is_newborn_placeholder:
            yield "newborn-placeholder", (Outcome.REVIEW if dob == EXACT else Outcome.NEW)
        if a.is_newborn_placeholder and b.is_newborn_placeholder:
            if a.newborn_order != b.newborn_order:
                yield "newborn-birth-order", Outcome.NEW
            if (a.multiple_birth or b.multiple_birth) and not (a.newborn_order and b.newborn_order):
                yield "newborn-multiple-birth", Outcome.REVIEW

        # different birth orders of a multiple birth
        if a.birth_order and b.birth_order and a.birth_order != b.birth_order:
            yield "birth-order", Outcome.NEW

        # two different valid resident IDs, each consistent with its record: two people
        if levels["resident_id"] == DISAGREE:
            yield "different-resident-ids", Outcome.REVIEW

        surname_agree = s in _NAME_AGREE
        # a record of a multiple birth links automatically only on the very same given name
        if (a.multiple_birth or b.multiple_birth) and g != EXACT:
            yield "multiple-birth", Outcome.REVIEW

        # twins: same birth date, same surname, same household, different given names
        if surname_agree and dob in (EXACT, "swap") and g not in (_NAME_AGREE | {MISSING}):
            if household or a.multiple_birth or b.multiple_birth:
                yield "twins", (Outcome.REVIEW if g == "similar" else Outcome.NEW)

        # siblings / household members: same surname and household, given names not the same
        if surname_agree and household and g not in (_NAME_AGREE | {MISSING}):
            yield "household-member", Outcome.REVIEW

        # siblings named alike: one character different and not a plausible typo
        if surname_agree and a.given and b.given and len(a.given) == len(b.given) >= 2 and g == DISAGREE:
            if sum(x != y for x, y in zip(a.given, b.given)) == 1:
                yield "sibling-one-character", Outcome.REVIEW

        # namesakes: the same name but the birth dates disagree, or differ by one digit with
        # nothing else (phone, address, an ID one digit off) to say it is a typo
        if s in _NAME_AGREE and g in _NAME_AGREE:
            if dob == DISAGREE:
                yield "namesake", Outcome.REVIEW
            elif dob == "near" and not (household or levels["resident_id"] == "near"):
                yield "namesake-near-birth-date", Outcome.REVIEW

        # minimum evidence for an automatic link: a name and a birth date that agree, or
        # without a birth date, the same full name and the same phone or street address
        names_close = s in _NAME_CLOSE and g in _NAME_CLOSE
        if not (names_close and dob in (EXACT, "swap", "near")):
            if not (dob == MISSING and s == EXACT and g in _NAME_AGREE and levels["sex"] != DISAGREE
                    and (levels["phone"] == EXACT or levels["address"] == EXACT)):
                if not (a.is_newborn_placeholder and b.is_newborn_placeholder and s == EXACT and dob == EXACT):
                    yield "minimum-evidence", Outcome.REVIEW


def decide(a: Demographics, b: Demographics, matcher: PatientMatcher | None = None) -> MatchResult:
    """Convenience: compare two records with the default matcher."""
    return (matcher or _DEFAULT_MATCHER).match(a, b)


_DEFAULT_MATCHER = PatientMatcher()
