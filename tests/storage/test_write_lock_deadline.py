"""The SQLite write lock has a deadline: a writer behind a hung thread or a stuck process gets
WriteLockTimeout instead of waiting forever, which HTTP answers with 503 and an OperationOutcome,
the DICOM SCP with "Refused: Out of Resources" (A700), and after which the ingest retries."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, text

from hub.ingest.schema import ingest_status
from hub.ingest.workers import WorkerPool
from hub.storage.db import FairLock, WriteLockTimeout, set_write_lock_timeout, sqlite_write_lock, write_tx
from hub.storage.engine import make_engine
from tests.conftest import RunningHub, free_port, make_settings
from tests.dicom import data
from tests.dicom.conftest import SCU, poll
from tests.dicom.test_dimse import store
from tests.ingest.conftest import ORG, adt_a01, ingest_client, item, post

WAIT = 30  # seconds: only how long a broken lock may hang the test, never a measurement
DEADLINE = 0.3  # the lock's deadline in these tests

ROOT = Path(__file__).resolve().parents[2]

# a process stuck in a write transaction: holds the lock until its standard input is closed
HOLDER = """
import sys
from hub.storage.db import write_tx
from hub.storage.engine import make_engine
with write_tx(make_engine(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def write_lock_held_by_another_process(url: str):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.stdin.close()
        holder.wait(WAIT)


@pytest.fixture
def engine(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    set_write_lock_timeout(eng, DEADLINE)
    with write_tx(eng) as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER NOT NULL)"))
    yield eng
    eng.dispose()


def _insert(engine, n: int) -> None:
    with write_tx(engine) as conn:
        conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})


def _rows(engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT n FROM t ORDER BY rowid"))]


def test_a_waiter_whose_deadline_passed_leaves_the_queue():
    lock = FairLock()
    assert lock.acquire(0)
    got: list[bool] = []
    late = threading.Thread(target=lambda: got.append(lock.acquire(WAIT)))
    assert not lock.acquire(0.05)  # the holder does not give it up in time
    late.start()
    poll(lambda: lock.waiting == 1, WAIT)
    lock.release()  # to the waiter still queued, past the one that left
    late.join(WAIT)
    assert got == [True] and lock.waiting == 0


def test_a_writer_behind_a_hung_thread_gets_an_error(engine):
    holding, hung_until = threading.Event(), threading.Event()

    def hung_writer() -> None:
        with write_tx(engine) as conn:
            conn.execute(text("INSERT INTO t (n) VALUES (1)"))
            holding.set()
            hung_until.wait(WAIT)

    hung = threading.Thread(target=hung_writer)
    hung.start()
    assert holding.wait(WAIT)
    errors: list[Exception] = []

    def writer() -> None:
        try:
            _insert(engine, 2)
        except WriteLockTimeout as e:
            errors.append(e)

    other = threading.Thread(target=writer)
    other.start()
    other.join(WAIT)
    assert not other.is_alive() and len(errors) == 1
    assert errors[0].status == 503 and errors[0].outcome()["issue"][0]["code"] == "lock-error"
    assert sqlite_write_lock(engine).waiting == 0
    hung_until.set()
    hung.join(WAIT)
    _insert(engine, 3)  # the lock works on
    assert _rows(engine) == [1, 3]


def test_a_writer_behind_a_stuck_process_gets_an_error(engine):
    url = engine.url.render_as_string()
    with write_lock_held_by_another_process(url):
        for n in (1, 2):  # the second takes over the first one's wait for the other process
            with pytest.raises(WriteLockTimeout):
                _insert(engine, n)
        assert sqlite_write_lock(engine).waiting == 0
    set_write_lock_timeout(engine, WAIT)
    _insert(engine, 3)  # once the process is gone
    assert _rows(engine) == [3]


# ---------------------------------------------------------------------- through the hub's interfaces
@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A hub on SQLite (the write lock is SQLite's) with the deadline short, DICOM on, no ingest workers."""
    data_dir = tmp_path_factory.mktemp("data")
    settings = make_settings(f"sqlite:///{data_dir / 'hub.db'}", data_dir, database_lock_timeout_s=DEADLINE,
                             ingest_workers=0, dicom_enabled=True, dicom_port=free_port(), dicom_aes={SCU: "127.0.0.1:1"})
    with RunningHub(settings) as h:
        yield h


def test_fhir_answers_503_with_an_operation_outcome(pacs):
    patient = {"resourceType": "Patient", "name": [{"family": "Busy"}]}
    with pacs.client() as fhir:
        with write_lock_held_by_another_process(pacs.settings.db_url):
            r = fhir.post("/Patient", json=patient)
        assert r.status_code == 503, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
        assert r.json()["issue"][0]["code"] == "lock-error"
        assert fhir.post("/Patient", json=patient).status_code == 201


def test_ingest_answers_503_and_its_worker_retries(pacs, caplog):
    with ingest_client(pacs) as fep:
        with write_lock_held_by_another_process(pacs.settings.db_url):
            r = fep.post("/ingest/messages", json={"organization": ORG, "wait": True,
                                                   "messages": [item(adt_a01("BUSY-1"))]})
            assert r.status_code == 503 and r.json()["issue"][0]["code"] == "lock-error"
        (queued,) = post(fep, item(adt_a01("BUSY-2")), wait=False)
        mid = int(queued["message_id"])
        pool = WorkerPool(pacs.hub.ingest, 1, poll_s=0.05)
        try:
            with caplog.at_level(logging.ERROR), write_lock_held_by_another_process(pacs.settings.db_url):
                pool.start()
                assert poll(lambda: "WriteLockTimeout" in caplog.text, WAIT)
                with pacs.hub.engine.connect() as conn:
                    st = conn.execute(select(ingest_status).where(ingest_status.c.message_id == mid)).one()
                assert st.status == "received" and st.attempts == 0  # not failed, not even an attempt
            assert poll(lambda: fep.get(f"/ingest/messages/{mid}").json()["status"] == "normalized", WAIT)
        finally:
            pool.stop()


def test_c_store_is_refused_out_of_resources_and_a_retry_stores(pacs):
    ds = data.instance(study_uid=generate_uid(), series_uid=generate_uid(), patient_id="BUSY-3")
    with write_lock_held_by_another_process(pacs.settings.db_url):
        assert store(pacs, [ds]) == [0xA700]
    assert store(pacs, [ds]) == [0]
    web = httpx.get(f"{pacs.root}/dicom-web/studies/{ds.StudyInstanceUID}/metadata",
                    headers={"Authorization": f"Bearer {pacs.token()}"})
    assert web.status_code == 200 and len(web.json()) == 1



def test_stow_answers_503_and_keeps_no_part(pacs):
    from io import BytesIO

    parts = []
    for ds in data.series(3, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="BUSY-4"):
        f = BytesIO()
        ds.save_as(f, enforce_file_format=True)
        parts.append(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + f.getvalue() + b"\r\n")
    spool = pacs.hub.dicom.blobs.root / "tmp"
    with write_lock_held_by_another_process(pacs.settings.db_url):
        r = httpx.post(f"{pacs.root}/dicom-web/studies", content=b"".join(parts) + b"--b--\r\n", timeout=WAIT,
                       headers={"Authorization": f"Bearer {pacs.token()}",
                                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 503 and r.json()["issue"][0]["code"] == "lock-error"
    assert not list(spool.iterdir())  # neither the part refused nor the two after it
