"""MLLP receiver of the front-end processor (a real subprocess) against the fake hub: ACK rules of
HL7 v2.5 chapter 2 section 2.9, store-then-ACK, duplicates, errors that keep the connection usable."""

from __future__ import annotations

import sqlite3

from .conftest import FepProcess, MllpClient, adt, msa, wait_until, write_site


def outbox_rows(tmp_path, where: str = "1=1") -> list[tuple]:
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        return conn.execute(f"SELECT id, state, hub_status FROM outbox WHERE {where}").fetchall()
    finally:
        conn.close()


def test_original_mode_aa_after_store_then_forwarded(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    with FepProcess(cfg), MllpClient(port) as c:
        ack = c.send(adt("C1", "MRN1"))
        assert msa(ack) == ("AA", "C1")
        assert b"MSH|^~\\&|YILIAN|HUB|HIS|HOSPA|" in ack      # sender and receiver swapped
        wait_until(lambda: fake_hub.control_ids() == ["C1"], what="forwarded")
        item = fake_hub.accepted[0]
        assert item["feed"] == "his-adt" and item["kind"] == "hl7v2"
        assert item["payload"] == adt("C1", "MRN1")
        wait_until(lambda: outbox_rows(tmp_path, "state = 'delivered'"), what="confirmed in the outbox")


def test_duplicate_send_gets_the_stored_ack_and_is_not_forwarded_twice(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    with FepProcess(cfg), MllpClient(port) as c:
        first = c.send(adt("D1", "MRN2"))
        again = c.send(adt("D1", "MRN2"))
        assert again == first
        changed = c.send(adt("D1", "MRN2", family="李"))       # same control id, other content: a new message
        assert msa(changed) == ("AA", "D1") and changed != first
        wait_until(lambda: len(fake_hub.accepted) == 2, what="two items forwarded")
        assert len(outbox_rows(tmp_path)) == 2


def test_unparseable_message_gets_ae_with_err_and_the_connection_stays_usable(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    with FepProcess(cfg), MllpClient(port) as c:
        bad = b"MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|20261201||ADT^A01|E1|P|2.5\rPID|1||X\rthis is not a segment\r"
        ack = c.send(bad)
        assert msa(ack) == ("AE", "E1")
        err = [s for s in ack.split(b"\r") if s.startswith(b"ERR")]
        assert err and b"^HL70357" in err[0] and b"100^Segment sequence error" in err[0]
        unsupported = c.send(adt("E2", "MRN3").replace(b"ADT^A01^ADT_A01", b"AD^A01^ADT_A01"))
        assert msa(unsupported) == ("AR", "E2") and b"200^Unsupported message type" in unsupported
        assert msa(c.send(adt("E3", "MRN3"))) == ("AA", "E3")    # same connection still works
        wait_until(lambda: fake_hub.control_ids() == ["E3"], what="good message forwarded")
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    kept = conn.execute("SELECT payload, source FROM dead_letters ORDER BY dead_ts").fetchall()
    conn.close()
    assert [k[1] for k in kept] == ["fep", "fep"] and kept[0][0] == bad      # raw input kept


def test_enhanced_mode_commit_ack_then_the_hubs_application_ack(tmp_path, fake_hub):
    # the site's original-mode wait is 0 (answer AA once stored): enhanced mode relays anyway,
    # since the application ACK follows the CA and holds nothing up
    cfg, port = write_site(tmp_path, fake_hub.url)
    with FepProcess(cfg), MllpClient(port) as c:
        commit = c.send(adt("N1", "MRN4", msh15="AL", msh16="AL"))
        assert msa(commit) == ("CA", "N1")
        application = c.read()
        assert msa(application) == ("AA", "N1") and b"normalized by fake hub" in application
        # MSH-15 NE: no commit ACK at all; MSH-16 AL: the application ACK only
        c.sock.sendall(__import__("adapters.mllp", fromlist=["frame"]).frame(adt("N2", "MRN4", msh15="NE",
                                                                                  msh16="AL")))
        assert msa(c.read()) == ("AA", "N2")


def test_original_mode_relays_the_hubs_application_ack_when_it_arrives_in_time(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url, mllp={"application_ack_wait_s": 10.0})
    with FepProcess(cfg), MllpClient(port) as c:
        ack = c.send(adt("W1", "MRN5"))
        assert msa(ack) == ("AA", "W1") and b"normalized by fake hub" in ack
        # the hub is down: the wait runs out and the front-end processor answers AA itself
    fake_hub.fail_next = 10 ** 6
    cfg2, port2 = write_site(tmp_path / "b", fake_hub.url, mllp={"application_ack_wait_s": 0.3})
    with FepProcess(cfg2), MllpClient(port2) as c:
        ack = c.send(adt("W2", "MRN5"))
        assert msa(ack) == ("AA", "W2") and b"normalized by fake hub" not in ack


def test_charset_override_per_sender(tmp_path, fake_hub):
    extra = '[charsets]\n"HIS^HOSPA" = "GB18030"\n'
    cfg, port = write_site(tmp_path, fake_hub.url, extra=extra)
    gb = adt("G1", "MRN6", charset="").decode("utf-8").encode("gb18030")     # no MSH-18, GB18030 bytes
    with FepProcess(cfg), MllpClient(port) as c:
        assert msa(c.send(gb)) == ("AA", "G1")
        wait_until(lambda: fake_hub.accepted, what="forwarded")
    item = fake_hub.accepted[0]
    assert item["charset"] == "GB18030" and item["payload"] == gb
    assert fake_hub.control_ids() == ["G1"]
