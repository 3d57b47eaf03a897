"""``yilian dicom …``: peers (known AEs, C-MOVE destinations) and the DICOM services alone."""

from __future__ import annotations

import argparse


def _settings(args):
    from hub.config import load_settings

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("database_url", args.database_url)) if v}
    return load_settings(**overrides)


def _registry(args):
    from hub.dicom.peers import PeerRegistry
    from hub.storage.engine import make_engine
    from hub.storage.migrate import upgrade

    settings = _settings(args)
    engine = make_engine(settings.db_url)
    upgrade(engine)
    return PeerRegistry(engine, settings.dicom_aes, ttl=0)


def cmd_ae_add(args) -> int:
    from hub.dicom.peers import Peer

    if not 1 <= len(args.ae_title) <= 16:
        raise SystemExit("an AE title has 1 to 16 characters (PS3.5 6.2, AE)")
    _registry(args).add(Peer(args.ae_title, args.host, args.port, args.org), args.description)
    print(f"{args.ae_title} = {args.host}:{args.port}" + (f" ({args.org})" if args.org else ""))
    return 0


def cmd_ae_list(args) -> int:
    for p in _registry(args).all():
        print(f"{p.ae_title:16} {p.host}:{p.port}" + (f"  org={p.org}" if p.org else ""))
    return 0


def cmd_ae_remove(args) -> int:
    if not _registry(args).remove(args.ae_title):
        print(f"{args.ae_title} is not in the table (peers from the settings are changed there)")
        return 1
    return 0


def cmd_scp(args) -> int:
    """The DICOM services without the HTTP API (ImagingStudy and audit are still written)."""
    import signal
    import threading

    from hub.api.app import Hub
    from hub.logs import configure_logging

    settings = _settings(args).model_copy(update={"dicom_enabled": True, **(
        {"dicom_port": args.port} if args.port else {})})
    configure_logging(settings.log_level, settings.log_format)
    hub = Hub(settings)
    host, port = hub.dicom.server.address
    print(f"DICOM SCP {settings.dicom_ae_title} on {host}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.close()
    return 0


def add_parser(sub) -> None:
    dicom = sub.add_parser("dicom", help="DICOM services and peers").add_subparsers(dest="dicom_command", required=True)

    def db(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", dest="data_dir")
        p.add_argument("--database-url", dest="database_url")

    scp = dicom.add_parser("scp", help="run the DICOM SCP (C-ECHO/STORE/FIND/MOVE/GET) without the HTTP API")
    db(scp)
    scp.add_argument("--port", type=int)
    scp.set_defaults(func=cmd_scp)
    ae = dicom.add_parser("ae", help="known application entities").add_subparsers(dest="ae_command", required=True)
    add = ae.add_parser("add", help="add or replace a peer (caller / C-MOVE destination)")
    db(add)
    add.add_argument("ae_title")
    add.add_argument("host")
    add.add_argument("port", type=int)
    add.add_argument("--org", help="alliance code of the organization whose images it sends")
    add.add_argument("--description")
    add.set_defaults(func=cmd_ae_add)
    ls = ae.add_parser("list", help="list peers")
    db(ls)
    ls.set_defaults(func=cmd_ae_list)
    rm = ae.add_parser("remove", help="remove a peer added with `ae add`")
    db(rm)
    rm.add_argument("ae_title")
    rm.set_defaults(func=cmd_ae_remove)
