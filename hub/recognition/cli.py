"""``yilian recognition …``: load the reference data a region publishes, list versions, refresh
the HR marks, print statistics (docs/recognition.md).

    yilian recognition load catalogue catalogue.csv --effective-from 2026-03-01
    yilian recognition load release region-2026.json
    yilian recognition versions qualifications
    yilian recognition retag          # after a version dated in the future has come into force
    yilian recognition stats --from 2026-01-01 --to 2026-04-01 --group-by requester,item

Works on the database directly, through the same :class:`hub.api.app.Hub` as the server (same
store hooks), without serving HTTP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hub.recognition import KINDS


def _hub(args):
    from hub.api.app import Hub
    from hub.config import load_settings

    values = {k: v for k, v in (("data_dir", args.data_dir), ("database_url", args.database_url)) if v is not None}
    return Hub(load_settings(**values, ingest_workers=0))


def cmd_load(args) -> int:
    path = Path(args.file)
    fmt = args.format or ("json" if path.suffix.lower() == ".json" else "csv")
    from hub.errors import HubError

    hub = _hub(args)
    try:
        out = hub.recognition.publish(None if args.kind == "release" else args.kind, path.read_bytes(), fmt=fmt,
                                      effective_from=args.effective_from, source=path.name, loaded_by="cli",
                                      retag="none" if args.no_retag else "wait")
    except HubError as e:
        print(f"{path}: {e.diagnostics}", file=sys.stderr)
        return 2
    finally:
        hub.close()
    for kind, version in out["versions"].items():
        print(f"{kind}: version {version}, {out['rows'][kind]} rows")
    print(f"results re-marked: {out['retagged']}")
    return 0


def cmd_versions(args) -> int:
    hub = _hub(args)
    try:
        with hub.engine.connect() as conn:
            versions = hub.recognition.reference.versions(conn, args.kind)
            in_force = hub.recognition.reference.in_force(conn).get(args.kind)
    finally:
        hub.close()
    for v in versions:
        mark = "*" if v["version"] == in_force else " "
        print(f"{mark} {v['version']:>4}  effective {v['effective']}  by {v['loaded_by'] or '-'}  {v['source'] or ''}")
    return 0


def cmd_retag(args) -> int:
    hub = _hub(args)
    try:
        print(f"results re-marked: {hub.recognition.retag()}")
    finally:
        hub.close()
    return 0


def cmd_stats(args) -> int:
    from hub.recognition.stats import statistics
    from hub.recognition.store import effective_us

    hub = _hub(args)
    try:
        hub.recognition.offers.flush()
        with hub.engine.connect() as conn:
            out = statistics(conn, start=effective_us(args.start) if args.start else None,
                             end=effective_us(args.end) if args.end else None,
                             group_by=tuple(g for g in args.group_by.split(",") if g), period=args.period)
    finally:
        hub.close()
    print(json.dumps(out, ensure_ascii=False, indent=2))
    return 0


def add_parser(sub) -> None:
    rec = sub.add_parser("recognition", help="mutual recognition of test results: reference data, statistics")
    rs = rec.add_subparsers(dest="recognition_command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", dest="data_dir")
        p.add_argument("--database-url", dest="database_url")
        return p

    load = common(rs.add_parser("load", help="publish a new version of reference data from a CSV or JSON file"))
    load.add_argument("kind", choices=(*KINDS, "release"), help="what the file holds (release: JSON with several kinds)")
    load.add_argument("file")
    load.add_argument("--effective-from", dest="effective_from", help="date (China time) or date-time; default now")
    load.add_argument("--format", choices=("csv", "json"))
    load.add_argument("--no-retag", action="store_true", help="do not refresh the marks of stored results now")
    load.set_defaults(func=cmd_load)
    ver = common(rs.add_parser("versions", help="list the versions of one kind (* = in force)"))
    ver.add_argument("kind", choices=KINDS)
    ver.set_defaults(func=cmd_versions)
    common(rs.add_parser("retag", help="refresh the HR marks of every stored result")).set_defaults(func=cmd_retag)
    st = common(rs.add_parser("stats", help="offered / accepted / rejected figures as JSON"))
    st.add_argument("--from", dest="start")
    st.add_argument("--to", dest="end")
    st.add_argument("--group-by", dest="group_by", default="requester,item,period")
    st.add_argument("--period", default="month", choices=("day", "month", "year"))
    st.set_defaults(func=cmd_stats)
