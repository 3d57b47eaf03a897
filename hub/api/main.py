"""Entry points of the hub's HTTP server.

``build`` is the application factory that each worker process calls (``uvicorn --factory
hub.api.main:build``). ``python -m hub.api.main`` is the server process that ``yilian hub run``
replaces itself with (``exec``) once the settings are read and the schema is migrated: it
imports uvicorn and the log formatter only, never the application, so that with several workers
the supervising process stays small (each worker imports the application itself).
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def build():
    from hub.api.app import create_app
    from hub.config import load_settings
    from hub.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def serve(argv: list[str] | None = None) -> int:
    """Run uvicorn on :func:`build`. The workers read their settings from the ``YILIAN_*``
    environment that ``yilian hub run`` has filled in."""
    import uvicorn

    from hub.logs import configure_logging

    ap = argparse.ArgumentParser(prog="python -m hub.api.main")
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--log-format", default="json")
    ap.add_argument("--dicom-scp", action="store_true",
                    help="run the DICOM services in a process of their own beside the HTTP workers")
    args = ap.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    scp = None
    if args.dicom_scp:
        # one DICOM listener: each HTTP worker process would otherwise try to bind its port
        scp = subprocess.Popen([sys.executable, "-m", "yilian.cli", "dicom", "scp"])
    try:
        uvicorn.run("hub.api.main:build", factory=True, host=args.host, port=args.port, workers=args.workers,
                    log_level=args.log_level.lower(), access_log=False, log_config=None)
    finally:
        if scp is not None:
            scp.terminate()
            scp.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
