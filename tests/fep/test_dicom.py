"""DICOM C-STORE through the front-end processor (a real subprocess, and its forwarder in this
process where pynetdicom is to be held up): dcmtk's ``storescu`` as the
modality, a pynetdicom Storage SCP started in the test as the hub's SCP (PS3.4 Annex B), and the
hub's own DIMSE services (on both engines) for the forwarder's fast-response path."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import threading

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from front_end_processor.config import load_config
from front_end_processor.dicom_scp import DicomReceiver, _record
from front_end_processor.outbox import Outbox
from front_end_processor.status import NodeStats
from tests.conftest import RunningHub, free_port, make_settings
from tests.dicom.test_reactor import hold_up_requestors

from .conftest import FepProcess, wait_until, write_site

# dcmtk's storescu (the venv also has pynetdicom's script of that name: not the one wanted)
STORESCU = shutil.which("storescu", path="/usr/bin:/bin:/usr/local/bin")
pytestmark = pytest.mark.skipif(STORESCU is None, reason="dcmtk storescu not installed")


def ct_file(folder, n: int, study_uid: str):
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P-0001"
    ds.PatientName = "Wang^Fang"
    ds.Modality = "CT"
    ds.InstanceNumber = n
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"ct{n}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds.SOPInstanceUID


class HubScp:
    """The hub's Storage SCP stand-in: records what it stored; can be told to refuse for a while."""

    def __init__(self):
        self.port = free_port()
        self.received: list[str] = []
        self.out_of_resources = 0            # answer 0xA700 this many times
        self.reject: set[str] = set()        # SOP instance UIDs answered 0xA900 (permanent)
        self.lock = threading.Lock()
        ae = AE(ae_title="YILIAN")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event):
        uid = str(event.request.AffectedSOPInstanceUID)
        with self.lock:
            if self.out_of_resources > 0:
                self.out_of_resources -= 1
                return 0xA700
            if uid in self.reject:
                return 0xA900
            event.dataset        # decodes: a broken instance would fail here
            self.received.append(uid)
        return 0x0000

    def close(self):
        self.server.shutdown()


@pytest.fixture
def hub_scp():
    scp = HubScp()
    yield scp
    scp.close()


def site(tmp_path, fake_hub, hub_scp, dimse_timeout_s: float = 30.0):
    dicom_port = free_port()
    extra = (f'[[dicom]]\nname = "pacs"\nfeed = "pacs"\nhost = "127.0.0.1"\nport = {dicom_port}\n'
             f'ae_title = "HOSPA_FEP"\nforward = "c-store"\nhub_host = "127.0.0.1"\nhub_port = {hub_scp.port}\n'
             f'hub_ae_title = "YILIAN"\ndimse_timeout_s = {dimse_timeout_s}\n')
    cfg, _ = write_site(tmp_path, fake_hub.url, extra=extra)
    return cfg, dicom_port


