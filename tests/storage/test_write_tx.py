"""write_tx: SQLite writers of one process queue in arrival order; PostgreSQL writers run together."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from hub.storage.db import FairLock, sqlite_write_lock, write_tx
from hub.storage.engine import make_engine

WAIT = 30  # seconds: only how long a broken lock may hang the test, never a measurement


@pytest.fixture(scope="module")
def engine(db_url):
    eng = make_engine(db_url)
    with write_tx(eng) as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS tx_order (n INTEGER NOT NULL)"))
        conn.execute(text("DELETE FROM tx_order"))
    yield eng
    with write_tx(eng) as conn:
        conn.execute(text("DROP TABLE tx_order"))
    eng.dispose()


def _wait_until(cond) -> None:
    done = threading.Event()
    for _ in range(WAIT * 1000):
        if cond():
            return
        done.wait(0.001)
    raise AssertionError("condition not reached")


def test_fair_lock_hands_over_in_arrival_order():
    lock = FairLock()
    assert lock.acquire(WAIT)
    order: list[int] = []

    def waiter(n: int) -> None:
        assert lock.acquire(WAIT)
        order.append(n)
        lock.release()

    threads = []
    for n in range(6):
        t = threading.Thread(target=waiter, args=(n,))
        t.start()
        threads.append(t)
        _wait_until(lambda: lock.waiting == n + 1)  # queued before the next one starts
    lock.release()
    for t in threads:
        t.join(WAIT)
    assert order == list(range(6))
    assert lock.waiting == 0
    assert lock.acquire(0)  # free again
    lock.release()


def test_writers_commit_in_arrival_order_and_none_fails(engine):
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL writers are not queued")
    lock = sqlite_write_lock(engine)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with write_tx(engine) as conn:
                conn.execute(text("INSERT INTO tx_order (n) VALUES (:n)"), {"n": n})
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = []
    with write_tx(engine) as conn:
        conn.execute(text("INSERT INTO tx_order (n) VALUES (-1)"))
        for n in range(8):
            t = threading.Thread(target=writer, args=(n,))
            t.start()
            threads.append(t)
            _wait_until(lambda: lock.waiting == n + 1)
    for t in threads:
        t.join(WAIT)
    assert not errors
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT n FROM tx_order ORDER BY rowid"))] == list(range(-1, 8))
        conn.execute(text("DELETE FROM tx_order"))
        conn.commit()


def test_postgresql_writers_are_not_serialized(engine):
    if engine.dialect.name == "sqlite":
        pytest.skip("PostgreSQL only")
    inside = threading.Barrier(2, timeout=WAIT)

    def writer(n: int) -> None:
        with write_tx(engine) as conn:
            conn.execute(text("INSERT INTO tx_order (n) VALUES (:n)"), {"n": n})
            inside.wait()  # both transactions open at once, or the barrier breaks

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not inside.broken
    with write_tx(engine) as conn:
        assert sorted(r[0] for r in conn.execute(text("SELECT n FROM tx_order"))) == [0, 1]
        conn.execute(text("DELETE FROM tx_order"))



# the writer process of the next test: ``python -c WRITER URL NAME COUNT HOLD_S`` writes COUNT
# rows, one write transaction each, holding the lock HOLD_S seconds per transaction; prints how
# long its longest wait for the lock was
WRITER = """
import sys, time
from sqlalchemy import text
from hub.storage.db import write_tx
from hub.storage.engine import make_engine
url, name, count, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
engine = make_engine(url)
longest = 0.0
for i in range(count):
    asked = time.monotonic()
    with write_tx(engine) as conn:
        longest = max(longest, time.monotonic() - asked)
        conn.execute(text("INSERT INTO tx_order (n) VALUES (:n)"), {"n": (1000 if name == 'B' else 0) + i})
        time.sleep(hold)
print(longest)
"""


def test_another_process_gets_the_lock_as_it_is_released(engine, db_url):
    """Two real processes: A writes back to back (it begins again right after each commit), B
    comes in meanwhile. Queued by flock, B's transactions take turns with A's and B waits about
    one of A's transactions each time; left to SQLite's busy handler, B slept and retried and
    found the lock taken nearly every time (A commits and begins again within microseconds),
    so its writes waited until A had finished."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL writers are not queued")
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    env = {**__import__("os").environ, "PYTHONPATH": root}

    def start(name: str, count: int, hold: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WRITER, db_url, name, str(count), str(hold)], env=env,
                                stdout=subprocess.PIPE, text=True, cwd=root)

    def rows() -> list[int]:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT n FROM tx_order ORDER BY rowid"))]

    a = start("A", 150, 0.01)
    _wait_until(lambda: len(rows()) >= 5)  # A is writing back to back
    b = start("B", 5, 0.0)
    b_out, _ = b.communicate(timeout=WAIT * 4)
    a_out, _ = a.communicate(timeout=WAIT * 4)
    assert a.returncode == 0 and b.returncode == 0
    order = rows()
    b_rows = [k for k, n in enumerate(order) if n >= 1000]
    assert len(b_rows) == 5
    assert b_rows[-1] < len(order) - 20, f"B's writes waited for A to finish: {order}"
    assert float(b_out) < 0.5, f"B waited {float(b_out):.3f} s for the lock"
    with write_tx(engine) as conn:
        conn.execute(text("DELETE FROM tx_order"))
