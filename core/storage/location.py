"""Where a registry keeps its bytes: the ``storage_url`` setting, parsed (pure, no I/O).

::

    ""                                   the filesystem driver under the data directory
    file:///srv/registry                 the filesystem driver under that directory
    file://relative/dir                  ... relative to the working directory
    s3://BUCKET                          AWS S3, virtual-hosted addressing, region us-east-1
    s3://BUCKET/PREFIX?region=eu-west-1  keys under PREFIX/ in the bucket
    s3://BUCKET?endpoint=http://127.0.0.1:9000&region=us-east-1
                                         an S3-compatible server (MinIO, Ceph, moto):
                                         path-style addressing, as those servers expect

Credentials never appear in the URL (a URL is logged and shown): they come from the
``storage_*_file`` settings or the standard AWS environment variables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from core.errors import ConfigError

DEFAULT_REGION = "us-east-1"

# S3's bucket naming rules: 3-63 of lowercase letters, digits, dots and hyphens, starting and
# ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{1,40}$")
_S3_PARAMETERS = frozenset({"endpoint", "region"})


@dataclass(frozen=True, slots=True)
class FileLocation:
    """The filesystem driver; ``root`` None means the default under the data directory."""

    root: Path | None = None


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    #: Key prefix inside the bucket: "" or ends with "/".
    prefix: str = ""
    #: Base URL of an S3-compatible server; None means AWS (the region picks the endpoint).
    endpoint: str | None = None
    region: str = DEFAULT_REGION

    @property
    def path_style(self) -> bool:
        """Path-style addressing (``endpoint/bucket/key``) for any explicit endpoint."""
        return self.endpoint is not None


StorageLocation = FileLocation | S3Location


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """Static S3 credentials; the secret parts never show in a repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def parse_storage_url(url: str) -> StorageLocation:
    """Parse a ``storage_url`` setting; ConfigError (naming the problem) when it is unusable."""
    text = url.strip()
    if not text:
        return FileLocation()
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise ConfigError(f"storage_url: {url!r} is not a URL (file://DIR or s3://BUCKET)")
    scheme = scheme.lower()
    if scheme == "file":
        return _parse_file(rest)
    if scheme == "s3":
        return _parse_s3(text)
    raise ConfigError(f"storage_url: unsupported scheme {scheme!r} (use file:// or s3://)")


def _parse_file(rest: str) -> FileLocation:
    if "?" in rest or "#" in rest:
        raise ConfigError("storage_url: a file:// URL takes no query or fragment")
    if not rest:
        raise ConfigError("storage_url: file:// needs a directory")
    return FileLocation(Path(rest))


def _parse_s3(text: str) -> S3Location:
    try:
        parts = urlsplit(text)
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(f"storage_url: {exc}") from exc
    if parts.fragment:
        raise ConfigError("storage_url: an s3:// URL takes no fragment")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ConfigError(
            "storage_url: credentials do not belong in the URL; use the "
            "storage_access_key_id_file / storage_secret_access_key_file settings"
        )
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"storage_url: {bucket!r} is not a valid S3 bucket name")
    prefix = _parse_prefix(parts.path)

    seen: dict[str, str] = {}
    for name, value in query:
        if name not in _S3_PARAMETERS:
            raise ConfigError(f"storage_url: unknown parameter {name!r} (known: endpoint, region)")
        if name in seen:
            raise ConfigError(f"storage_url: parameter {name!r} given twice")
        seen[name] = value
    region = seen.get("region", DEFAULT_REGION)
    if not _REGION.match(region):
        raise ConfigError(f"storage_url: {region!r} is not a region name")
    endpoint = seen.get("endpoint")
    if endpoint is not None:
        endpoint = _parse_endpoint(endpoint)
    return S3Location(bucket=bucket, prefix=prefix, endpoint=endpoint, region=region)


def _parse_prefix(path: str) -> str:
    stripped = path.strip("/")
    if not stripped:
        return ""
    components = stripped.split("/")
    if any(c in ("", ".", "..") for c in components):
        raise ConfigError(f"storage_url: bad key prefix {path!r}")
    return stripped + "/"


def _parse_endpoint(endpoint: str) -> str:
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # raises for a bad port
    except ValueError as exc:
        raise ConfigError(f"storage_url: endpoint {endpoint!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"storage_url: endpoint {endpoint!r} must be http(s)://HOST[:PORT]")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"storage_url: endpoint {endpoint!r} must be http(s)://HOST[:PORT]")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
