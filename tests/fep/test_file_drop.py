"""File drop: only complete files are taken, stored, forwarded, then moved to done/ or error/."""

from __future__ import annotations

import os
import time

from .conftest import FepProcess, wait_until, write_site


def site(tmp_path, hub_url, stable_s=0.0):
    inbox = tmp_path / "exports"
    extra = f'[[file_drop]]\nname = "his-export"\nfeed = "his-files"\npath = "{inbox}"\nstable_s = {stable_s}\n' \
            f'poll_s = 0.05\n'
    cfg, _ = write_site(tmp_path, hub_url, extra=extra)
    return cfg, inbox


def names(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_complete_files_are_forwarded_and_moved_to_done(tmp_path, fake_hub):
    cfg, inbox = site(tmp_path, fake_hub.url)
    inbox.mkdir()
    csv = "门诊号,姓名,诊断\n0001,王芳,J06.9\n".encode("utf-8")
    with FepProcess(cfg):
        partial = inbox / "visits.csv.part"          # still being written: never taken
        partial.write_bytes(csv[:10])
        (inbox / ".hidden.json").write_bytes(b"{}")
        tmp = inbox / "staging.tmp"
        tmp.write_bytes(csv)
        os.replace(tmp, inbox / "visits.csv")       # the rename-in protocol
        (inbox / "lab.json").write_bytes(b'{"resultType": "lab", "items": []}')
        (inbox / "note.xml").write_bytes(b"<ClinicalDocument xmlns='urn:hl7-org:v3'/>")
        wait_until(lambda: names(inbox / "done") == ["lab.json", "note.xml", "visits.csv"], what="files done")
        assert (inbox / "visits.csv.part").exists() and (inbox / ".hidden.json").exists()
        got = {m["filename"]: m for m in fake_hub.accepted}
        assert set(got) == {"visits.csv", "lab.json", "note.xml"}
        assert got["visits.csv"]["kind"] == "csv" and got["visits.csv"]["payload"] == csv
        assert got["lab.json"]["kind"] == "json" and got["note.xml"]["kind"] == "cda"
        assert all(m["feed"] == "his-files" for m in got.values())
        assert (inbox / "done" / "visits.csv").read_bytes() == csv
        # the same export dropped again is not forwarded a second time
        (inbox / "again.tmp").write_bytes(csv)
        os.replace(inbox / "again.tmp", inbox / "visits.csv")
        wait_until(lambda: len(names(inbox / "done")) == 4, what="duplicate moved to done")
        assert len(fake_hub.accepted) == 3


def test_rejected_and_unknown_files_go_to_error_with_the_reason(tmp_path, fake_hub):
    cfg, inbox = site(tmp_path, fake_hub.url)
    inbox.mkdir()
    with FepProcess(cfg):
        (inbox / "bad.csv").write_bytes(b"id,POISON\n1,2\n")
        (inbox / "image.bmp").write_bytes(b"BM....")
        (inbox / "empty.json").write_bytes(b"")
        wait_until(lambda: len(names(inbox / "error")) == 6, what="three files in error/ with reasons")
    err = inbox / "error"
    assert "poison message rejected by rule" in (err / "bad.csv.error.txt").read_text()
    assert "unknown export type '.bmp'" in (err / "image.bmp.error.txt").read_text()
    assert "empty file" in (err / "empty.json.error.txt").read_text()
    assert (err / "bad.csv").read_bytes() == b"id,POISON\n1,2\n"


def test_a_file_still_growing_waits_for_a_stable_size(tmp_path, fake_hub):
    cfg, inbox = site(tmp_path, fake_hub.url, stable_s=1.0)
    inbox.mkdir()
    written = b""
    with FepProcess(cfg):
        growing = inbox / "big.csv"
        with open(growing, "wb") as f:
            (inbox / "marker.csv").write_bytes(b"x\n")
            while "marker.csv" not in names(inbox / "done"):   # keep writing until a later file was taken
                chunk = f"{len(written)},row\n".encode()
                f.write(chunk)
                f.flush()
                written += chunk
                time.sleep(0.02)
            assert growing.exists()                  # still being written: left alone
        wait_until(lambda: "big.csv" in names(inbox / "done"), what="the grown file taken once stable")
    got = {m["filename"]: m["payload"] for m in fake_hub.accepted}
    assert got["big.csv"] == written
