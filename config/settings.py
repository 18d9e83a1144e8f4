"""Frozen settings, one dataclass per process kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class OriginSettings:
    data_dir: Path = Path("./data")
    listen: str = "127.0.0.1:5000"
    #: SQLAlchemy URL; empty means a SQLite file inside ``data_dir``.
    database_url: str = ""
    workers: int = 1
    max_manifest_bytes: int = 4 * 1024 * 1024
    #: Upload sessions untouched for this long are purged (their staged bytes deleted).
    upload_timeout_seconds: float = 24 * 3600
    upload_sweep_interval_seconds: float = 600
    #: Advertised as OCI-Chunk-Min-Length.
    chunk_min_length_bytes: int = 0
    #: In-flight requests get this long to finish on SIGTERM/Ctrl-C.
    graceful_timeout_seconds: float = 30

    #: Off only for local experiments (``--no-auth``); then only loopback addresses bind.
    auth: bool = True
    #: With ``registry.example`` here, ``acme.registry.example`` addresses org ``acme``.
    base_domain: str = ""
    #: ``service`` of the Docker token protocol and the audience of every bearer token.
    token_service: str = "depot-registry"
    token_issuer: str = "depot-registry"
    token_ttl_seconds: float = 300
    #: Failed token exchanges allowed per client address per window before 429.
    token_failures_allowed: int = 10
    token_failure_window_seconds: float = 60
    #: OIDC issuers over plain http on loopback (tests and local experiments only).
    oidc_allow_insecure_loopback: bool = False

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"
