"""Operating the front-end processor: status, dead letters (list, show, replay), heartbeats,
token refresh, TLS on the MLLP port, configuration errors."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
import sys

from adapters.mllp import MLLPFrameReader, frame

from .conftest import ROOT, FepProcess, MllpClient, adt, msa, pending_count, wait_until, write_site


def fep_cli(cfg, *args, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "yilian.cli", "fep", *args, "--config", str(cfg)],
                         capture_output=True, timeout=60, cwd=ROOT)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_status_shows_the_backlog_while_the_hub_is_away(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    fake_hub.fail_next = 10 ** 6
    with FepProcess(cfg), MllpClient(port) as c:
        for i in range(3):
            assert msa(c.send(adt(f"S{i}", "P1")))[0] == "AA"
        status = wait_until(lambda: (s := json.loads(fep_cli(cfg, "status", "--json").stdout))["last_status"]
                            and s["last_status"]["feeds"].get("his-adt", {}).get("received") == 3 and s,
                            what="status with the feed's counters")
        assert status["outbox"]["depth"] == 3 and status["pending_by_feed"] == {"his-adt": 3}
        last = status["last_status"]
        assert last["receivers"]["his"]["connections"] == 1 and last["receivers"]["his"]["port"] == port
        assert "503" in last["last_forward_error"]
        text = fep_cli(cfg, "status").stdout.decode()
        assert "pending 3" in text and "feed his-adt: 3 pending" in text
        fake_hub.fail_next = 0
        wait_until(lambda: pending_count(tmp_path) == 0, what="drained")


def test_dead_letters_list_show_and_replay(tmp_path, fake_hub):
    cfg, port = write_site(tmp_path, fake_hub.url)
    poison = adt("X1", "P9").replace(b"PV1|1|I", b"PV1|1|I|POISON")
    with FepProcess(cfg), MllpClient(port) as c:
        assert msa(c.send(poison))[0] == "AA"
        assert msa(c.send(adt("X2", "P9")))[0] == "AA"          # the queue keeps moving behind it
        wait_until(lambda: pending_count(tmp_path) == 0, what="forwarded or dead-lettered")
        listed = fep_cli(cfg, "dead-letters", "list").stdout.decode()
        line = next(x for x in listed.splitlines() if "poison" in x)
        dead_id = line.split()[0]
        assert "his-adt" in line and "[hub]" in line
        shown = fep_cli(cfg, "dead-letters", "show", dead_id).stdout.decode()
        assert "poison message rejected by rule" in shown and f"{len(poison)} bytes" in shown
        assert fep_cli(cfg, "dead-letters", "show", dead_id, "--raw").stdout == poison
        fake_hub.reject_marker = b"\x00never"                     # the hub side was fixed
        out = fep_cli(cfg, "dead-letters", "replay", dead_id).stdout.decode()
        new_id = out.split("back in the outbox as ")[1].strip()
        wait_until(lambda: new_id in fake_hub.results, what="replayed item forwarded")
        assert fake_hub.results[new_id]["status"] == "normalized"
        again = fep_cli(cfg, "dead-letters", "replay", dead_id, check=False)
        assert again.returncode == 1 and b"already replayed" in again.stderr
    assert fep_cli(cfg, "dead-letters", "show", "nope", check=False).returncode == 1


def test_heartbeats_carry_the_contracts_fields_and_tokens_are_refreshed(tmp_path, fake_hub):
    fake_hub.token_lifetime_s = 1                               # refreshed at 80%: several tokens
    cfg, port = write_site(tmp_path, fake_hub.url, heartbeat_s=0.2)
    with FepProcess(cfg), MllpClient(port) as c:
        assert msa(c.send(adt("H1", "P1")))[0] == "AA"
        wait_until(lambda: len(fake_hub.tokens) >= 3, what="tokens refreshed")
        assert msa(c.send(adt("H2", "P1")))[0] == "AA"
        wait_until(lambda: any(h["feeds"].get("his-adt", {}).get("forwarded") == 2 for h in fake_hub.heartbeats),
                   what="a heartbeat counting both messages")
    hb = next(h for h in fake_hub.heartbeats if h["feeds"].get("his-adt", {}).get("forwarded") == 2)
    assert {"organization", "node", "version", "started_at", "uptime_s", "receivers", "feeds", "outbox",
            "dead_letters", "disk_free_bytes", "sent_at"} <= set(hb)
    assert hb["organization"] == "HOSPA" and hb["node"] == "test-fep"
    assert hb["receivers"]["his"]["connections"] == 1
    assert hb["outbox"] == {"depth": 0, "oldest_pending_age_s": 0.0} and hb["disk_free_bytes"] > 0
    assert fake_hub.control_ids() == ["H1", "H2"]


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "fep.crt", tmp_path / "fep.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_mllp_over_tls(tmp_path, fake_hub):
    cert_file, key_file = _self_signed(tmp_path)
    extra = f'[mllp.tls]\ncert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
    cfg, port = write_site(tmp_path, fake_hub.url, extra=extra)
    ctx = ssl.create_default_context(cafile=str(cert_file))
    with FepProcess(cfg):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(frame(adt("T1", "P1")))
            reader, acks = MLLPFrameReader(), []
            while not acks:
                acks = reader.feed(tls.recv(65536))
            assert msa(acks[0]) == ("AA", "T1")
        with MllpClient(port) as plain:                           # plain MLLP is not spoken there
            plain.sock.sendall(frame(adt("T2", "P1")))
            try:
                got = plain.sock.recv(100)
            except OSError:
                got = b""
            assert b"MSA" not in got
        wait_until(lambda: fake_hub.control_ids() == ["T1"], what="forwarded")


def test_configuration_errors_are_clear(tmp_path, fake_hub):
    cfg, _ = write_site(tmp_path, fake_hub.url)
    (tmp_path / "client.secret").unlink()
    out = subprocess.run([sys.executable, "-m", "yilian.cli", "fep", "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "cannot read client secret file" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('organization = "HOSPA"\nnode = "n"\n[hub]\nurl = "http://x"\nclient_id = "c"\nunknown = 1\n')
    out = subprocess.run([sys.executable, "-m", "yilian.cli", "fep", "status", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "unknown" in out.stderr and "Extra inputs are not permitted" in out.stderr
