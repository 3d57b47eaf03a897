"""``yilian fep …``: run the front-end processor, show its status, manage dead letters."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
import time

from . import outbox as ob
from .config import ConfigError, load_config


def _config(args):
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"yilian fep: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_run(args) -> int:
    from .node import serve

    cfg = _config(args)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "pynetdicom"):                     # a line per request / association is noise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(serve(cfg))
    except ConfigError as exc:
        print(f"yilian fep: {exc}", file=sys.stderr)
        return 2
    return 0


def _read_only(cfg) -> sqlite3.Connection:
    if not cfg.outbox_path.exists():
        print(f"yilian fep: no outbox at {cfg.outbox_path} (has the front-end processor run yet?)", file=sys.stderr)
        raise SystemExit(1)
    conn = sqlite3.connect(f"file:{cfg.outbox_path}?mode=ro", uri=True, timeout=10)
    return conn


def cmd_status(args) -> int:
    from .node import STATUS_FILE

    cfg = _config(args)
    with _read_only(cfg) as conn:
        box = ob.stats(conn, time.time())
        pending = ob.feed_pending(conn)
    status_path = cfg.data_dir / STATUS_FILE
    last = json.loads(status_path.read_text("utf-8")) if status_path.exists() else None
    out = {"node": cfg.node, "organization": cfg.organization, "outbox": box, "pending_by_feed": pending,
           "last_status": last}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"node {cfg.node} ({cfg.organization})  outbox {cfg.outbox_path}")
    print(f"  pending {box['depth']}  oldest {box['oldest_pending_age_s']}s  dead letters {box['dead_letters']}"
          f"  confirmed (kept) {box['delivered_kept']}")
    for feed, n in sorted(pending.items()):
        print(f"  feed {feed}: {n} pending")
    if last:
        age = time.time() - time.mktime(time.strptime(last["sent_at"][:19], "%Y-%m-%dT%H:%M:%S")) + time.timezone
        print(f"  last status written {age:.0f}s ago (pid {last.get('pid')}, up {last.get('uptime_s')}s)")
        for name, r in last.get("receivers", {}).items():
            print(f"  receiver {name}: port {r.get('port')} connections {r.get('connections')}")
        for name, c in last.get("feeds", {}).items():
            print(f"  feed {name}: " + " ".join(f"{k} {v}" for k, v in c.items()))
        if last.get("last_forward_error"):
            print(f"  last forwarding error: {last['last_forward_error']}")
    return 0


def cmd_dead_list(args) -> int:
    cfg = _config(args)
    with _read_only(cfg) as conn:
        rows = ob.list_dead_letters(conn, args.limit)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        replay = f" replayed as {r['replayed_as']}" if r["replayed_as"] else ""
        print(f"{r['id']}  {r['feed']:12} {r['kind']:8} {r['size']:8}B  {r['received_at']}  [{r['source']}] "
              f"{r['reason']}{replay}")
    if not rows:
        print("no dead letters")
    return 0


def cmd_dead_show(args) -> int:
    cfg = _config(args)
    with _read_only(cfg) as conn:
        row = ob.get_dead_letter(conn, args.id)
    if row is None:
        print(f"yilian fep: no dead letter {args.id}", file=sys.stderr)
        return 1
    payload = row.pop("payload")
    if args.raw:
        sys.stdout.buffer.write(payload)
        return 0
    for k, v in row.items():
        print(f"{k:15} {v}")
    print(f"{'size':15} {len(payload)} bytes (use --raw to write the payload to standard output)")
    return 0


def cmd_dead_replay(args) -> int:
    cfg = _config(args)
    box = ob.Outbox(cfg.outbox_path, lanes=cfg.forwarder.lanes)
    try:
        ids = args.ids
        if args.all:
            ids = [r["id"] for r in box.call_sync(ob.list_dead_letters, 1_000_000) if not r["replayed_as"]]
        status = 0
        for item_id in ids:
            new_id = box.call_sync(ob.replay_dead_letter, item_id, cfg.forwarder.lanes)
            if new_id is None:
                print(f"{item_id}: not a dead letter (or already replayed)", file=sys.stderr)
                status = 1
            else:
                print(f"{item_id}: back in the outbox as {new_id}")
        return status
    finally:
        box.close()


def add_parser(sub) -> None:
    """The ``fep`` subcommand group for ``yilian``."""
    fep = sub.add_parser("fep", help="front-end processor (前置机) at a hospital").add_subparsers(
        dest="fep_command", required=True)

    def cfg_arg(p):
        p.add_argument("--config", "-c", required=True, help="the site TOML file")
        return p

    run = cfg_arg(fep.add_parser("run", help="run the receivers and the forwarder"))
    run.set_defaults(func=cmd_run)
    st = cfg_arg(fep.add_parser("status", help="outbox depth, dead letters, last heartbeat"))
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    dl = fep.add_parser("dead-letters", help="items the hub or the front-end processor refused").add_subparsers(
        dest="dl_command", required=True)
    ls = cfg_arg(dl.add_parser("list"))
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_dead_list)
    show = cfg_arg(dl.add_parser("show"))
    show.add_argument("id")
    show.add_argument("--raw", action="store_true", help="write the stored bytes to standard output")
    show.set_defaults(func=cmd_dead_show)
    rp = cfg_arg(dl.add_parser("replay", help="put dead letters back in the outbox (as new items)"))
    rp.add_argument("ids", nargs="*")
    rp.add_argument("--all", action="store_true")
    rp.set_defaults(func=cmd_dead_replay)
