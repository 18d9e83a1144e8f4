"""The origin's storage driver, as its settings choose (``storage_url``).

boto3 is an optional dependency (``pip install depot-registry[s3]``): the S3 modules are
imported only when an ``s3://`` URL asks for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from config.settings import OriginSettings
from core.errors import ConfigError
from core.storage.driver import StorageDriver
from core.storage.filesystem import FilesystemDriver
from core.storage.location import FileLocation, S3Credentials, parse_storage_url


@asynccontextmanager
async def open_storage(settings: OriginSettings) -> AsyncIterator[StorageDriver]:
    """The driver for ``settings.storage_url``, open while the block runs.

    ConfigError for an unusable URL or credential files; StorageError when the bucket does
    not answer (checked once here, so a misconfigured origin fails at start, not per request).
    """
    location = parse_storage_url(settings.storage_url)
    if isinstance(location, FileLocation):
        yield FilesystemDriver(location.root or settings.data_dir / "storage")
        return
    try:
        from core.storage.s3 import S3Driver
    except ImportError as exc:
        raise ConfigError(
            f"storage_url is s3:// but {exc.name} is not installed "
            "(pip install 'depot-registry[s3]')"
        ) from exc
    driver = await S3Driver.open(location, storage_credentials(settings))
    try:
        yield driver
    finally:
        await driver.aclose()


def storage_credentials(settings: OriginSettings) -> S3Credentials | None:
    """Credentials from the ``storage_*_file`` settings, else the AWS environment variables,
    else None (botocore's default chain: config files, instance or container credentials)."""
    key_file, secret_file = (
        settings.storage_access_key_id_file,
        settings.storage_secret_access_key_file,
    )
    if key_file is not None or secret_file is not None:
        if key_file is None or secret_file is None:
            raise ConfigError(
                "storage_access_key_id_file and storage_secret_access_key_file go together"
            )
        return S3Credentials(_read_secret(key_file), _read_secret(secret_file))
    if settings.aws_access_key_id or settings.aws_secret_access_key:
        if not (settings.aws_access_key_id and settings.aws_secret_access_key):
            raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together")
        return S3Credentials(
            settings.aws_access_key_id,
            settings.aws_secret_access_key,
            settings.aws_session_token or None,
        )
    return None


def _read_secret(path: Path) -> str:
    # The error names the file, never its content.
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not value or "\n" in value:
        raise ConfigError(f"{path} must hold one non-empty line")
    return value
