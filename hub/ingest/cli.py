"""``yilian ingest …``: run normalization workers, reprocess, list the raw log (docs/ingest.md).

A worker process builds the same :class:`hub.api.app.Hub` as the HTTP server (same store hooks,
profiles and audit) without serving HTTP, and shares the database queue with every other worker.
"""

from __future__ import annotations

import argparse
import sys


def _hub(args, **overrides):
    from hub.api.app import Hub
    from hub.config import load_settings

    values = {k: v for k, v in (("data_dir", args.data_dir), ("database_url", args.database_url)) if v is not None}
    return Hub(load_settings(**values, ingest_workers=0, **overrides))


def cmd_worker(args) -> int:
    from hub.ingest.workers import run_worker
    from hub.logs import configure_logging

    hub = _hub(args)
    configure_logging(hub.settings.log_level, hub.settings.log_format)
    try:
        if not args.once:
            print(f"ingest worker {hub.ingest.name}: {args.threads} thread(s), polling every {args.poll}s",
                  flush=True)
        n = run_worker(hub.ingest, threads=args.threads, poll_s=args.poll, once=args.once)
        if args.once:
            print(f"processed {n} messages")
    finally:
        hub.close()
    return 0


def _conds(args) -> list:
    from hub.fhir.search.extract import parse_date_range
    from hub.ingest.log import message_filters

    def when(v, high=False):
        return None if v is None else parse_date_range(v)[1 if high else 0]

    return message_filters(status=args.status, message_type=args.type, organization=args.org,
                           sending_facility=args.sender, since=when(args.since), until=when(args.until, True))


def cmd_reprocess(args) -> int:
    hub = _hub(args)
    try:
        if args.id is not None:
            ids = [args.id]
        else:
            conds = _conds(args)
            if not conds:
                print("give --id or at least one filter (--status, --type, --org, --sender, --since, --until)",
                      file=sys.stderr)
                return 2
            ids = hub.ingest.select_ids(conds)
        n = hub.ingest.reprocess(ids, wait=not args.queue_only)
        print(f"requeued {n} messages" + ("" if args.queue_only else " and processed them"))
        if not args.queue_only:
            _print_counts(hub, ids)
    finally:
        hub.close()
    return 0


def _print_counts(hub, ids) -> None:
    from collections import Counter

    from hub.ingest.log import outcomes
    from hub.storage.db import read_tx

    with read_tx(hub.engine) as conn:
        st = outcomes(conn, ids)
    for status, n in sorted(Counter(s["status"] for s in st.values()).items()):
        print(f"  {status:12} {n}")


def cmd_list(args) -> int:
    from hub.ingest.log import list_messages
    from hub.storage.db import read_tx

    hub = _hub(args)
    try:
        with read_tx(hub.engine) as conn:
            rows = list_messages(conn, _conds(args), limit=args.limit, offset=0, with_payload=False)
    finally:
        hub.close()
    for m in rows:
        print(f"{m['message_id']:>8} {m['stored_at']} {m['organization']:8} {m['message_type'] or m['kind']:10} "
              f"{m['status']:11} {m['ack_code'] or '-':2} {m['control_id'] or '-':22} {m['error'] or ''}"[:200])
    return 0


def add_parser(sub) -> None:
    """Add ``ingest`` to the ``yilian`` command's subparsers."""
    ing = sub.add_parser("ingest", help="the hub's HL7 v2 ingest log").add_subparsers(dest="ingest_command",
                                                                                      required=True)

    def db(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", dest="data_dir")
        p.add_argument("--database-url", dest="database_url")

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--status", choices=("received", "normalized", "rejected", "failed", "unsupported"))
        p.add_argument("--type", help="message type, e.g. ORU^R01")
        p.add_argument("--org", help="sending organization (alliance code)")
        p.add_argument("--sender", help="sending facility (MSH-4, or its first component)")
        p.add_argument("--since", help="stored at or after (ISO 8601)")
        p.add_argument("--until", help="stored at or before (ISO 8601)")

    w = ing.add_parser("worker", help="run normalization workers (share the queue with the hub's)")
    db(w)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--poll", type=float, default=0.5, help="seconds between queue polls when idle")
    w.add_argument("--once", action="store_true", help="process what is due, then exit")
    w.set_defaults(func=cmd_worker)

    r = ing.add_parser("reprocess", help="requeue messages (one, or a filtered set) and process them")
    db(r)
    r.add_argument("--id", type=int, help="one raw-log message id")
    filters(r)
    r.add_argument("--queue-only", action="store_true", help="only requeue; let the workers process them")
    r.set_defaults(func=cmd_reprocess)

    ls = ing.add_parser("list", help="list raw-log messages with their status")
    db(ls)
    filters(ls)
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=cmd_list)
