"""Peers from the CLI, the ``[dicom]`` TOML table, and Chinese person names end to end."""

from __future__ import annotations

import os
import subprocess
import sys

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.dicom import data
from tests.dicom.test_dimse import find, store


def test_dicom_table_of_the_config_file(tmp_path, monkeypatch):
    from hub.config import load_settings

    cfg = tmp_path / "yilian.toml"
    cfg.write_text('[hub]\nport = 9000\n[dicom]\nenabled = true\nae_title = "HUB_A"\nport = 11999\n'
                   '[dicom.aes]\nPACS_A = "10.0.0.5:104@hosp-a"\n')
    monkeypatch.setenv("YILIAN_CONFIG", str(cfg))
    s = load_settings()
    assert (s.port, s.dicom_enabled, s.dicom_ae_title, s.dicom_port) == (9000, True, "HUB_A", 11999)
    from hub.dicom.peers import parse_peer
    p = parse_peer("PACS_A", s.dicom_aes["PACS_A"])
    assert (p.host, p.port, p.org) == ("10.0.0.5", 104, "hosp-a")


def test_yilian_dicom_ae_add_list_remove(tmp_path):
    env = {**os.environ, "YILIAN_DATA_DIR": str(tmp_path), "YILIAN_TOKEN_SECRET": "x" * 32}
    env.pop("YILIAN_CONFIG", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "yilian.cli", "dicom", "ae", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    assert cli("add", "PACS_B", "127.0.0.1", "4100", "--org", "hosp-b").returncode == 0
    listed = cli("list")
    assert listed.returncode == 0 and "PACS_B" in listed.stdout and "127.0.0.1:4100" in listed.stdout
    assert cli("add", "A_TITLE_LONGER_THAN_16", "h", "1").returncode != 0
    assert cli("remove", "PACS_B").returncode == 0
    assert "PACS_B" not in cli("list").stdout


def test_chinese_names_in_gb18030_are_found_by_dimse_and_qido(pacs):
    uid = generate_uid()
    ds = data.instance(study_uid=uid, series_uid=generate_uid(), patient_id="CN-1", name="王^芳",
                       charset="GB18030")
    assert store(pacs, [ds]) == [0]
    ident = Dataset()
    ident.SpecificCharacterSet = "ISO_IR 192"
    ident.QueryRetrieveLevel, ident.PatientName, ident.StudyInstanceUID = "STUDY", "王*", ""
    (rsp,) = find(pacs, ident)
    assert rsp.StudyInstanceUID == uid and str(rsp.PatientName) == "王^芳"
    import httpx
    r = httpx.get(f"{pacs.root}/dicom-web/studies", params={"PatientName": "王*"},
                  headers={"Authorization": f"Bearer {pacs.token()}"})
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in r.json()] == ["王^芳"]
