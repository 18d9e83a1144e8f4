"""Several origin processes on one PostgreSQL database and one S3 bucket (moto), as behind a
load balancer: the rig of the scale-out tests (integration and interop tiers).

Each origin is a real ``depot-registry origin serve`` process with a data directory of its
own (nothing shared through it) and one settings file naming the shared database (a fresh
schema, dropped afterwards), the bucket, the S3 credentials files and the upstream credentials
key (origins sharing a database share it).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.postgres import fresh_schema, require_postgres
from tests.processes import OriginProcess, origin_process
from tests.s3server import TEST_CREDENTIALS, S3Server, create_bucket, moto_server, require_moto


@dataclass
class Cluster:
    """The shared settings; origins are started (and restarted) with :meth:`origin`."""

    root: Path
    config: Path
    database_url: str
    started: int = 0
    logs: list[Path] = field(default_factory=list)

    @asynccontextmanager
    async def origin(self, name: str | None = None) -> AsyncIterator[OriginProcess]:
        """One more origin process on the shared database and bucket (``name`` reuses a data
        directory: a restart)."""
        self.started += 1
        name = name or f"origin-{self.started}"
        data_dir = self.root / name
        data_dir.mkdir(exist_ok=True)
        log = self.root / f"{name}.log"
        self.logs.append(log)
        args = ["--no-auth", "--config", str(self.config)]
        async with origin_process(data_dir, log, args) as running:
            yield running

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs if path.exists())


@contextmanager
def shared_backends(root: Path) -> Iterator[tuple[str, S3Server, str]]:
    """(database URL on a fresh schema, moto server, bucket): what a cluster shares."""
    require_moto()
    server_url = require_postgres()
    root.mkdir(parents=True, exist_ok=True)
    with fresh_schema(server_url) as database_url, moto_server(root / "moto.log") as s3:
        bucket = f"scale-{uuid.uuid4().hex[:16]}"
        create_bucket(s3, bucket)
        yield database_url, s3, bucket


@asynccontextmanager
async def cluster(
    root: Path, settings: Sequence[str] = (), *, storage: str = "s3"
) -> AsyncIterator[Cluster]:
    """Shared backends and a settings file; ``settings`` are extra TOML lines. ``storage``:
    ``s3`` (the moto bucket) or ``file`` (one directory every origin uses, as a volume
    mounted on every host would be)."""
    with shared_backends(root) as (database_url, s3, bucket):
        if storage == "file":
            settings = [f'storage_url = "file://{root / "shared-storage"}"', *settings]
        config = _write_settings(root, database_url, s3, bucket, settings)
        yield Cluster(root, config, database_url)


def _write_settings(
    root: Path, database_url: str, s3: S3Server, bucket: str, settings: Sequence[str]
) -> Path:
    (root / "s3-key-id").write_text(TEST_CREDENTIALS[0])
    (root / "s3-secret").write_text(TEST_CREDENTIALS[1])
    key = root / "upstream-credentials.key"
    key.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    key.chmod(0o600)
    lines = [
        f'database_url = "{database_url}"',
        *(
            []
            if any(line.startswith("storage_url") for line in settings)
            else [f'storage_url = "s3://{bucket}?endpoint={s3.endpoint}&region=us-east-1"']
        ),
        f'storage_access_key_id_file = "{root / "s3-key-id"}"',
        f'storage_secret_access_key_file = "{root / "s3-secret"}"',
        f'upstream_credentials_key_file = "{key}"',
        "graceful_timeout_seconds = 3",
        *settings,
    ]
    config = root / "origin.toml"
    config.write_text("\n".join(lines) + "\n")
    return config
