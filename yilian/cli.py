"""The ``yilian`` command: run the hub, manage clients, load data.

Subcommands import what they need lazily, so the front-end processor's commands never load the
hub's modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def _settings(args):
    from hub.config import load_settings

    overrides = {}
    for name in ("data_dir", "database_url", "host", "port", "workers"):
        val = getattr(args, name, None)
        if val is not None:
            overrides[name] = val
    return load_settings(**overrides)


def _engine(settings):
    from hub.storage.engine import make_engine
    from hub.storage.migrate import upgrade

    engine = make_engine(settings.db_url)
    upgrade(engine)
    return engine


def cmd_hub_run(args) -> int:
    import os

    from hub.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    _engine(settings).dispose()  # migrate once, before any worker starts
    # workers are separate processes: hand them the settings through the environment
    for key, val in (("YILIAN_DATA_DIR", settings.data_dir), ("YILIAN_DATABASE_URL", settings.db_url),
                     ("YILIAN_HOST", settings.host), ("YILIAN_PORT", settings.port),
                     ("YILIAN_WORKERS", settings.workers)):
        os.environ[key] = str(val)
    os.environ["YILIAN_MIGRATE_AT_START"] = "false"  # done above, once
    print(f"Yilian hub: FHIR base {settings.fhir_base}  (database {_safe_url(settings.db_url)})", flush=True)
    server = [sys.executable, "-m", "hub.api.main", "--host", settings.host, "--port", str(settings.port),
              "--workers", str(settings.workers), "--log-level", settings.log_level,
              "--log-format", settings.log_format]
    if settings.dicom_enabled and settings.workers > 1:
        os.environ["YILIAN_DICOM_ENABLED"] = "false"  # the workers leave DICOM to that process
        server.append("--dicom-scp")
    # the same process (pid, signals) continues as the server, without what this one imported
    # for the settings and the migration: its memory is the supervisor's with several workers
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, server)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_hub_migrate(args) -> int:
    settings = _settings(args)
    _engine(settings).dispose()
    print(f"database at {_safe_url(settings.db_url)} is up to date")
    return 0


def cmd_client_add(args) -> int:
    from hub.security.tokens import register_client

    settings = _settings(args)
    engine = _engine(settings)
    secret = register_client(engine, args.client_id, args.scopes, organization=args.org,
                             description=args.description, secret=args.secret)
    print(f"client_id:     {args.client_id}\nclient_secret: {secret}\nscopes:        {args.scopes}")
    print("Keep the secret safe: the hub stores only its hash.", file=sys.stderr)
    return 0


def cmd_client_list(args) -> int:
    from hub.security.tokens import list_clients

    for c in list_clients(_engine(_settings(args))):
        state = "disabled" if c["disabled"] else "active"
        print(f"{c['client_id']:30} {state:8} org={c['organization'] or '-':10} {c['scopes']}")
    return 0


def cmd_token(args) -> int:
    """Mint a token signed by the hub (for administrators, scripts and tests)."""
    from hub.security.tokens import TokenService

    s = _settings(args)
    tokens = TokenService(issuer=s.token_issuer, audience=s.token_audience, algorithm=s.token_algorithm,
                          secret=s.signing_secret(), lifetime_s=args.lifetime or s.token_lifetime_s)
    print(tokens.issue(subject=args.subject, client_id=args.client_id or "yilian-cli", scope=args.scopes,
                       organization=args.org, patient=args.patient, name=args.name))
    return 0


def cmd_load(args) -> int:
    from hub.loader import load_paths

    settings = _settings(args)
    return load_paths(settings, args.paths, url=args.url, token=args.token, concurrency=args.concurrency)


def cmd_demo(args) -> int:
    """Set up the embedded hub, load the demonstration data once, and run the hub."""
    from hub.demo import prepare_demo

    settings = _settings(args)
    prepare_demo(settings)
    return cmd_hub_run(args)


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", dest="data_dir", help="data folder (default ./data)")
    p.add_argument("--database-url", dest="database_url", help="SQLAlchemy URL (default SQLite in the data folder)")


#: the components' own commands; a component's CLI module (and what it imports: the front-end
#: processor, the DICOM or MPI stacks) is loaded only when its command is asked for
_COMPONENT_CLIS = {"fep": "front_end_processor.cli", "ingest": "hub.ingest.cli",
                   "recognition": "hub.recognition.cli", "dicom": "hub.dicom.cli", "mpi": "hub.mpi.cli"}
_BUILTIN_COMMANDS = frozenset({"hub", "demo", "client", "token", "load"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's component parser is added (``None``: all)."""
    ap = argparse.ArgumentParser(prog="yilian", description="Yilian (医联) regional health data exchange hub")
    sub = ap.add_subparsers(dest="command", required=True)

    hub = sub.add_parser("hub", help="the central hub").add_subparsers(dest="hub_command", required=True)
    run = hub.add_parser("run", help="run the hub's HTTP API (FHIR R4, OAuth2)")
    _db_args(run)
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--workers", type=int)
    run.set_defaults(func=cmd_hub_run)
    mig = hub.add_parser("migrate", help="create or upgrade the database schema")
    _db_args(mig)
    mig.set_defaults(func=cmd_hub_migrate)

    demo = sub.add_parser("demo", help="load demonstration data (once) and run the hub")
    _db_args(demo)
    demo.add_argument("--host")
    demo.add_argument("--port", type=int)
    demo.add_argument("--workers", type=int)
    demo.set_defaults(func=cmd_demo)

    client = sub.add_parser("client", help="OAuth2 clients").add_subparsers(dest="client_command", required=True)
    add = client.add_parser("add", help="register a client (prints its secret once)")
    _db_args(add)
    add.add_argument("client_id")
    add.add_argument("--scopes", required=True, help='SMART v2 scopes, e.g. "system/*.cruds"')
    add.add_argument("--org", help="alliance code of the member organization it acts for")
    add.add_argument("--description")
    add.add_argument("--secret", help="use this secret instead of a generated one")
    add.set_defaults(func=cmd_client_add)
    ls = client.add_parser("list", help="list registered clients")
    _db_args(ls)
    ls.set_defaults(func=cmd_client_list)

    tok = sub.add_parser("token", help="mint an access token signed by the hub")
    _db_args(tok)
    tok.add_argument("--subject", default="admin")
    tok.add_argument("--client-id")
    tok.add_argument("--scopes", default="user/*.cruds")
    tok.add_argument("--org")
    tok.add_argument("--patient")
    tok.add_argument("--name")
    tok.add_argument("--lifetime", type=int)
    tok.set_defaults(func=cmd_token)

    load = sub.add_parser("load", help="load FHIR bundles or resources (.json, .json.bz2, .ndjson, folders)")
    _db_args(load)
    load.add_argument("paths", nargs="+")
    load.add_argument("--url", help="a running hub's FHIR base; default: write to the database directly")
    load.add_argument("--token", help="bearer token for --url")
    load.add_argument("--concurrency", type=int, default=1)
    load.set_defaults(func=cmd_load)

    for name, module in _COMPONENT_CLIS.items():
        if command is None or command == name:
            importlib.import_module(module).add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    wanted = command if command in _BUILTIN_COMMANDS or command in _COMPONENT_CLIS else None
    args = build_parser(wanted).parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
