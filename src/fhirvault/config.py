"""The one home of fhirvault's settings (environment prefix FHIRVAULT_, or a TOML file)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

StorageMode = Literal["inline", "database", "filesystem", "s3"]
ScanMode = Literal["off", "record", "block"]

ENV_PREFIX = "FHIRVAULT_"
# The database drivers fhirvault ships with (SQLite embedded, PostgreSQL).
DATABASE_SCHEMES = ("sqlite+aiosqlite://", "postgresql+psycopg://")


class Settings(BaseSettings):
    """Every knob of the server; see README 'Configuration'."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=0, ge=0, description="server processes; 0: one per CPU core this process may use")
    data_dir: Path = Path("./fhirvault-data")
    database_url: str = ""
    # PostgreSQL connections each server process keeps open (pool size) and may open beyond them under
    # load (overflow, closed when returned): a cluster of N processes needs N x (size + overflow) of the
    # server's max_connections at peak. SQLite ignores both.
    database_pool_size: int = Field(default=10, ge=1, le=1000, description="PostgreSQL connections kept per process")
    database_max_overflow: int = Field(default=20, ge=0, le=1000,
                                       description="PostgreSQL connections opened beyond the pool under load")
    # SQLite: seconds between the checkpoints each server process runs beside the requests, which copy the
    # write-ahead log back into the database (store/database.py SQLITE_WAL_AUTOCHECKPOINT is the fallback).
    sqlite_checkpoint_seconds: float = Field(default=1.0, gt=0, le=86400,
                                             description="seconds between SQLite checkpoints beside the requests")
    public_base_url: str = ""
    log_level: str = "info"

    # Binary storage
    storage_mode: StorageMode = "filesystem"
    storage_dir: Path | None = None
    inline_max_bytes: int = 64 * 1024
    max_binary_bytes: int = 8 * 1024**3
    max_json_bytes: int = 64 * 1024**2
    pending_blob_grace_seconds: int = 3600
    # How often each node lists its blob store for bytes no blob row owns (older than the grace period).
    leftover_scan_seconds: int = Field(default=3600, ge=1, description="seconds between scans for ownerless bytes")
    # tus resumable uploads (POST {FHIR base}/Binary/$upload): an unfinished upload with no PATCH for this
    # long expires, and its bytes are swept; a finished one keeps answering HEAD with its Binary until then.
    upload_expiry_seconds: int = Field(default=86400, ge=1, description="seconds an idle resumable upload lives")
    # Access-Control-Allow-Origin of the tus upload route, for browser tus clients on another origin
    # (tus-js-client, Uppy); empty: no CORS headers.
    upload_cors_origin: str = ""
    # Origins (comma-separated, or *) whose browser apps may call the FHIR API and the token endpoint (CORS,
    # http/cors.py); empty: no CORS headers there.
    cors_origins: str = ""
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_redirect_downloads: bool = False
    # Content equal to a committed blob's (SHA-256 and size) refers to that blob instead of being stored
    # again (store/blobs.py BlobRegistry.settle); off: every upload keeps its own copy.
    dedup_enabled: bool = True
    # Direct uploads to the object store (s3 mode, Binary/$upload-url): how long the presigned URLs live
    # (at most half of PENDING_BLOB_GRACE_SECONDS, so a completion begun in time always has as long
    # again before the grace sweep), and above which size the upload goes in parts of this size.
    direct_upload_ttl: int = Field(default=900, ge=1, description="seconds a presigned upload URL is valid")
    direct_upload_part_bytes: int = Field(default=64 * 1024**2, ge=5 * 1024**2, le=1024**3,
                                          description="uploads above this size go in parts of this size")

    # Attachments and signed URLs
    rewrite_attachment_urls: bool = True
    signed_url_ttl: int = 3600
    signed_url_window: int = 600
    storage_cors_origin: str = "*"
    media_raw_enabled: bool = True
    conditional_delete_max: int = Field(
        default=1, ge=1, description="resources one conditional delete may remove; more matches -> 412")
    # Signed storage URLs on another origin than the API (e.g. https://files.example.org): stored bytes,
    # whatever they hold, then never run on the API's origin. Empty: PUBLIC_BASE_URL.
    storage_public_base_url: str = ""
    # Content types served inline (shown by the browser) when their bytes are downloaded; every other
    # type is sent with `Content-Disposition: attachment`. `type/*` matches a whole top-level type.
    # Never list active types (text/html, image/svg+xml, XML, JavaScript): they would run as pages.
    inline_content_types: str = ("image/png,image/jpeg,image/gif,image/webp,image/avif,image/bmp,"
                                 "audio/*,video/*,text/plain")
    # Every resource written is validated against the R4 base definitions (fhir/validation.py);
    # turning this off stores whatever JSON object a client sends (for bulk loads of trusted data).
    validation_enabled: bool = True
    # Search: the word index behind `_text` and `_content` (a row per distinct word of each resource's
    # text, about a third of all index rows). Off by default, as full-text search is an add-on in other
    # FHIR servers too: it costs a third more index bytes and writes. Off: no word rows are written and
    # both parameters are refused (400) and left out of the CapabilityStatement; turning it on later
    # needs `fhirvault reindex`.
    search_text_index: bool = False

    # Security
    token_lifetime: int = Field(default=3600, ge=0, description="seconds an access token is valid")
    auth_failure_limit: int = Field(default=10, ge=1, description="failed client authentications per window")
    auth_failure_window: int = Field(default=300, ge=1, description="seconds")

    # Ingestion of external URLs
    ingest_enabled: bool = True
    ingest_allow_hosts: str = ""
    ingest_allow_prefixes: str = ""
    ingest_max_attempts: int = 5
    ingest_connect_timeout: float = 10.0
    ingest_read_timeout: float = 30.0
    ingest_total_timeout: float = 600.0
    ingest_max_redirects: int = 5
    ingest_backoff_seconds: float = 2.0
    job_workers: int = Field(default=1, description="background job loops per server process")
    job_lease_seconds: float = 60.0  # a job whose worker stopped renewing this long is run again

    # Malware scanning (see README 'Malware scanning'): off, record (scan and show the verdict) or block
    # (also refuse to serve content that is not known clean). Off by default: scanning needs a clamd.
    scan_mode: ScanMode = "off"
    # Where clamd listens: tcp://host:port or unix:///path/to/clamd.ctl
    scan_clamd_url: str = "tcp://127.0.0.1:3310"
    # Content above this many bytes is not sent to clamd and recorded as skipped; keep it at or below
    # clamd's StreamMaxLength (Debian's default: 25 MiB), or clamd refuses the stream (also `skipped`).
    scan_max_bytes: int = Field(default=25 * 1024**2, ge=0, description="largest content scanned, in bytes")
    scan_timeout_seconds: float = Field(default=120.0, gt=0, description="one scan, connection to verdict")
    scan_max_attempts: int = Field(default=8, ge=1, description="attempts of one scan job while clamd fails")
    scan_backoff_seconds: float = Field(default=5.0, ge=0, description="delay before attempt n+1: base x 2^(n-1)")

    # Connections and shutdown (see README 'Operating')
    shutdown_timeout_seconds: float = Field(
        default=30.0, ge=0, description="on SIGTERM, how long in-flight requests and jobs may take to finish")
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="request line and headers, in bytes")
    header_timeout_seconds: float = Field(
        default=20.0, gt=0, description="time a client has to send the whole request line and headers")
    body_idle_timeout_seconds: float = Field(
        default=60.0, gt=0, description="time a request body may go without a byte arriving")

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        if url and not url.startswith(DATABASE_SCHEMES):
            raise ValueError(f"must start with {' or '.join(DATABASE_SCHEMES)}")
        return url

    @field_validator("scan_clamd_url")
    @classmethod
    def _clamd_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if not ((parts.scheme == "tcp" and parts.hostname and parts.port) or (parts.scheme == "unix" and parts.path)):
            raise ValueError("must be tcp://host:port or unix:///path/to/clamd.socket")
        return url

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{(self.data_dir / 'fhirvault.db').resolve()}"
        if self.storage_dir is None:
            self.storage_dir = self.data_dir / "blobs"
        if not self.public_base_url:
            self.public_base_url = f"http://{self.host}:{self.port}"
        self.public_base_url = self.public_base_url.rstrip("/")
        self.storage_public_base_url = self.storage_public_base_url.rstrip("/")
        if self.direct_upload_ttl > self.pending_blob_grace_seconds // 2:
            self.direct_upload_ttl = max(1, self.pending_blob_grace_seconds // 2)
        if self.signed_url_window > self.signed_url_ttl // 6:
            self.signed_url_window = max(1, self.signed_url_ttl // 6)
        return self

    @property
    def worker_processes(self) -> int:
        """How many server processes `serve` runs: `workers`, or one per usable CPU core when it is 0."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)

    @property
    def fhir_base_url(self) -> str:
        """The FHIR base URL clients use: PUBLIC_BASE_URL + "/fhir/R4"."""
        return f"{self.public_base_url}/fhir/R4"

    @property
    def storage_base_url(self) -> str:
        """Where signed storage URLs point: STORAGE_PUBLIC_BASE_URL, else PUBLIC_BASE_URL."""
        return self.storage_public_base_url or self.public_base_url

    @property
    def inline_types(self) -> frozenset[str]:
        """INLINE_CONTENT_TYPES as a set of lower-case media types (stored bytes of these types are served
        inline, others as attachments)."""
        return frozenset(t.strip().lower() for t in self.inline_content_types.split(",") if t.strip())

    @property
    def is_sqlite(self) -> bool:
        """Whether DATABASE_URL names SQLite."""
        return self.database_url.startswith("sqlite")

    @property
    def ingest_allowed_hosts(self) -> set[str]:
        """INGEST_ALLOW_HOSTS as a set of lower-case host names or addresses that ingestion may fetch from
        even when internal."""
        return {h.strip().lower() for h in self.ingest_allow_hosts.split(",") if h.strip()}

    @property
    def ingest_allowed_prefixes(self) -> list[str]:
        """INGEST_ALLOW_PREFIXES as a list of URL prefixes ingestion may fetch from."""
        return [p.strip() for p in self.ingest_allow_prefixes.split(",") if p.strip()]


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from (lowest first) defaults, a TOML file, the environment, then explicit overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as fh:
            from_file = tomllib.load(fh)
        for key, value in from_file.items():
            if f"{ENV_PREFIX}{key.upper()}" not in os.environ:
                values[key.lower()] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def settings_as_env(settings: Settings) -> dict[str, str]:
    """The settings as FHIRVAULT_ variables, so worker processes rebuild the very same Settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


DEFAULT_CLIENT_CONFIG = Path("~/.config/fhirvault/client.toml")


class ClientSettings(BaseSettings):
    """Where the command line client connects: `FHIRVAULT_URL` (the FHIR base URL),
    `FHIRVAULT_CLIENT_ID` + `FHIRVAULT_CLIENT_SECRET` or `FHIRVAULT_TOKEN`, a profile file."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    url: str = ""
    client_id: str = ""
    client_secret: str = ""
    token: str = ""
    token_url: str = ""
    profile: str = ""
    client_config: Path = DEFAULT_CLIENT_CONFIG


def load_client_settings(profile: str | None = None, **overrides: Any) -> ClientSettings:
    """Client settings from (lowest first) the profile's table in the client TOML file (`[default]`
    unless a profile is named), the environment, then explicit overrides (command line options)."""
    from_env = ClientSettings()
    name = profile or from_env.profile or "default"
    path = Path(overrides.get("client_config") or from_env.client_config).expanduser()
    values: dict[str, Any] = {}
    if path.is_file():
        with open(path, "rb") as fh:
            tables = tomllib.load(fh)
        table = tables.get(name)
        if table is None and (profile or from_env.profile):
            raise ValueError(f"no profile [{name}] in {path}")
        for key, value in (table or {}).items():
            if f"{ENV_PREFIX}{key.upper()}" not in os.environ and key.lower() in ClientSettings.model_fields:
                values[key.lower()] = value
    elif profile:
        raise ValueError(f"profile '{profile}' asked for, but there is no client config file {path}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ClientSettings(**values)
