"""``yilian mpi …``: operate the master patient index from the command line (docs/mpi.md).

    yilian mpi stats                        # records, persons, links by source, open reviews
    yilian mpi review [--status open]       # the review queue (decide over HTTP: /mpi/reviews)
    yilian mpi rematch [--patient ID]       # match automatic links again (after new thresholds)

Works on the database directly, through the same :class:`hub.api.app.Hub` as the server (same
store hooks and settings), without serving HTTP.
"""

from __future__ import annotations

import argparse

from sqlalchemy import func, select

from hub.mpi.tables import mpi_person, mpi_record, mpi_review


def _hub(args):
    from hub.api.app import Hub
    from hub.config import load_settings

    values = {k: v for k, v in (("data_dir", args.data_dir), ("database_url", args.database_url)) if v is not None}
    return Hub(load_settings(**values, ingest_workers=0))


def cmd_stats(args) -> int:
    hub = _hub(args)
    try:
        with hub.engine.connect() as conn:
            by = conn.execute(select(mpi_record.c.state, mpi_record.c.source, func.count())
                              .group_by(mpi_record.c.state, mpi_record.c.source)).all()
            persons = conn.execute(select(func.count(func.distinct(mpi_record.c.person_id)))
                                   .where(mpi_record.c.state == "active")).scalar_one()
            golden = conn.execute(select(func.count()).select_from(mpi_person)).scalar_one()
            reviews = conn.execute(select(mpi_review.c.status, func.count()).group_by(mpi_review.c.status)).all()
    finally:
        hub.close()
    for state, source, n in by:
        print(f"records {state} ({source} link): {n}")
    print(f"persons with active records: {persons} (golden records ever made: {golden})")
    for status, n in reviews:
        print(f"review items {status}: {n}")
    return 0


def cmd_review(args) -> int:
    hub = _hub(args)
    try:
        with hub.engine.connect() as conn:
            rows = conn.execute(select(mpi_review).where(mpi_review.c.status == args.status)
                                .order_by(mpi_review.c.created).limit(args.limit)).all()
    finally:
        hub.close()
    for r in rows:
        print(f"{r.review_id}  v{r.version}  Patient/{r.patient_id} ~ Patient/{r.candidate_id}  "
              f"score {r.score:.1f}  {r.detail or ''}")
    print(f"{len(rows)} item(s) {args.status}")
    return 0


def cmd_rematch(args) -> int:
    hub = _hub(args)
    try:
        ids = [args.patient] if args.patient else None
        moved, seen = hub.mpi.rematch(ids)
    finally:
        hub.close()
    print(f"re-matched {seen} automatically linked record(s); {moved} changed person")
    return 0


def add_parser(sub) -> None:
    mpi = sub.add_parser("mpi", help="master patient index").add_subparsers(dest="mpi_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None)
    common.add_argument("--database-url", default=None)
    p = mpi.add_parser("stats", parents=[common], help="records, persons, links and reviews")
    p.set_defaults(func=cmd_stats)
    p = mpi.add_parser("review", parents=[common], help="list the review queue")
    p.add_argument("--status", default="open", choices=["open", "accepted", "rejected", "obsolete"])
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_review)
    p = mpi.add_parser("rematch", parents=[common], help="match automatically linked records again")
    p.add_argument("--patient", default=None, help="one source Patient id (default: every automatic link)")
    p.set_defaults(func=cmd_rematch)
