"""End to end on both hub storage engines: an MLLP client the project did not write (the ``hl7``
package's ``mllp_send``) sends a feed through the front-end processor (``yilian fep run``, a real
subprocess) into the real hub (ingest endpoint, ADT mapping); the FHIR API then shows the records,
the hub's raw log holds each message once, and the hub serves the node's heartbeats. Then the
front-end processor is killed with SIGKILL while a HIS streams, and still nothing is lost or
doubled in the hub."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest

from adapters.mllp import frame

from .conftest import FepProcess, HisSender, adt, feed, msa, pending_count, wait_until, write_site

CLIENT_ID = "fep-hosp-a"


@pytest.fixture(scope="module")
def fep_secret(hub, db_url, tmp_path_factory):
    """Register the node's client the documented way: ``yilian client add``."""
    out = subprocess.run([sys.executable, "-m", "yilian.cli", "client", "add", CLIENT_ID, "--scopes", "yilian/ingest",
                          "--org", "HOSPA", "--database-url", db_url,
                          "--data-dir", str(hub.settings.data_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("client_secret:"))


@pytest.fixture(scope="module")
def monitor(hub):
    token = hub.token("yilian/monitor yilian/ingest-admin", client_id="ops", subject="ops")
    with httpx.Client(base_url=hub.root, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def raw_log(monitor, prefix: str) -> list[dict]:
    msgs = monitor.get("/ingest/messages", params={"_count": 1000, "organization": "HOSPA"}).json()["messages"]
    return [m for m in msgs if (m.get("control_id") or "").startswith(prefix)]


def test_mllp_send_through_the_fep_into_the_hub_and_out_of_the_fhir_api(hub, fhir, fep_secret, monitor, tmp_path):
    assert shutil.which("mllp_send")
    cfg, port = write_site(tmp_path, hub.root, secret=fep_secret, client_id=CLIENT_ID)
    mrns = [f"E2E{i}" for i in range(6)]
    messages = [adt(f"E2E-{i}", mrn, family="王", given=f"芳{i}") for i, mrn in enumerate(mrns)]
    feed_file = tmp_path / "feed.hl7"
    feed_file.write_bytes(b"".join(frame(m) for m in messages))
    with FepProcess(cfg):
        sent = subprocess.run(["mllp_send", "--port", str(port), "--file", str(feed_file), "127.0.0.1"],
                              capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        acks = [a for a in sent.stdout.split(b"\n") if b"MSA" in a]
        assert len(acks) == 6 and all(msa(a)[0] == "AA" for a in acks)
        wait_until(lambda: pending_count(tmp_path) == 0, timeout=60, what="the hub confirmed every message")
        node = wait_until(lambda: next((n for n in monitor.get("/ingest/heartbeats").json()["nodes"]
                                        if n["node"] == "test-fep" and n["feeds"].get("his-adt", {}).get("forwarded")
                                        == 6), None), what="a heartbeat counting the feed")
    for i, mrn in enumerate(mrns):
        bundle = fhir.get("/Patient", params={"identifier": mrn}).json()
        assert bundle.get("total", len(bundle.get("entry", []))) == 1, bundle
        patient = bundle["entry"][0]["resource"]
        assert patient["name"][0]["family"] == "王" and patient["name"][0]["given"] == [f"芳{i}"]
    logged = raw_log(monitor, "E2E-")
    assert sorted(m["control_id"] for m in logged) == sorted(f"E2E-{i}" for i in range(6))
    assert node["organization"] == "HOSPA" and node["feeds"]["his-adt"]["received"] == 6
    assert node["outbox"]["depth"] == 0 and node["receivers"]["his"]["port"] == port and not node["stale"]


def test_sigkill_while_streaming_into_the_real_hub(hub, fep_secret, monitor, tmp_path):
    cfg, port = write_site(tmp_path, hub.root, secret=fep_secret, client_id=CLIENT_ID)
    messages = feed(120, patients=9, prefix="K")
    sender = HisSender(port, messages)
    fep = FepProcess(cfg).start()
    sender.start()
    for n in (25, 60, 95):
        sender.wait_acked(n)
        fep.kill()
        fep = FepProcess(cfg).start()
    try:
        sender.join(120)
        assert sender.acked == [cid for cid, _ in messages]
        wait_until(lambda: pending_count(tmp_path) == 0, timeout=60, what="outbox drained into the hub")
    finally:
        fep.stop()
    logged = raw_log(monitor, "K")
    originals = [m for m in logged if not m.get("duplicate_of")]
    assert sorted(m["control_id"] for m in originals) == sorted(cid for cid, _ in messages)


@pytest.mark.skipif(shutil.which("storescu", path="/usr/bin:/bin:/usr/local/bin") is None,
                    reason="dcmtk storescu not installed")
def test_dicom_from_storescu_through_the_fep_into_the_hub_by_stow_rs(hub, db_url, monitor, tmp_path):
    from pydicom.uid import generate_uid

    from tests.conftest import free_port

    from .test_dicom import ct_file, storescu

    out = subprocess.run([sys.executable, "-m", "yilian.cli", "client", "add", "fep-hosp-a-pacs", "--scopes",
                          "yilian/ingest system/ImagingStudy.c", "--org", "HOSPA", "--database-url", db_url,
                          "--data-dir", str(hub.settings.data_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    secret = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("client_secret:"))
    dicom_port = free_port()
    extra = (f'[[dicom]]\nname = "pacs"\nfeed = "pacs"\nhost = "127.0.0.1"\nport = {dicom_port}\n'
             f'ae_title = "HOSPA_FEP"\nforward = "stow-rs"\n')
    cfg, _ = write_site(tmp_path, hub.root, secret=secret, client_id="fep-hosp-a-pacs", extra=extra)
    study = generate_uid()
    files = [ct_file(tmp_path, i, study) for i in range(3)]
    reader = hub.token("system/ImagingStudy.rs", client_id="viewer", subject="viewer")
    with FepProcess(cfg), httpx.Client(base_url=hub.root, timeout=60,
                                       headers={"Authorization": f"Bearer {reader}"}) as web:
        done = storescu(dicom_port, *[p for p, _ in files])
        assert done.returncode == 0, done.stderr

        def stored():
            r = web.get(f"/dicom-web/studies/{study}/instances", headers={"Accept": "application/dicom+json"})
            return r.status_code == 200 and {i["00080018"]["Value"][0] for i in r.json()} == {uid for _, uid in files}
        wait_until(stored, timeout=60, what="all instances in the hub")
