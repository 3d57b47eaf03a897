"""Nothing acknowledged is lost or sent twice when a step fails half-way: an association or a
connection that breaks in the middle of a DICOM batch, an instance received again while it is
being forwarded, a lane count changed between two runs, a request the hub cannot take; and the
bookkeeping that makes this so is purged after the retention, never before the hub confirmed.

The DICOM forwarder and a file drop's scan run in this process where a step must be caught in
the middle (real outbox, real associations to a pynetdicom SCP standing in for the hub, real HTTP
to a STOW-RS server); the rest runs ``yilian fep run``."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import sqlite3
import threading
import time
from collections import Counter

from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from front_end_processor import outbox as ob
from front_end_processor.config import load_config
from front_end_processor.dicom_scp import DicomReceiver, _record
from front_end_processor.outbox import Outbox
from front_end_processor.status import NodeStats
from tests.conftest import free_port

from .conftest import (FepProcess, HisSender, assert_exactly_once_in_order, feed, pending_count, wait_until,
                       write_site)
from .test_dicom import ct_file, storescu


class HubStorage:
    """The hub's Storage SCP stand-in: each stored instance's data set in arrival order; ``before``
    (uid, dataset) -> status or None runs first and may answer in its place."""

    def __init__(self, sop_classes=None, before=None):
        self.port = free_port()
        self.received: list = []
        self.before = before
        ae = AE(ae_title="YILIAN")
        for cx in AllStoragePresentationContexts:
            if sop_classes is None or cx.abstract_syntax in sop_classes:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        if self.before is not None:
            status = self.before(str(ds.SOPInstanceUID), ds)
            if status is not None:
                return status
        self.received.append(ds)
        return 0x0000

    def uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.received]

    def close(self):
        self.server.shutdown()


def dicom_site(tmp_path, hub_url: str, extra: str, dimse_timeout_s: float = 30.0):
    fep_port = free_port()
    section = (f'[[dicom]]\nname = "pacs"\nfeed = "pacs"\nhost = "127.0.0.1"\nport = {fep_port}\n'
               f'ae_title = "HOSPA_FEP"\ndimse_timeout_s = {dimse_timeout_s}\n{extra}')
    path, _ = write_site(tmp_path, hub_url, extra=section)
    return load_config(path), fep_port


def c_store_site(tmp_path, fake_hub, scp: HubStorage, dimse_timeout_s: float = 30.0):
    return dicom_site(tmp_path, fake_hub.url, f'forward = "c-store"\nhub_host = "127.0.0.1"\nhub_port = {scp.port}\n'
                      f'hub_ae_title = "YILIAN"\n', dimse_timeout_s)


def forwarding_record(cfg) -> dict[str, tuple]:
    conn = sqlite3.connect(cfg.outbox_path)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT sop_instance_uid, state, attempts FROM dicom_items")}
    finally:
        conn.close()


def forward(cfg, files, until, sop_class=CTImageStorage) -> None:
    """Keep ``files`` as the SCP keeps them and run the forwarder until ``until()``."""
    async def run():
        outbox = Outbox(cfg.outbox_path, lanes=cfg.forwarder.lanes)
        receiver = DicomReceiver(cfg.dicom[0], cfg, outbox, NodeStats())
        await receiver.start()
        try:
            for path, uid, *cls in files:
                await outbox.call(_record, "pacs", uid, cls[0] if cls else sop_class, str(path), "MODALITY")
            receiver._wake.set()
            await asyncio.to_thread(wait_until, until, timeout=60, what="forwarding")
        finally:
            await receiver.stop()
            outbox.close()

    asyncio.run(run())


def test_an_association_lost_mid_batch_sends_only_the_unconfirmed_instances_again(tmp_path, fake_hub):
    # The hub confirms the first two instances, then never answers the third: the forwarder's DIMSE
    # timeout aborts the association. The retry must start at the third, not at the first.
    files = [ct_file(tmp_path, i, generate_uid()) for i in range(5)]
    stalled = []

    def stall_once(uid, _ds):
        if uid == files[2][1] and not stalled:
            stalled.append(uid)
            time.sleep(4.5)                 # past the 2 s DIMSE timeout: the FEP has aborted meanwhile
            return 0xA700
        return None

    scp = HubStorage(before=stall_once)
    try:
        cfg, _ = c_store_site(tmp_path, fake_hub, scp, dimse_timeout_s=2)
        forward(cfg, files, lambda: all(r[0] == "delivered" for r in forwarding_record(cfg).values()))
    finally:
        scp.close()
    assert stalled
    assert Counter(scp.uids()) == Counter(uid for _, uid in files)      # each once
    record = forwarding_record(cfg)
    # confirmed by their first attempt; the stalled one and those behind it by their second
    assert [record[uid] for _, uid in files] == [("delivered", 1)] * 2 + [("delivered", 2)] * 3


class StowServer:
    """A STOW-RS endpoint over real HTTP (with the token endpoint the FEP asks first); ``drop``
    is the number of the request whose connection is closed without an answer."""

    def __init__(self, drop: int):
        self.port = free_port()
        self.received: list[str] = []
        self.requests = 0
        self.drop = drop
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/oauth2/token":
                    return self._json({"access_token": "t", "token_type": "Bearer", "expires_in": 300})
                server.requests += 1
                if server.requests == server.drop:
                    self.close_connection = True         # the connection is lost before the answer
                    return
                part = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
                server.received.append(str(dcmread(io.BytesIO(part)).SOPInstanceUID))
                self._json({})

            def _json(self, value):
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_stow_connection_lost_mid_batch_sends_only_the_unconfirmed_instances_again(tmp_path):
    stow = StowServer(drop=3)
    files = [ct_file(tmp_path, i, generate_uid()) for i in range(5)]
    try:
        cfg, _ = dicom_site(tmp_path, f"http://127.0.0.1:{stow.port}", 'forward = "stow-rs"\n')
        forward(cfg, files, lambda: all(r[0] == "delivered" for r in forwarding_record(cfg).values()))
    finally:
        stow.close()
    assert stow.requests == 6                    # five instances and the one whose answer was lost
    assert Counter(stow.received) == Counter(uid for _, uid in files)
    record = forwarding_record(cfg)
    assert [record[uid] for _, uid in files] == [("delivered", 1)] * 2 + [("delivered", 2)] * 3


def test_an_instance_received_again_while_it_is_forwarded_is_forwarded_again(tmp_path, fake_hub):
    # The modality sends an instance again (corrected) while the forwarder is sending its first
    # copy: the FEP answered success for the new bytes, so the hub's confirmation of the old ones
    # must not close the item.
    path, uid = ct_file(tmp_path, 1, generate_uid())
    corrected = dcmread(path)
    corrected.InstanceNumber = 99

    def resend_first(got_uid, ds):
        if got_uid == uid and ds.InstanceNumber == 1 and not any(d.InstanceNumber == 99 for d in scp.received):
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", fep_port, ae_title="HOSPA_FEP")
            assert int(assoc.send_c_store(corrected).Status) == 0
            assoc.release()
        return None

    scp = HubStorage(before=resend_first)
    try:
        cfg, fep_port = c_store_site(tmp_path, fake_hub, scp)
        forward(cfg, [(path, uid)], lambda: len(scp.received) >= 2
                and all(r[0] == "delivered" for r in forwarding_record(cfg).values()))
    finally:
        scp.close()
    assert [(str(d.SOPInstanceUID), d.InstanceNumber) for d in scp.received] == [(uid, 1), (uid, 99)]
    assert len(list((tmp_path / "data" / "dicom" / "pacs").glob("*.dcm"))) == 1     # the first copy was removed


def test_an_instance_the_hub_has_no_context_for_is_dead_lettered_and_the_rest_go(tmp_path, fake_hub):
    # The hub's SCP takes CT only: the association is established without the MR context and
    # pynetdicom refuses to send the MR instance (ValueError). That must cost the MR instance, not
    # the forwarder: the CT instances behind it, and every later batch, still go.
    mr_path, mr_uid = ct_file(tmp_path, 0, generate_uid())
    mr = dcmread(mr_path)
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    mr.save_as(mr_path, enforce_file_format=True)
    cts = [ct_file(tmp_path, i, generate_uid()) for i in range(1, 4)]
    scp = HubStorage(sop_classes={CTImageStorage})
    try:
        cfg, _ = c_store_site(tmp_path, fake_hub, scp)
        forward(cfg, [(mr_path, mr_uid, MRImageStorage), *cts],
                lambda: all(r[0] != "pending" for r in forwarding_record(cfg).values()))
    finally:
        scp.close()
    assert sorted(scp.uids()) == sorted(uid for _, uid in cts)
    assert forwarding_record(cfg)[mr_uid][0] == "dead"
    conn = sqlite3.connect(cfg.outbox_path)
    [(reason,)] = conn.execute("SELECT reason FROM dead_letters WHERE kind = 'dicom'").fetchall()
    conn.close()
    assert reason.startswith("not sent: ") and "presentation context" in reason


def test_files_no_item_refers_to_are_deleted_at_start(tmp_path, fake_hub):
    refusing = [True]
    scp = HubStorage(before=lambda _uid, _ds: 0xA700 if refusing[0] else None)
    try:
        cfg, fep_port = c_store_site(tmp_path, fake_hub, scp)
        site_file = tmp_path / "site.toml"
        path, uid = ct_file(tmp_path, 1, generate_uid())
        storage = cfg.data_dir / "dicom" / "pacs"
        with FepProcess(site_file):
            assert storescu(fep_port, path).returncode == 0
        [kept] = storage.glob(f"{uid}.*.dcm")
        # what a crash can leave: a receipt written but never recorded, a half-written temporary file
        (storage / f"{generate_uid()}.0123456789ab.dcm").write_bytes(kept.read_bytes())
        (storage / f".{uid}.ba9876543210.dcm.0a1b2c3d.tmp").write_bytes(b"DICM")
        (storage / "README.txt").write_text("not the front-end processor's")
        # the storage folder is a setting: the site's own DICOM files in it are not the receiver's
        foreign = [f"{generate_uid()}.dcm", "ct1.dcm", "scan.0123456789ab.dcm", ".hidden.dcm"]
        for name in foreign:
            (storage / name).write_bytes(kept.read_bytes())
        with FepProcess(site_file):
            assert sorted(p.name for p in storage.iterdir()) == sorted(["README.txt", kept.name, *foreign])
            refusing[0] = False
            wait_until(lambda: scp.uids() == [uid], what="the kept instance forwarded")
    finally:
        scp.close()


# -- the file drop's bookkeeping ---------------------------------------------------------------


def file_records(tmp_path) -> list[tuple]:
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        return conn.execute("SELECT name, settled_ts IS NOT NULL FROM file_items ORDER BY name").fetchall()
    finally:
        conn.close()


def test_file_records_are_purged_after_the_retention_and_never_before_the_hub_confirmed(tmp_path, fake_hub):
    inbox = tmp_path / "exports"
    inbox.mkdir()
    extra = f'[[file_drop]]\nname = "emr"\nfeed = "emr-files"\npath = "{inbox}"\nstable_s = 0\npoll_s = 0.05\n'
    cfg, _ = write_site(tmp_path, fake_hub.url, extra=extra, outbox="retention_s = 1")
    fake_hub.fail_next = 10 ** 6                 # the hub is away: nothing is confirmed
    fep = FepProcess(cfg).start()
    (inbox / "a.csv").write_bytes(b"id,name\n1,x\n")
    (inbox / "b.json").write_bytes(b'{"items": []}')
    wait_until(lambda: file_records(tmp_path) == [("a.csv", 0), ("b.json", 0)], what="both files stored")
    time.sleep(3)                                 # three retention periods, housekeeping every second
    assert file_records(tmp_path) == [("a.csv", 0), ("b.json", 0)]
    # a restart still knows the files in .processing were stored: they are not taken again
    fep.kill()
    with FepProcess(cfg):
        time.sleep(1)
        assert sorted(p.name.partition("__")[2] for p in (inbox / ".processing").iterdir()) == ["a.csv", "b.json"]
        assert file_records(tmp_path) == [("a.csv", 0), ("b.json", 0)]
        fake_hub.fail_next = 0
        wait_until(lambda: sorted(p.name for p in (inbox / "done").iterdir()) == ["a.csv", "b.json"],
                   what="files confirmed and moved to done/")
        wait_until(lambda: file_records(tmp_path) == [], what="their records purged after the retention")
    assert sorted(m["filename"] for m in fake_hub.accepted) == ["a.csv", "b.json"]


def test_an_outbox_of_the_earlier_schema_is_migrated_and_its_settled_records_purged(tmp_path):
    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path)
    conn.executescript(ob.SCHEMA.replace("name TEXT, settled_ts REAL", "name TEXT"))
    conn.execute("INSERT INTO outbox (id, kind, feed, lane, received_at, received_ts, payload)"
                 " VALUES ('waiting-1', 'csv', 'f', 0, '', 0, x'00')")
    conn.executemany("INSERT INTO file_items VALUES (?, ?)", [("done-1", "a.csv"), ("waiting-1", "b.csv")])
    conn.commit()
    conn.close()
    box = Outbox(path)
    try:
        assert box.call_sync(ob.purge_file_items, time.time() + 1) == 1
        assert box.call_sync(lambda c: c.execute("SELECT id, settled_ts FROM file_items").fetchall()) == \
            [("waiting-1", None)]
        # the purge finds settled records through their index, not by reading every record
        plan = box.call_sync(lambda c: c.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM file_items f WHERE settled_ts < ?", (1.0,)).fetchall())
        assert any("file_items_settled" in row[-1] for row in plan), plan
    finally:
        box.close()


# -- lanes and housekeeping ----------------------------------------------------------------------


def test_pending_items_follow_a_change_of_the_lane_count(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)           # two lanes
    messages = feed(30)
    fake_hub.fail_next = 10 ** 6
    with FepProcess(cfg):
        sender = HisSender(port, messages)
        sender.start()
        sender.wait_acked(len(messages))
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    assert {r[0] for r in conn.execute("SELECT DISTINCT lane FROM outbox WHERE state = 'pending'")} == {0, 1}
    conn.close()
    cfg.write_text(cfg.read_text().replace("lanes = 2", "lanes = 1"))
    fake_hub.fail_next = 0
    with FepProcess(cfg):
        wait_until(lambda: pending_count(tmp_path) == 0, what="every item forwarded on the one lane left")
    assert_exactly_once_in_order(fake_hub, messages, sender.acked)
    assert len(fake_hub.control_ids()) == len(messages)


def outbox_rows(tmp_path) -> int:
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        conn.close()


def test_confirmed_items_past_retention_are_purged_at_start_however_many(tmp_path, fake_hub):
    # A node that was down (or busy) longer than one purge step a minute can remove: a step is
    # bounded (the writer is not held), but housekeeping goes on until nothing is left.
    cfg, _ = write_site(tmp_path, fake_hub.url, outbox="retention_s = 3600")
    backlog = 15_000                        # three purge steps
    box = Outbox(tmp_path / "data" / "outbox.db", lanes=2)
    old = time.time() - 7200

    def seed(conn):
        conn.executemany(
            "INSERT INTO outbox (id, kind, feed, lane, received_at, received_ts, payload, state, delivered_ts)"
            " VALUES (?, 'hl7v2', 'his-adt', 0, ?, ?, x'00', 'delivered', ?)",
            [(f"old-{i}", ob.iso(old), old, old) for i in range(backlog)])
    box.call_sync(seed)
    box.close()
    with FepProcess(cfg):
        wait_until(lambda: outbox_rows(tmp_path) == 0, timeout=30, what="the whole backlog purged")


def test_relative_outbox_and_storage_paths_are_relative_to_the_site_file(tmp_path, fake_hub, monkeypatch):
    # the service may be started from any working directory: it must open the same outbox
    extra = '[[dicom]]\nname = "pacs"\nport = 0\nstorage_dir = "kept/pacs"\n'
    path, _ = write_site(tmp_path / "etc", fake_hub.url, extra=extra, outbox='path = "state/outbox.db"')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert cfg.outbox_path == tmp_path / "etc" / "state" / "outbox.db"
    assert cfg.dicom[0].storage_dir == tmp_path / "etc" / "kept" / "pacs"


def test_a_file_the_outbox_cannot_store_is_given_back_without_overwriting_a_newer_one(tmp_path):
    from front_end_processor.config import FileDropConfig
    from front_end_processor.file_drop import FileDrop

    inbox = tmp_path / "inbox"
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    first, newer = b"id\n" + b"1\n" * 50_000, b"id\n2\n"

    async def run():
        box = Outbox(path, max_pages=pages)           # full: the first export cannot be stored
        drop = FileDrop(FileDropConfig(name="emr", path=inbox, stable_s=0), box, NodeStats())
        for folder in (drop.inbox, drop.processing, drop.done, drop.error):
            folder.mkdir(parents=True)                 # scanned here, not by the drop's own loop
        try:
            (inbox / "visits.csv").write_bytes(first)
            holding, release = threading.Event(), threading.Event()

            def hold(_conn):
                holding.set()
                release.wait(10)
            held = asyncio.create_task(box.call(hold))       # the writer is busy for a moment
            await asyncio.to_thread(holding.wait, 10)
            take = asyncio.create_task(drop.scan())
            await asyncio.to_thread(wait_until, lambda: any(drop.processing.iterdir()), what="file claimed")
            (inbox / "visits.csv").write_bytes(newer)            # the sender exports again meanwhile
            release.set()
            await take
            await held
        finally:
            box.close()

    asyncio.run(run())
    kept = {p.name: p.read_bytes() for p in inbox.iterdir() if p.is_file()}
    assert kept["visits.csv"] == newer
    assert sorted(kept.values()) == sorted([first, newer])       # the first one given back under another name
