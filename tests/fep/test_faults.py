"""Fault tests: whatever fails, every acknowledged message reaches the hub exactly once, in order
per patient, and nothing is marked delivered that the hub did not confirm.

The front-end processor runs as a real subprocess; the HIS is a thread sending over real MLLP
sockets and resending whatever it got no AA for; the hub is the fake ingest hub behind a TCP
proxy the test controls.
"""

from __future__ import annotations

import os
import random
import sqlite3

import pytest

from .conftest import (FepProcess, HisSender, MllpClient, adt, assert_exactly_once_in_order, delivered_ids, feed,
                       msa, pending_count, wait_until, write_site)
from .fakehub import FakeHub
from .proxy import TcpProxy

KILL_ROUNDS = int(os.environ.get("YILIAN_FEP_KILL_ROUNDS", "6"))


@pytest.fixture
def proxied_hub():
    with FakeHub() as hub:
        proxy = TcpProxy(hub.port)
        try:
            yield hub, proxy
        finally:
            proxy.close()


def drained(hub, tmp_path, messages, sender):
    """Wait until the sender is done and the outbox has nothing pending, then check the promise."""
    sender.join(60)
    assert not sender.is_alive(), "sender did not finish"
    assert sender.acked == [cid for cid, _ in messages]
    wait_until(lambda: pending_count(tmp_path) == 0, timeout=30, what="outbox drained")
    assert_exactly_once_in_order(hub, messages, sender.acked)
    assert delivered_ids(tmp_path) <= set(hub.results), "marked delivered without the hub's confirmation"


