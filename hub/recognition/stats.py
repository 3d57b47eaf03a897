"""Recognition statistics: offered, accepted and rejected (with reasons), per requesting
organization, performing organization, item and period — the figures an alliance reports in its
performance assessment (国卫医发〔2022〕6号 第三十条: 互认工作纳入绩效考核).

An *offer* is one result answered RECOGNIZABLE or NEEDS_JUDGEMENT to a requesting organization;
asking again about the same result in the same period is the same offer. Periods are calendar
days, months or years in China Standard Time.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from hub.errors import InvalidRequest
from hub.recognition.rules import CHINA_TIME
from hub.recognition.schema import rec_decisions as D
from hub.recognition.schema import rec_offers as O

GROUPS = ("requester", "performer", "item", "period")
_PERIOD_FORMAT = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}


def _period(us: int, unit: str) -> str:
    return datetime.fromtimestamp(us / 1_000_000, CHINA_TIME).strftime(_PERIOD_FORMAT[unit])


def statistics(conn: Connection, *, start: int | None = None, end: int | None = None,
               group_by: tuple[str, ...] = ("requester", "item", "period"), period: str = "month") -> dict:
    bad = [g for g in group_by if g not in GROUPS]
    if bad:
        raise InvalidRequest(f"cannot group by {bad[0]!r}; by any of {', '.join(GROUPS)}")
    if period not in _PERIOD_FORMAT:
        raise InvalidRequest(f"period {period!r}: day, month or year")

    def bounded(q, col):
        if start is not None:
            q = q.where(col >= start)
        if end is not None:
            q = q.where(col < end)
        return q

    def key(row) -> tuple:
        values = {"requester": row.requester, "performer": row.performer, "item": row.item,
                  "period": _period(row.at, period)}
        return tuple(values[g] for g in group_by)

    groups: dict[tuple, dict] = {}

    def group(k: tuple) -> dict:
        if k not in groups:
            groups[k] = {**dict(zip(group_by, k)), "offered": 0, "recognizable": 0, "needs_judgement": 0,
                         "accepted": 0, "rejected": 0, "rejected_reasons": {}}
        return groups[k]

    seen: set[tuple] = set()
    for r in conn.execute(bounded(select(O.c.at, O.c.requester, O.c.performer, O.c.item, O.c.result_ref,
                                         O.c.decision), O.c.at)):
        offer = (r.requester, r.result_ref, _period(r.at, period))
        if offer in seen:
            continue
        seen.add(offer)
        g = group(key(r))
        g["offered"] += 1
        g["recognizable" if r.decision == "RECOGNIZABLE" else "needs_judgement"] += 1
    for r in conn.execute(bounded(select(D.c.at, D.c.requester, D.c.performer, D.c.item, D.c.outcome, D.c.reason),
                                  D.c.at)):
        g = group(key(r))
        g[r.outcome] += 1
        if r.outcome == "rejected":
            reason = r.reason or "unspecified"
            g["rejected_reasons"][reason] = g["rejected_reasons"].get(reason, 0) + 1
    rows = sorted(groups.values(), key=lambda g: tuple(str(g[k] or "") for k in group_by))
    totals = {k: sum(g[k] for g in rows) for k in ("offered", "recognizable", "needs_judgement", "accepted", "rejected")}
    return {"group_by": list(group_by), "period": period, "rows": rows, "totals": totals}
