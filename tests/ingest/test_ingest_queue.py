"""The database queue: wait=false, worker threads and ``yilian ingest worker`` processes sharing
it without processing a message twice, and reprocessing (HTTP and CLI), on both engines."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from hub.ingest.schema import ingest_status
from hub.ingest.workers import WorkerPool

from ..conftest import RunningHub, make_settings
from .conftest import ORG, item, post


@pytest.fixture(scope="module")
def hub(db_url, tmp_path_factory):
    """A hub without worker threads: each test decides who processes the queue."""
    with RunningHub(make_settings(db_url, tmp_path_factory.mktemp("data"), ingest_workers=0, ingest_batch=5)) as h:
        yield h


def _statuses(hub, ids) -> dict[int, dict]:
    with hub.hub.engine.connect() as conn:
        rows = conn.execute(select(ingest_status).where(ingest_status.c.message_id.in_(ids)))
        return {r.message_id: dict(r._mapping) for r in rows}


def _wait_processed(hub, ids, deadline_s: float = 60) -> dict[int, dict]:
    """Poll until no message is received any more (a liveness bound, not a timed assertion)."""
    end = time.monotonic() + deadline_s
    while True:
        st = _statuses(hub, ids)
        if all(s["status"] not in ("received", "processing") for s in st.values()) or time.monotonic() > end:
            return st
        time.sleep(0.05)


def _cli(hub, *args, **kw):
    env = {**os.environ, "YILIAN_TOKEN_SECRET": "worker-secret-" + "y" * 20}
    cmd = [sys.executable, "-m", "yilian.cli", "ingest", *args, "--database-url", hub.settings.db_url,
           "--data-dir", str(hub.settings.data_dir / "worker")]
    return cmd, env


def test_wait_false_stores_and_answers_received_without_an_ack(hub, fep):
    (res,) = post(fep, item(b"no MSH here"), wait=False)
    assert res["status"] == "received" and res["ack"] is None and res["ack_code"] is None
    assert fep.get(f"/ingest/messages/{res['message_id']}").json()["status"] == "received"
    pool = WorkerPool(hub.hub.ingest, 1, poll_s=0.05)
    pool.start()
    try:
        st = _wait_processed(hub, [int(res["message_id"])])
    finally:
        pool.stop()
    assert st[int(res["message_id"])]["status"] == "rejected"
    got = fep.get(f"/ingest/messages/{res['message_id']}").json()
    assert got["status"] == "rejected" and got["ack_code"] == "AR" and got["ack"]


def test_a_worker_process_and_a_worker_thread_share_the_queue_without_processing_twice(hub, fep):
    # wave 1: only the separate process works the queue
    wave1 = [int(r["message_id"]) for r in post(fep, *[item(f"junk {i}".encode()) for i in range(20)], wait=False)]
    cmd, env = _cli(hub, "worker", "--once")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "processed 20 messages" in out.stdout
    st1 = _statuses(hub, wave1)
    assert all(s["status"] == "rejected" and s["attempts"] == 1 for s in st1.values())
    subprocess_names = {s["processed_by"] for s in st1.values()}
    assert len(subprocess_names) == 1 and str(os.getpid()) not in next(iter(subprocess_names))

    # wave 2: a worker process and a worker thread of the hub run at the same time
    cmd, env = _cli(hub, "worker", "--threads", "2", "--poll", "0.02")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pool = WorkerPool(hub.hub.ingest, 1, poll_s=0.02)
    try:
        assert "ingest worker" in proc.stdout.readline()  # it is running
        pool.start()
        wave2 = []
        for k in range(10):
            wave2 += [int(r["message_id"]) for r in
                      post(fep, *[item(f"junk {k}-{i}".encode()) for i in range(30)], wait=False)]
        st2 = _wait_processed(hub, wave2)
    finally:
        pool.stop()
        proc.terminate()
        proc.wait(30)
    assert len(st2) == 300
    assert all(s["status"] == "rejected" and s["attempts"] == 1 for s in st2.values())
    workers = {s["processed_by"] for s in st2.values()}
    assert all(f":{os.getpid()}:" in w or f":{proc.pid}:" in w for w in workers)
    print(f"wave 2 shared by {len(workers)} workers:",
          {w: sum(1 for s in st2.values() if s["processed_by"] == w) for w in workers})


def test_reprocess_one_message_and_a_filtered_set_over_http(hub, fep, admin):
    r1, r2 = post(fep, item(b"bad one"), item(b"bad two"))
    assert r1["status"] == r2["status"] == "rejected"
    assert fep.post(f"/ingest/messages/{r1['message_id']}/$reprocess").status_code == 403
    view = admin.post(f"/ingest/messages/{r1['message_id']}/$reprocess").json()
    assert view["status"] == "rejected" and view["attempts"] == 1  # requeued: attempts start again
    assert admin.post("/ingest/$reprocess", json={}).status_code == 400
    r = admin.post("/ingest/$reprocess", json={"status": "rejected", "organization": ORG, "wait": True})
    assert r.status_code == 200
    assert {r1["message_id"], r2["message_id"]} <= set(r.json()["message_ids"])
    st = _statuses(hub, [int(r1["message_id"]), int(r2["message_id"])])
    assert all(s["status"] == "rejected" and ":reprocess-" in s["processed_by"] for s in st.values())


def test_cli_lists_and_reprocesses(hub, fep):
    (res,) = post(fep, item(b"cli junk"))
    cmd, env = _cli(hub, "list", "--status", "rejected", "--limit", "1000")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert any(line.split()[0] == res["message_id"] for line in out.stdout.splitlines())
    cmd, env = _cli(hub, "reprocess", "--id", res["message_id"])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "requeued 1 messages" in out.stdout and "rejected" in out.stdout
    st = _statuses(hub, [int(res["message_id"])])[int(res["message_id"])]
    assert str(os.getpid()) not in st["processed_by"]  # processed by the CLI's process
