"""The recognition decision engine: rules R1–R8 of design/RECOGNITION.md, in order, pure.

Per candidate result, each scope of the item that contains both organizations is evaluated in
rule order; the first hard failure stops that scope with NOT_RECOGNIZABLE, a soft finding (R6
images unavailable, R8 clinical exception) makes it NEEDS_JUDGEMENT, a warning (R7 HR-mark
mismatch) is recorded without changing the decision. The best scope wins (RECOGNIZABLE over
NEEDS_JUDGEMENT over NOT_RECOGNIZABLE; then the scope that got furthest through the rules; then
the narrowest). R9 — the physician's decision — is written back by
:mod:`hub.recognition.decision`: the engine advises, it never blocks an order
(《医疗机构检查检验结果互认管理办法》: 以接诊医师判断为标准).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from hub.recognition.reference import CatalogueEntry, Qualification, Reference

RECOGNIZABLE = "RECOGNIZABLE"
NEEDS_JUDGEMENT = "NEEDS_JUDGEMENT"
NOT_RECOGNIZABLE = "NOT_RECOGNIZABLE"
RANK = {RECOGNIZABLE: 2, NEEDS_JUDGEMENT: 1, NOT_RECOGNIZABLE: 0}

# reason codes (design/RECOGNITION.md table)
NOT_IN_CATALOGUE = "NOT_IN_CATALOGUE"
OUT_OF_SCOPE = "OUT_OF_SCOPE"
QC_NOT_PASSED = "QC_NOT_PASSED"
QC_EXPIRED = "QC_EXPIRED"
NOT_FINAL = "NOT_FINAL"
TIME_EXPIRED = "TIME_EXPIRED"
IMAGES_UNAVAILABLE = "IMAGES_UNAVAILABLE"
HR_MARK_MISMATCH = "HR_MARK_MISMATCH"
CLINICAL_EXCEPTION = "CLINICAL_EXCEPTION"

#: R8 clinical contexts in which the physician must judge (管理办法 第二十六条 situations)
CLINICAL_EXCEPTIONS = {
    "emergency": "emergency or resuscitation",
    "pre-surgery": "before surgery",
    "pre-transfusion": "before transfusion",
    "forensic": "forensic or disability appraisal",
    "patient-request": "the patient asks for a repeat",
    "condition-changed": "the condition has changed",
    "rapidly-changing": "a rapidly changing analyte",
}

#: qualification validity dates are calendar days in China Standard Time (UTC+8)
CHINA_TIME = timezone(timedelta(hours=8))

#: R4: statuses of a result that can be recognized (Observation and DiagnosticReport status)
FINAL_STATUSES = frozenset({"final", "amended", "corrected", "appended"})


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    rule: str
    severity: str  # error (hard failure) | judgement (physician decides) | warning (data quality)
    text: str


@dataclass(slots=True)
class Candidate:
    """What the engine needs of one stored result (see :mod:`hub.recognition.results`)."""

    item: str | None  # catalogue item the result's code maps to (R1)
    performer: str | None  # alliance code of the performing organization
    status: str | None
    effective: datetime | None  # collection or exam time, timezone-aware
    images_available: bool | None = None  # None: not an imaging result
    claimed_marks: tuple[str, ...] = ()  # HR marks the source sent (labels or scope codes)


@dataclass(slots=True)
class Decision:
    decision: str
    reasons: list[Reason] = field(default_factory=list)
    scope: str | None = None
    label: str | None = None
    expires: datetime | None = None
    qualification: Qualification | None = None
    entry: CatalogueEntry | None = None
    reached: int = 0  # number of the last rule evaluated

    @property
    def codes(self) -> list[str]:
        return [r.code for r in self.reasons]


def _qualification(ref: Reference, c: Candidate, scope: str) -> tuple[Qualification | None, Reason | None]:
    """R3: a passed EQA for the item, in the scope or one containing it, covering the result time."""
    quals = [q for q in ref.qualifications.get((c.performer or "", c.item or ""), ())
             if q.scope in ref.ancestors_or_self(scope)]
    passed = [q for q in quals if q.passed]
    if not passed:
        text = (f"{c.performer} failed the EQA for {c.item}" if quals
                else f"{c.performer} is not a qualified performer of {c.item} in {scope}")
        return None, Reason(QC_NOT_PASSED, "R3", "error", text)
    if c.effective is None:
        return None, Reason(QC_EXPIRED, "R3", "error", "the result has no collection or exam time")
    day = c.effective.astimezone(CHINA_TIME).date()
    covering = [q for q in passed if q.valid_from <= day <= q.valid_to]
    if not covering:
        last = max(passed, key=lambda q: q.valid_to)
        return None, Reason(QC_EXPIRED, "R3", "error",
                            f"the EQA qualification of {c.performer} for {c.item} was not valid on {day} "
                            f"(latest valid {last.valid_from}..{last.valid_to})")
    return max(covering, key=lambda q: q.valid_to), None


def _evaluate(ref: Reference, c: Candidate, entry: CatalogueEntry, now: datetime,
              context: tuple[str, ...]) -> Decision:
    d = Decision(RECOGNIZABLE, scope=entry.scope, label=ref.label(entry.scope), entry=entry)
    if c.effective is not None:
        d.expires = c.effective + timedelta(days=entry.time_limit_days)

    def fail(reason: Reason, rule: int) -> Decision:
        d.decision, d.reached = NOT_RECOGNIZABLE, rule
        d.reasons.insert(0, reason)
        return d

    q, why = _qualification(ref, c, entry.scope)
    if why:
        return fail(why, 3)
    d.qualification = q
    if (c.status or "") not in FINAL_STATUSES:
        return fail(Reason(NOT_FINAL, "R4", "error", f"the result is {c.status or 'without status'}, not final"), 4)
    if d.expires is None or now > d.expires:
        age = (now - c.effective).days if c.effective else None
        return fail(Reason(TIME_EXPIRED, "R5", "error",
                           f"the result is {age} days old; {entry.item} is recognized for "
                           f"{entry.time_limit_days} days in {d.label}"), 5)
    d.reached = 5
    if entry.requires_images and not c.images_available:
        d.reasons.append(Reason(IMAGES_UNAVAILABLE, "R6", "judgement",
                                "the images of this examination are not retrievable from the hub"))
    d.reached = 6
    for ctx in context:
        d.reasons.append(Reason(f"{CLINICAL_EXCEPTION}:{ctx}", "R8", "judgement",
                                CLINICAL_EXCEPTIONS.get(ctx, ctx)))
    d.reached = 8
    if any(r.severity == "judgement" for r in d.reasons):
        d.decision = NEEDS_JUDGEMENT
    return d


def marked_scopes(ref: Reference, c: Candidate) -> list[tuple[CatalogueEntry, Qualification]]:
    """The scopes whose HR mark the result deserves whoever asks: R1 catalogue item, the
    performer inside the scope (R2), qualified at the result time (R3), final (R4)."""
    if not c.item or (c.status or "") not in FINAL_STATUSES:
        return []
    out = []
    for entry in ref.catalogue.get(c.item, ()):
        if c.performer in ref.members(entry.scope):
            q, why = _qualification(ref, c, entry.scope)
            if q is not None:
                out.append((entry, q))
    return out


def decide(ref: Reference, c: Candidate, requester: str | None, now: datetime,
           context: tuple[str, ...] = ()) -> Decision:
    """The recognition decision for one candidate result asked about by ``requester``."""
    unknown = [x for x in context if x not in CLINICAL_EXCEPTIONS]
    if unknown:
        raise ValueError(f"unknown clinical context {unknown[0]!r}")
    # R1
    entries = ref.catalogue.get(c.item or "", [])
    if not entries:
        return Decision(NOT_RECOGNIZABLE, [Reason(NOT_IN_CATALOGUE, "R1", "error",
                                                  f"{c.item or 'the item'} is not in the regional catalogue")],
                        reached=1)
    # R2
    in_scope = [e for e in entries if c.performer and requester
                and c.performer in ref.members(e.scope) and requester in ref.members(e.scope)]
    if not in_scope:
        who = c.performer or "an unknown organization"
        return Decision(NOT_RECOGNIZABLE, [Reason(OUT_OF_SCOPE, "R2", "error",
                                                  f"no scope of {c.item} contains both {who} and {requester}")],
                        reached=2)
    decisions = [_evaluate(ref, c, e, now, context) for e in in_scope]
    best = max(decisions, key=lambda d: (RANK[d.decision], d.reached, ref.depth(d.scope or "")))
    # R7: a mark the source sent must be one the result deserves (a data-quality warning)
    if c.claimed_marks:
        deserved = set()
        for entry, _ in marked_scopes(ref, c):
            deserved |= {entry.scope, ref.label(entry.scope)}
        wrong = [m for m in c.claimed_marks if m not in deserved]
        if wrong:
            best.reasons.append(Reason(HR_MARK_MISMATCH, "R7", "warning",
                                       f"the source marked the result {', '.join(wrong)}, which the reference "
                                       "data does not support"))
            # keep the reasons in rule order
            best.reasons.sort(key=lambda r: r.rule)
    return best