def storescu(port: int, *paths) -> subprocess.CompletedProcess:
    return subprocess.run([STORESCU, "-aet", "MODALITY", "-aec", "HOSPA_FEP", "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, timeout=60)


def test_instances_are_kept_durably_then_forwarded_by_c_store(tmp_path, fake_hub, hub_scp):
    cfg, port = site(tmp_path, fake_hub, hub_scp)
    study = generate_uid()
    files = [ct_file(tmp_path, i, study) for i in range(5)]
    hub_scp.out_of_resources = 2                     # the hub is short of space at first
    with FepProcess(cfg):
        done = storescu(port, *[p for p, _ in files])
        assert done.returncode == 0, done.stderr
        kept = tmp_path / "data" / "dicom" / "pacs"
        for path, uid in files:
            [kept_file] = kept.glob(f"{uid}.*.dcm")
            stored = dcmread(kept_file)
            assert stored == dcmread(path)           # as negotiated by storescu, same content
        wait_until(lambda: sorted(hub_scp.received) == sorted(uid for _, uid in files), what="forwarded")


def test_sigkill_after_success_loses_nothing_and_permanent_failures_are_dead_lettered(tmp_path, fake_hub, hub_scp):
    cfg, port = site(tmp_path, fake_hub, hub_scp)
    study = generate_uid()
    files = [ct_file(tmp_path, i, study) for i in range(4)]
    hub_scp.out_of_resources = 10 ** 6                # nothing can leave while the FEP is killed
    hub_scp.reject = {files[1][1]}
    fep = FepProcess(cfg).start()
    assert storescu(port, *[p for p, _ in files]).returncode == 0
    fep.kill()
    hub_scp.out_of_resources = 0
    with FepProcess(cfg):
        wait_until(lambda: len(hub_scp.received) == 3, what="the acknowledged instances forwarded after restart")
        assert sorted(hub_scp.received) == sorted(uid for i, (_, uid) in enumerate(files) if i != 1)
        wait_until(lambda: "0xA900" in _dead_letters(cfg), what="dead letter listed")
        line = next(x for x in _dead_letters(cfg).splitlines() if "0xA900" in x)
        assert " dicom " in line and "hub answered C-STORE status 0xA900" in line
        # the hub's configuration is fixed; the operator replays the dead letter
        hub_scp.reject = set()
        dead_id = line.split()[0]
        replay = _fep_cli(cfg, "dead-letters", "replay", dead_id)
        assert f"{dead_id}: back in the outbox" in replay
        wait_until(lambda: len(hub_scp.received) == 4, what="replayed instance forwarded")
    assert sorted(hub_scp.received) == sorted(uid for _, uid in files)


def _fep_cli(cfg, *args) -> str:
    import sys

    return subprocess.run([sys.executable, "-m", "yilian.cli", "fep", *args, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60).stdout


def _dead_letters(cfg) -> str:
    return _fep_cli(cfg, "dead-letters", "list")


def test_no_success_status_when_the_instance_cannot_be_written(tmp_path, fake_hub, hub_scp):
    cfg, port = site(tmp_path, fake_hub, hub_scp)
    path, uid = ct_file(tmp_path, 1, generate_uid())
    kept = tmp_path / "data" / "dicom" / "pacs"
    with FepProcess(cfg):
        kept.rename(kept.with_name("moved"))
        kept.write_bytes(b"")                 # the storage folder is gone: writes fail (as on a dead disk)
        assert _store_once(port, path) == 0xA700           # Out of Resources: the modality sends again later
        kept.unlink()
        kept.with_name("moved").rename(kept)
        assert _store_once(port, path) == 0x0000
        wait_until(lambda: hub_scp.received == [uid], what="forwarded")
    assert len(list(kept.glob(f"{uid}.*.dcm"))) == 1


def _store_once(port, path) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="HOSPA_FEP")
    try:
        return int(assoc.send_c_store(dcmread(path)).Status)
    finally:
        assoc.release()


class _HubDimse:
    """The site() view of the real hub's DIMSE services."""

    def __init__(self, pacs: RunningHub):
        self.port = pacs.hub.dicom.server.address[1]


@pytest.fixture(scope="module")
def yilian_hub(db_url, tmp_path_factory):
    """The hub itself (its SCP answers a C-STORE within a few milliseconds), the FEP a known AE."""
    settings = make_settings(db_url, tmp_path_factory.mktemp("hub"), dicom_enabled=True, dicom_port=free_port(),
                             dicom_ae_title="YILIAN", dicom_aes={"HOSPA_FEP": "127.0.0.1:1"},
                             dicom_default_org="hub")
    with RunningHub(settings) as h:
        yield h


def _forwarding_record(tmp_path) -> list[tuple]:
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        return conn.execute("SELECT sop_instance_uid, state, attempts, last_error FROM dicom_items").fetchall()
    finally:
        conn.close()


def test_fast_hub_responses_reach_the_forwarder_without_a_dimse_timeout(tmp_path, fake_hub, yilian_hub):
    # pynetdicom 3.0's own requestor reactor can take a C-STORE response meant for the waiting
    # send_c_store when it comes back fast (as the hub's does); the sender then waits for the DIMSE
    # timeout, aborts, and the batch is tried again. With adapters.dicom.reactor installed on the
    # forwarder's associations every instance is confirmed by its first C-STORE. (How often the
    # race arises here depends on scheduling; the next test makes it arise every time.)
    n = 100
    cfg, port = site(tmp_path, fake_hub, _HubDimse(yilian_hub), dimse_timeout_s=2)
    study = generate_uid()
    files = [ct_file(tmp_path, i, study) for i in range(n)]
    with FepProcess(cfg):
        assert storescu(port, *[p for p, _ in files]).returncode == 0
        wait_until(lambda: sum(r[1] == "delivered" for r in _forwarding_record(tmp_path)) == n, timeout=300,
                   what="all instances confirmed by the hub")
    record = _forwarding_record(tmp_path)
    retried = [(attempts, error) for _uid, _state, attempts, error in record if attempts != 1 or error is not None]
    assert retried == []
    assert sorted(r[0] for r in record) == sorted(uid for _, uid in files)
    r = httpx.get(f"{yilian_hub.root}/dicom-web/studies/{study}/instances", params={"limit": n * 2},
                  headers={"Authorization": f"Bearer {yilian_hub.token()}"})
    assert r.status_code == 200, r.text
    assert sorted(i["00080018"]["Value"][0] for i in r.json()) == sorted(uid for _, uid in files)


def test_a_fast_response_is_not_lost_by_a_held_up_forwarder(tmp_path, fake_hub, yilian_hub, monkeypatch):
    # The same forwarding in this process, with pynetdicom's race made certain to arise on every
    # C-STORE after the first (tests.dicom.test_reactor.hold_up_requestors; with pynetdicom's own
    # loops the forwarder then waits out the 1 s DIMSE timeout and the batch is retried).
    hold_up_requestors(monkeypatch)
    n = 8
    cfg_path, _port = site(tmp_path, fake_hub, _HubDimse(yilian_hub), dimse_timeout_s=1)
    cfg = load_config(cfg_path)
    files = [ct_file(tmp_path, i, generate_uid()) for i in range(n)]

    async def forward():
        outbox = Outbox(cfg.outbox_path)
        receiver = DicomReceiver(cfg.dicom[0], cfg, outbox, NodeStats())
        await receiver.start()
        try:
            # kept as the SCP keeps them (not received here: pynetdicom's settings are per process,
            # and the hub's SCP in this process has its own)
            for path, uid in files:
                await outbox.call(_record, "pacs", uid, CTImageStorage, str(path), "MODALITY")
            receiver._wake.set()
            await asyncio.to_thread(wait_until, lambda: all(r[1] != "pending" for r in _forwarding_record(tmp_path)),
                                    timeout=30, what="all instances forwarded")
        finally:
            await receiver.stop()
            outbox.close()

    asyncio.run(forward())
    record = _forwarding_record(tmp_path)
    assert sorted(r[0] for r in record) == sorted(uid for _, uid in files)
    assert [(state, attempts, error) for _uid, state, attempts, error in record] == [("delivered", 1, None)] * n