def test_sigkill_at_random_moments_while_a_his_streams(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    rng = random.Random(4)
    messages = feed(40 * KILL_ROUNDS)
    sender = HisSender(port, messages)
    fep = FepProcess(cfg).start()
    sender.start()
    for round_no in range(KILL_ROUNDS):
        sender.wait_acked(min(len(messages), (round_no + 1) * 40 - rng.randrange(0, 30)))
        fep.kill()                         # SIGKILL: no chance to finish anything
        fep = FepProcess(cfg).start()
    try:
        drained(fake_hub, tmp_path, messages, sender)
    finally:
        fep.stop()


def test_hub_down_for_a_while_then_back(tmp_path, proxied_hub):
    hub, proxy = proxied_hub
    cfg, port = write_site(tmp_path, proxy.url)
    messages = feed(60)
    proxy.set_mode("down")
    with FepProcess(cfg):
        sender = HisSender(port, messages)
        sender.start()
        sender.wait_acked(60)               # the HIS is not held up while the hub is away
        assert hub.accepted == [] and pending_count(tmp_path) == 60
        proxy.set_mode("pass")
        drained(hub, tmp_path, messages, sender)
    assert hub.largest_batch <= 50        # the backlog is paged through, one batch per request


def test_hub_answering_503(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    fake_hub.fail_next = 8
    messages = feed(50)
    with FepProcess(cfg):
        sender = HisSender(port, messages)
        sender.start()
        drained(fake_hub, tmp_path, messages, sender)
    assert fake_hub.fail_next == 0


@pytest.mark.parametrize("fault", ["reset", "blackhole", "drop_reply"])
def test_network_faults_between_fep_and_hub(tmp_path, proxied_hub, fault):
    hub, proxy = proxied_hub
    cfg, port = write_site(tmp_path, proxy.url, extra="", forwarder="")
    cfg.write_text(cfg.read_text().replace("timeout_s = 5.0", "timeout_s = 0.5"))
    messages = feed(60)
    with FepProcess(cfg):
        sender = HisSender(port, messages[:30])
        sender.start()
        sender.join(30)
        wait_until(lambda: len(hub.accepted) == 30, what="first half forwarded")
        proxy.set_mode(fault)
        more = HisSender(port, messages[30:])
        more.start()
        more.join(30)
        wait_until(lambda: proxy.connections > 2 and (fault != "drop_reply" or proxy.replies_dropped > 0),
                   what="the fault hit the forwarder")
        if fault == "drop_reply":
            wait_until(lambda: len(hub.accepted) > 30, what="the hub got a batch whose reply was dropped")
            assert pending_count(tmp_path) > 0       # not confirmed, so not marked delivered
        proxy.set_mode("pass")
        sender.acked += more.acked
        sender.messages = messages
        drained(hub, tmp_path, messages, sender)
    if fault == "drop_reply":
        assert hub.duplicates > 0          # the same ids came again; the hub answered its first result


def test_outbox_full_answers_ae_never_a_false_aa_and_recovers(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url, outbox="max_pages = 30\nretention_s = 0")
    fake_hub.fail_next = 10 ** 6              # hub unreachable: nothing leaves the outbox
    big = "X" * 3000
    messages = [(f"F{i}", adt(f"F{i}", f"P{i % 3}", extra="|" + big)) for i in range(200)]
    acked, refused_at = [], None
    with FepProcess(cfg), MllpClient(port) as c:
        for i, (cid, payload) in enumerate(messages):
            ack = c.send(payload)
            code, _ = msa(ack)
            if code == "AA":
                acked.append(cid)
                continue
            assert code == "AE" and b"207^Application internal error^HL70357" in ack and b"outbox full" in ack
            refused_at = i
            break
        assert refused_at is not None and 0 < refused_at < 200
        # the connection stays usable and keeps refusing while there is no room
        assert msa(c.send(messages[refused_at][1]))[0] == "AE"
        fake_hub.fail_next = 0                # the hub is back: confirmed items are removed, room returns
        wait_until(lambda: set(acked) <= set(fake_hub.control_ids()), what="stored messages forwarded")
        rest = messages[refused_at:refused_at + 5]
        for cid, payload in rest:
            wait_until(lambda: msa(c.send(payload))[0] == "AA", what=f"{cid} stored once there is room")
            acked.append(cid)
        wait_until(lambda: pending_count(tmp_path) == 0, what="drained")
    got = fake_hub.control_ids()
    assert sorted(got) == sorted(acked) and len(got) == len(set(got))


def test_poison_messages_are_dead_lettered_and_the_queue_keeps_moving(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    messages = feed(30)
    poison = {5: b"POISON", 17: b"REFUSE400"}   # rejected per item / a request refused as a whole
    messages = [(cid, p.replace(b"PV1|1|I", b"PV1|1|I|" + poison[i]) if i in poison else p)
                for i, (cid, p) in enumerate(messages)]
    with FepProcess(cfg):
        sender = HisSender(port, messages)
        sender.start()
        sender.join(30)
        wait_until(lambda: pending_count(tmp_path) == 0, what="drained")
    got = fake_hub.control_ids()
    assert "M17" not in got and "M5" in got              # M5 reached the hub (raw log) but was rejected
    assert sorted(got) == sorted(cid for cid, _ in messages if cid != "M17")
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    dead = dict(conn.execute("SELECT payload, reason FROM dead_letters").fetchall())
    conn.close()
    assert len(dead) == 2
    reasons = sorted(dead.values())
    assert "HTTP 400" in reasons[0] and "malformed item" in reasons[0]
    assert reasons[1] == "poison message rejected by rule"


def test_duplicate_sends_from_the_his_are_stored_once(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    messages = feed(20)
    with FepProcess(cfg), MllpClient(port) as c, MllpClient(port) as c2:
        for cid, payload in messages:
            first = c.send(payload)
            assert c2.send(payload) == first           # same message again, on another connection
        wait_until(lambda: pending_count(tmp_path) == 0 and len(fake_hub.accepted) == 20, what="drained")
    assert_exactly_once_in_order(fake_hub, messages, [cid for cid, _ in messages])
    assert fake_hub.duplicates == 0


def test_graceful_shutdown_finishes_in_flight_work(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    messages = feed(100)
    fep = FepProcess(cfg).start()
    sender = HisSender(port, messages)
    sender.start()
    sender.wait_acked(30)
    assert fep.stop() == 0                       # SIGTERM: exits cleanly
    acked_before = list(sender.acked)
    conn = sqlite3.connect(cfg.parent / "data" / "outbox.db")
    stored = {r[0] for r in conn.execute("SELECT payload FROM outbox")}
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert {p for cid, p in messages if cid in acked_before} <= stored
    with FepProcess(cfg):
        drained(fake_hub, tmp_path, messages, sender)


def test_backoff_is_exponential_with_jitter_and_capped():
    from front_end_processor.forwarder import Backoff

    b = Backoff(0.1, 1.0)
    delays = [b.next_delay() for _ in range(8)]
    for n, d in enumerate(delays):
        nominal = min(1.0, 0.1 * 2 ** n)
        assert nominal / 2 <= d <= nominal
    assert len({round(d, 6) for d in delays[4:]}) > 1          # jitter: capped delays still differ
    b.reset()
    assert b.next_delay() <= 0.1
