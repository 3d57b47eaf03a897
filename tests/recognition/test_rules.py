"""Rules R1–R8 of design/RECOGNITION.md, each reason code and their order (pure engine)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from hub.recognition.rules import (
    NEEDS_JUDGEMENT,
    NOT_RECOGNIZABLE,
    RECOGNIZABLE,
    Candidate,
    decide,
    marked_scopes,
)

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=timezone.utc)


def cand(**kw) -> Candidate:
    base = dict(item="CAT-GLU", performer="H001", status="final", effective=NOW - timedelta(days=3))
    return Candidate(**{**base, **kw})


def test_recognizable_with_scope_label_expiry_and_evidence(ref):
    d = decide(ref, cand(), "H002", NOW)
    assert d.decision == RECOGNIZABLE and d.reasons == []
    # both in alliance WH-A1 ⊂ WH: the WH catalogue row (30 days) beats the HB one (14 days)
    assert (d.scope, d.label) == ("WH", "武汉HR")
    assert d.expires == NOW - timedelta(days=3) + timedelta(days=30)
    assert d.qualification.organization == "H001" and d.qualification.scope == "HB"  # HB EQA covers WH


def test_r1_not_in_catalogue(ref):
    d = decide(ref, cand(item="CAT-NOPE"), "H002", NOW)
    assert (d.decision, d.codes) == (NOT_RECOGNIZABLE, ["NOT_IN_CATALOGUE"])
    assert decide(ref, cand(item=None), "H002", NOW).codes == ["NOT_IN_CATALOGUE"]


def test_r2_out_of_scope(ref):
    # CAT-HGB is listed for Wuhan only; H004 is in Yichang
    d = decide(ref, cand(item="CAT-HGB"), "H004", NOW)
    assert (d.decision, d.codes) == (NOT_RECOGNIZABLE, ["OUT_OF_SCOPE"])
    assert decide(ref, cand(performer=None), "H002", NOW).codes == ["OUT_OF_SCOPE"]
    assert decide(ref, cand(), "H999", NOW).codes == ["OUT_OF_SCOPE"]


def test_r2_scope_picks_the_row_for_the_requester(ref):
    # H001 → H004 share only the province: the HB row (14 days) applies
    d = decide(ref, cand(effective=NOW - timedelta(days=20)), "H004", NOW)
    assert (d.decision, d.codes, d.scope) == (NOT_RECOGNIZABLE, ["TIME_EXPIRED"], "HB")
    d = decide(ref, cand(effective=NOW - timedelta(days=20)), "H002", NOW)
    assert (d.decision, d.scope, d.label) == (RECOGNIZABLE, "WH", "武汉HR")


def test_r3_qc_not_passed(ref):
    # H003 failed its EQA round for glucose
    d = decide(ref, cand(performer="H003"), "H002", NOW)
    assert (d.decision, d.codes) == (NOT_RECOGNIZABLE, ["QC_NOT_PASSED"])
    # H002 is qualified by the city only: not for the province-wide row a Yichang doctor needs
    assert decide(ref, cand(performer="H002"), "H004", NOW).codes == ["QC_NOT_PASSED"]


def test_r3_qc_expired(ref):
    d = decide(ref, cand(effective=datetime(2025, 12, 20, tzinfo=timezone.utc)), "H002",
               datetime(2026, 1, 5, tzinfo=timezone.utc))
    assert (d.decision, d.codes) == (NOT_RECOGNIZABLE, ["QC_EXPIRED"])
    assert "2025-12-20" in d.reasons[0].text


def test_r3_validity_is_a_china_calendar_day(ref):
    # 2025-12-31T17:00Z is 2026-01-01 01:00 in China: inside the 2026 validity
    d = decide(ref, cand(effective=datetime(2025, 12, 31, 17, 0, tzinfo=timezone.utc)), "H002",
               datetime(2026, 1, 5, tzinfo=timezone.utc))
    assert d.decision == RECOGNIZABLE


@pytest.mark.parametrize("status", ["preliminary", "registered", "cancelled", "entered-in-error", None])
def test_r4_not_final(ref, status):
    d = decide(ref, cand(status=status), "H002", NOW)
    assert (d.decision, d.codes) == (NOT_RECOGNIZABLE, ["NOT_FINAL"])


@pytest.mark.parametrize("status", ["final", "amended", "corrected"])
def test_r4_final_statuses(ref, status):
    assert decide(ref, cand(status=status), "H002", NOW).decision == RECOGNIZABLE


def test_r5_time_expired_at_the_limit(ref):
    inside = decide(ref, cand(effective=NOW - timedelta(days=30)), "H002", NOW)
    outside = decide(ref, cand(effective=NOW - timedelta(days=30, seconds=1)), "H002", NOW)
    assert inside.decision == RECOGNIZABLE
    assert (outside.decision, outside.codes) == (NOT_RECOGNIZABLE, ["TIME_EXPIRED"])
    assert outside.expires == NOW - timedelta(seconds=1)


def test_r6_images_unavailable_needs_judgement(ref):
    ct = dict(item="CAT-CT-CHEST", effective=NOW - timedelta(days=40))
    d = decide(ref, cand(images_available=False, **ct), "H002", NOW)
    assert (d.decision, d.codes) == (NEEDS_JUDGEMENT, ["IMAGES_UNAVAILABLE"])
    assert decide(ref, cand(images_available=True, **ct), "H002", NOW).decision == RECOGNIZABLE


def test_r7_hr_mark_mismatch_is_a_warning(ref):
    d = decide(ref, cand(claimed_marks=("鄂HR",)), "H002", NOW)
    assert (d.decision, d.codes) == (RECOGNIZABLE, [])  # H001 deserves 鄂HR for glucose
    d = decide(ref, cand(performer="H003", claimed_marks=("武汉HR",)), "H002", NOW)
    assert (d.decision, d.codes) == (NOT_RECOGNIZABLE, ["QC_NOT_PASSED", "HR_MARK_MISMATCH"])
    d = decide(ref, cand(item="CAT-HGB", claimed_marks=("鄂HR",)), "H002", NOW)  # HGB is a Wuhan item
    assert (d.decision, d.codes) == (RECOGNIZABLE, ["HR_MARK_MISMATCH"])
    assert d.reasons[0].severity == "warning"


@pytest.mark.parametrize("ctx", ["emergency", "pre-surgery", "pre-transfusion", "forensic", "patient-request",
                                 "condition-changed", "rapidly-changing"])
def test_r8_clinical_exception(ref, ctx):
    d = decide(ref, cand(), "H002", NOW, (ctx,))
    assert (d.decision, d.codes) == (NEEDS_JUDGEMENT, [f"CLINICAL_EXCEPTION:{ctx}"])


def test_r8_unknown_context_is_refused(ref):
    with pytest.raises(ValueError):
        decide(ref, cand(), "H002", NOW, ("whim",))


def test_order_first_hard_failure_wins(ref):
    old = NOW - timedelta(days=400)
    # fails R3 (H003 failed EQA), R4, R5 and would need R8: only R3 is reported
    d = decide(ref, cand(performer="H003", status="preliminary", effective=old), "H002", NOW, ("emergency",))
    assert d.codes == ["QC_NOT_PASSED"]
    # R4 before R5
    assert decide(ref, cand(status="preliminary", effective=NOW - timedelta(days=100)), "H002", NOW).codes == ["NOT_FINAL"]
    # R1 before R2
    assert decide(ref, cand(item="CAT-NOPE", performer=None), "H002", NOW).codes == ["NOT_IN_CATALOGUE"]
    # R2 before R3
    assert decide(ref, cand(item="CAT-HGB", performer="H003"), "H004", NOW).codes == ["OUT_OF_SCOPE"]
    # a hard failure hides the soft findings of later rules
    late = datetime(2026, 12, 30, tzinfo=timezone.utc)
    d = decide(ref, cand(item="CAT-CT-CHEST", effective=late - timedelta(days=181), images_available=False), "H002",
               late, ("emergency",))
    assert (d.decision, d.codes) == (NOT_RECOGNIZABLE, ["TIME_EXPIRED"])
    # soft findings accumulate in rule order
    d = decide(ref, cand(item="CAT-CT-CHEST", images_available=False, claimed_marks=("武汉HR",)), "H002", NOW,
               ("pre-surgery",))
    assert d.codes == ["IMAGES_UNAVAILABLE", "HR_MARK_MISMATCH", "CLINICAL_EXCEPTION:pre-surgery"]
    assert d.decision == NEEDS_JUDGEMENT


def test_marks_are_independent_of_the_requester(ref):
    scopes = [e.scope for e, _ in marked_scopes(ref, cand())]
    assert sorted(scopes) == ["HB", "WH"]
    assert [e.scope for e, _ in marked_scopes(ref, cand(performer="H002"))] == ["WH"]
    assert marked_scopes(ref, cand(performer="H003")) == []
    assert marked_scopes(ref, cand(status="preliminary")) == []
