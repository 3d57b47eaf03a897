"""Shared fixtures: a real hub on a real port, on SQLite and on PostgreSQL.

PostgreSQL comes from ``YILIAN_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
each test module gets a fresh database created next to it and dropped afterwards. Set
``YILIAN_TEST_PG=skip`` to run on SQLite alone on a machine without PostgreSQL; CI never does.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("YILIAN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_sessionstart(session):
    """In CI the corpus-driven proofs (HL7 v2 corpus walks, expected bundles, Synthea) must run:
    their tests skip where ``../shared`` is absent, so CI refuses to start without it."""
    if os.environ.get("CI") and not (SHARED / "corpus" / "hl7v2" / "index.tsv").is_file():
        raise pytest.UsageError(f"CI needs the shared corpus beside the checkout ({SHARED}); it is missing")


def _pg_available() -> bool:
    if os.environ.get("YILIAN_TEST_PG") == "skip":
        return False
    try:
        eng = create_engine(PG_URL)
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:
        if os.environ.get("CI"):
            raise
        return False


ENGINES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=ENGINES)
def db_url(request, tmp_path_factory):
    """A fresh, empty database URL for the module, on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'hub.db'}"
        return
    if not _pg_available():
        pytest.skip("PostgreSQL not reachable (set YILIAN_TEST_PG_URL)")
    name = f"yilian_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningHub:
    """A hub served by uvicorn on a loopback port in a background thread."""

    def __init__(self, settings):
        from hub.api.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=settings.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("hub did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def hub(self):
        return self.app.state.hub

    @property
    def base(self) -> str:
        return self.settings.fhir_base

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def token(self, scopes: str = "system/*.cruds", **kw) -> str:
        return self.hub.tokens.issue(subject=kw.pop("subject", "tester"), client_id=kw.pop("client_id", "tests"),
                                     scope=scopes, **kw)

    def client(self, scopes: str = "system/*.cruds", **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60,
                            headers={"Authorization": f"Bearer {self.token(scopes, **kw)}",
                                     "Accept": "application/fhir+json"})


def make_settings(db_url: str, data_dir: Path, **kw):
    from hub.config import HubSettings

    port = free_port()
    return HubSettings(data_dir=data_dir, database_url=db_url, port=port, token_secret="test-secret-" + "x" * 20,
                       **kw)


@pytest.fixture(scope="module")
def hub(db_url, tmp_path_factory):
    with RunningHub(make_settings(db_url, tmp_path_factory.mktemp("data"))) as h:
        yield h


@pytest.fixture(scope="module")
def fhir(hub):
    with hub.client() as c:
        yield c


def unique(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:10]
