"""One TOML file per site: where the hub is, who this node is, what it listens on.

The client secret never sits in the file: ``client_secret_file`` (a path readable by the
service user only) or ``client_secret_env`` (an environment variable, e.g. set by systemd's
``LoadCredential``/``EnvironmentFile``) names where it is.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ConfigError(Exception):
    """The site configuration is missing, unreadable or inconsistent."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HubConfig(_Model):
    url: str = Field(description="hub root URL, e.g. https://hub.example.org (ingest and token endpoints)")
    client_id: str
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    ca_file: Path | None = Field(None, description="CA bundle for the hub's TLS certificate (default: system)")
    timeout_s: float = 30.0
    wait: bool = Field(True, description="ask the hub to wait for normalization so it can return application ACKs")

    @field_validator("url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.rstrip("/")

    def secret(self) -> str:
        if self.client_secret_env:
            val = os.environ.get(self.client_secret_env)
            if val:
                return val.strip()
            if not self.client_secret_file:
                raise ConfigError(f"environment variable {self.client_secret_env} is not set")
        if self.client_secret_file:
            try:
                return self.client_secret_file.read_text("utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read client secret file {self.client_secret_file}: {exc.strerror}") from exc
        raise ConfigError("hub.client_secret_file or hub.client_secret_env is required")


class TlsConfig(_Model):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = Field(None, description="require client certificates signed by this CA")


class MllpConfig(_Model):
    name: str = "mllp"
    feed: str = Field("hl7v2", description="feed name reported to the hub and in heartbeats (e.g. his-adt)")
    host: str = "0.0.0.0"
    port: int = 2575
    tls: TlsConfig | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    application_ack_wait_s: float = Field(
        0.0, description="original mode: wait this long for the hub's application ACK before answering "
                         "with the front-end processor's own AA (0 = answer AA as soon as it is stored)")
    enhanced_application_ack_wait_s: float = Field(
        60.0, description="enhanced mode (MSH-16 AL/ER/SU): how long after the commit ACK the hub's "
                          "application ACK is still relayed on the connection (it never delays the CA)")
    idle_timeout_s: float = 3600.0


class DicomConfig(_Model):
    name: str = "dicom"
    feed: str = "pacs"
    host: str = "0.0.0.0"
    port: int = 11112
    ae_title: str = "YILIAN_FEP"
    storage_dir: Path | None = Field(None, description="where received instances are kept (default data_dir/dicom)")
    forward: str = Field("c-store", description="c-store (to the hub's SCP) or stow-rs")
    hub_host: str | None = None
    hub_port: int = 11112
    hub_ae_title: str = "YILIAN"
    dimse_timeout_s: float = Field(30.0, description="how long the forwarder waits for the hub's C-STORE response "
                                                     "before the batch is tried again")
    stow_url: str | None = Field(None, description="DICOMweb STOW-RS studies URL (default hub url + /dicom-web/studies)")
    stow_scope: str = Field("system/ImagingStudy.c", description="scope asked for the STOW-RS token")


class FileDropConfig(_Model):
    name: str = "files"
    feed: str = "file-drop"
    path: Path
    kind: str | None = Field(None, description="csv/json/xml/cda for every file (default: by extension)")
    charset: str | None = None
    stable_s: float = Field(2.0, description="a file is complete when size and mtime have not changed this long "
                                             "(files whose name starts with '.' or ends with .tmp/.part are skipped)")
    poll_s: float = 1.0


class OutboxConfig(_Model):
    path: Path | None = Field(None, description="SQLite file (default data_dir/outbox.db)")
    retention_s: float = Field(7 * 86400, description="how long confirmed items are kept before deletion")
    max_pages: int | None = Field(None, description="SQLite max_page_count: a hard cap on the outbox size")


class ForwarderConfig(_Model):
    lanes: int = Field(2, ge=1, le=64, description="parallel senders; one patient's items always use one lane")
    batch_size: int = Field(200, ge=1, le=1000)
    batch_bytes: int = Field(16 * 1024 * 1024, description="raw payload bytes per request (the hub takes 64 MiB)")
    linger_s: float = Field(0.05, description="after an idle spell, wait this long for a batch to gather")
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0


class FepConfig(_Model):
    organization: str = Field(description="alliance code of this hospital (the token's org claim)")
    node: str = Field(description="name of this front-end processor, e.g. hospa-fep-1")
    data_dir: Path = Path("/var/lib/yilian-fep")
    hub: HubConfig
    outbox: OutboxConfig = OutboxConfig()
    forwarder: ForwarderConfig = ForwarderConfig()
    heartbeat_s: float = 5.0
    log_level: str = "INFO"
    mllp: list[MllpConfig] = []
    dicom: list[DicomConfig] = []
    file_drop: list[FileDropConfig] = []
    charsets: dict[str, str] = Field(
        default_factory=dict,
        description="MSH-18 overrides per sender: key 'MSH-3^MSH-4 first components' (e.g. 'HIS^HOSPA') or "
                    "'MSH-4' alone, value a character set (e.g. 'GB18030')")

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.data_dir / "outbox.db"

    def charset_for(self, sending_application: str | None, sending_facility: str | None) -> str | None:
        app, fac = sending_application or "", sending_facility or ""
        return self.charsets.get(f"{app}^{fac}") or self.charsets.get(fac) or None


def load_config(path: str | Path) -> FepConfig:
    """Read and validate a site TOML file; relative paths are relative to the file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        cfg = FepConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    base = path.resolve().parent
    if not cfg.data_dir.is_absolute():
        cfg.data_dir = base / cfg.data_dir
    for fd in cfg.file_drop:
        if not fd.path.is_absolute():
            fd.path = base / fd.path
    # as every other path: a service started from another working directory must find the same
    # outbox and kept instances, or what they hold would never be sent
    if cfg.outbox.path is not None and not cfg.outbox.path.is_absolute():
        cfg.outbox.path = base / cfg.outbox.path
    for d in cfg.dicom:
        if d.storage_dir is not None and not d.storage_dir.is_absolute():
            d.storage_dir = base / d.storage_dir
    # the TLS files too (the CA bundle for the hub, the MLLP listeners' certificate, key, client CA)
    if cfg.hub.ca_file is not None and not cfg.hub.ca_file.is_absolute():
        cfg.hub.ca_file = base / cfg.hub.ca_file
    for m in cfg.mllp:
        if m.tls is not None:
            for attr in ("cert_file", "key_file", "client_ca_file"):
                value = getattr(m.tls, attr)
                if value is not None and not value.is_absolute():
                    setattr(m.tls, attr, base / value)
    if cfg.hub.client_secret_file:
        # "${CREDENTIALS_DIRECTORY}/fep-client.secret" works with systemd's LoadCredential=
        secret_file = Path(os.path.expandvars(str(cfg.hub.client_secret_file)))
        cfg.hub.client_secret_file = secret_file if secret_file.is_absolute() else base / secret_file
    return cfg
