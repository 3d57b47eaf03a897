"""Site-file paths: relative ones are relative to the site file's folder, whatever the working
directory of the service (the TLS files as the outbox and the storage folder)."""

from __future__ import annotations

import os

from front_end_processor.config import load_config
from front_end_processor.mllp_receiver import tls_context

from .test_operations import _self_signed


def test_relative_tls_paths_are_relative_to_the_site_file(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "tls").mkdir(parents=True)
    cert_file, key_file = _self_signed(site / "tls")
    (site / "site.toml").write_text(
        'organization = "HOSPA"\nnode = "hospa-fep-1"\ndata_dir = "data"\n'
        '[hub]\nurl = "https://hub.example.org"\nclient_id = "fep"\nca_file = "tls/fep.crt"\n'
        '[[mllp]]\nname = "his"\nport = 0\n'
        f'[mllp.tls]\ncert_file = "tls/{cert_file.name}"\nkey_file = "tls/{key_file.name}"\n'
        f'client_ca_file = "tls/{cert_file.name}"\n', "utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(os.path.relpath(site / "site.toml"))
    tls = cfg.mllp[0].tls
    assert cfg.hub.ca_file == cert_file.resolve()
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (cert_file.resolve(), key_file.resolve(),
                                                                  cert_file.resolve())
    assert tls_context(cfg.mllp[0]) is not None          # the files load from the other folder
