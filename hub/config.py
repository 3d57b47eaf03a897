"""One typed settings object for the hub, read from the environment and an optional TOML file.

Environment variables use the prefix ``YILIAN_`` (``YILIAN_DATABASE_URL``, ``YILIAN_DATA_DIR`` …);
a file named by ``YILIAN_CONFIG`` (TOML, same keys in lower case) is read first and the
environment wins over it. Defaults are safe for one machine: SQLite in ``./data``, listening on
loopback only, tokens required everywhere.
"""

from __future__ import annotations

import os
import tomllib
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YILIAN_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/hub.db"
    )
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    base_url: str | None = Field(default=None, description="public FHIR base, default http://host:port/fhir")
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    # a writer waiting longer for SQLite's write lock (a hung writer, a stuck process holding it)
    # is refused: HTTP 503, DICOM A700, the ingest retries. As long as SQLite's busy timeout.
    database_lock_timeout_s: float = Field(default=30.0, gt=0,
                                           description="how long a write waits for the SQLite write lock")
    # `yilian hub run` upgrades the schema once, then starts its workers with this off, so that
    # they do not load the migration machinery (Alembic, Mako: about 10 MB per process)
    migrate_at_start: bool = Field(default=True, description="upgrade the database schema when a hub process starts")

    # OAuth2 / SMART: the hub issues HS256 or RS256 tokens for registered clients, and accepts
    # tokens of external issuers whose keys are configured. Algorithms are fixed here, never
    # taken from the token header.
    token_issuer: str = "yilian-hub"
    token_audience: str = "yilian-fhir"
    token_algorithm: str = "HS256"
    token_secret: str | None = Field(
        default=None, description="HS256 signing secret; default: a random one kept in <data_dir>/token.secret"
    )
    token_lifetime_s: int = 3600
    trusted_issuers_file: Path | None = Field(
        default=None, description="TOML with [[issuer]] iss, audience, algorithm, public_key_pem"
    )

    default_page_size: int = 50
    max_page_size: int = 1000
    max_include: int = 10_000
    audit_enabled: bool = True

    # master patient index (hub.mpi; docs/mpi.md): Fellegi-Sunter log2 score thresholds.
    # score >= link: linked automatically; >= review: review queue; else a new person. For an
    # index far beyond 10^5 people raise both by log2(people / 100,000) (Thresholds.for_population).
    mpi_link_threshold: float = 22.0
    mpi_review_threshold: float = 10.0
    mpi_max_candidates: int = 200  # records compared per incoming Patient at most

    # HL7 v2 ingest (hub.ingest; docs/ingest.md)
    ingest_workers: int = Field(default=1, description="normalization worker threads in each hub process (0: none)")
    ingest_wait_s: float = Field(default=5.0, description="how long a wait=true request waits for a worker")
    # messages normalized per write transaction: larger amortizes commits, smaller keeps SQLite's
    # single write lock free for other writers (about 13 ms of work per ORU^R01 with 10 OBX)
    ingest_batch: int = Field(default=20, description="messages normalized per database transaction")
    ingest_max_attempts: int = 5  # database hiccups retried this often, then the message is failed
    ingest_heartbeat_stale_s: float = 120.0
    ingest_profiles_file: Path | None = Field(
        default=None, description="TOML of per-sending-facility mapping profiles (mappings.profiles)")

    # DICOM services (hub.dicom; docs/dicom.md). Also read from a ``[dicom]`` table of the TOML
    # file (keys without the prefix). Peers are "TITLE" = "host:port" (C-MOVE destinations and
    # allowed callers); more can be added at run time with ``yilian dicom ae add``.
    # seconds between checks for recognition reference data coming into force (0: never)
    recognition_watch_s: float = 30.0
    dicom_enabled: bool = False
    dicom_ae_title: str = "YILIAN"
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_blob_dir: Path | None = Field(default=None, description="default <data_dir>/dicom")
    dicom_blob_backend: str = "local"  # local | s3
    dicom_s3_bucket: str | None = None
    dicom_s3_endpoint: str | None = None  # S3-compatible endpoint URL; credentials from boto3's chain
    dicom_s3_prefix: str = ""
    dicom_aes: dict[str, str] = Field(default_factory=dict)
    dicom_require_known_caller: bool = True
    dicom_check_caller_host: bool = True
    dicom_pn_case_insensitive: bool = True
    dicom_default_org: str = "hub"
    dicom_issuer_orgs: dict[str, str] = Field(default_factory=dict)  # IssuerOfPatientID -> org code
    dicom_deid_retain: list[str] = Field(default_factory=list)  # PS3.15 Table E.1-1 retain options
    dicom_max_pdu: int = 0  # 0: unlimited

    @cached_property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hub.db').resolve()}"

    @cached_property
    def fhir_base(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}/fhir").rstrip("/")

    def signing_secret(self) -> str:
        """The HS256 secret: configured, or generated once and kept (mode 0600) in the data folder."""
        if self.token_secret:
            return self.token_secret
        path = self.data_dir / "token.secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex())
        return path.read_text().strip()


def load_settings(**overrides) -> HubSettings:
    """Settings from ``$YILIAN_CONFIG`` (TOML), then the environment, then explicit overrides."""
    file_values: dict = {}
    cfg = os.environ.get("YILIAN_CONFIG")
    if cfg:
        with open(cfg, "rb") as f:
            data = tomllib.load(f)
        file_values = dict(data.get("hub", {}))
        file_values.update({f"dicom_{k}": v for k, v in data.get("dicom", {}).items()})
    env_values = HubSettings().model_dump(exclude_unset=True)
    return HubSettings(**{**file_values, **env_values, **overrides})
