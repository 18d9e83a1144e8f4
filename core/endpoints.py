"""Parsing ``/v2/...`` paths into typed endpoints, once per request.

Repository names contain slashes, so the name is whatever precedes the final
``/blobs/...``, ``/manifests/...``, ``/tags/list`` or ``/referrers/...`` segment; matching
here (not in the web framework's router) lets a bad name get ``NAME_INVALID``.

Every value in the path is parsed here, so an endpoint holds only valid values: a
:class:`~core.reference.RepositoryName`, and per kind a :class:`~core.digest.Digest` (blobs,
referrers), a ``Tag | Digest`` (manifests) or the upload id. A malformed value is refused
with its OCI error (``NAME_INVALID``, ``DIGEST_INVALID``, ``MANIFEST_INVALID`` for a tag); a
path that names no endpoint is ``NOT_FOUND``. The name is checked before the value after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from core.digest import Digest, parse_digest
from core.errors import NotFound
from core.reference import RepositoryName, Tag, parse_manifest_reference, parse_repository_name


class Kind(Enum):
    BASE = "base"
    CATALOG = "catalog"
    BLOB = "blob"
    UPLOADS = "uploads"  # POST a new upload
    UPLOAD = "upload"  # an existing upload session
    MANIFEST = "manifest"
    TAGS = "tags"
    REFERRERS = "referrers"


@dataclass(frozen=True, slots=True)
class BaseEndpoint:
    """``/v2/``: the API version check."""

    kind: ClassVar[Kind] = Kind.BASE
    name: None = None


@dataclass(frozen=True, slots=True)
class CatalogEndpoint:
    """``/v2/_catalog``."""

    kind: ClassVar[Kind] = Kind.CATALOG
    name: None = None


@dataclass(frozen=True, slots=True)
class BlobEndpoint:
    """``/v2/<name>/blobs/<digest>``."""

    kind: ClassVar[Kind] = Kind.BLOB
    name: RepositoryName
    digest: Digest


@dataclass(frozen=True, slots=True)
class UploadsEndpoint:
    """``/v2/<name>/blobs/uploads/``: where a new upload (or a mount) starts."""

    kind: ClassVar[Kind] = Kind.UPLOADS
    name: RepositoryName


@dataclass(frozen=True, slots=True)
class UploadEndpoint:
    """``/v2/<name>/blobs/uploads/<id>``: an upload session. The id is opaque here; the
    registry that issued it checks it (an unknown id is ``BLOB_UPLOAD_UNKNOWN``)."""

    kind: ClassVar[Kind] = Kind.UPLOAD
    name: RepositoryName
    upload_id: str


@dataclass(frozen=True, slots=True)
class ManifestEndpoint:
    """``/v2/<name>/manifests/<tag or digest>``."""

    kind: ClassVar[Kind] = Kind.MANIFEST
    name: RepositoryName
    reference: Tag | Digest


@dataclass(frozen=True, slots=True)
class TagsEndpoint:
    """``/v2/<name>/tags/list``."""

    kind: ClassVar[Kind] = Kind.TAGS
    name: RepositoryName


@dataclass(frozen=True, slots=True)
class ReferrersEndpoint:
    """``/v2/<name>/referrers/<digest>``: the manifests whose subject is ``subject``."""

    kind: ClassVar[Kind] = Kind.REFERRERS
    name: RepositoryName
    subject: Digest


#: Every endpoint; each has ``kind`` and ``name`` (None only for the base and the catalog).
Endpoint = (
    BaseEndpoint
    | CatalogEndpoint
    | BlobEndpoint
    | UploadsEndpoint
    | UploadEndpoint
    | ManifestEndpoint
    | TagsEndpoint
    | ReferrersEndpoint
)
#: An endpoint within a repository.
RepositoryEndpoint = (
    BlobEndpoint
    | UploadsEndpoint
    | UploadEndpoint
    | ManifestEndpoint
    | TagsEndpoint
    | ReferrersEndpoint
)

_PATTERNS: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    (Kind.UPLOADS, re.compile(r"^(?P<name>.+)/blobs/uploads/?$")),
    (Kind.UPLOAD, re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<arg>[^/]+)$")),
    (Kind.BLOB, re.compile(r"^(?P<name>.+)/blobs/(?P<arg>[^/]+)$")),
    (Kind.MANIFEST, re.compile(r"^(?P<name>.+)/manifests/(?P<arg>[^/]+)$")),
    (Kind.TAGS, re.compile(r"^(?P<name>.+)/tags/list$")),
    (Kind.REFERRERS, re.compile(r"^(?P<name>.+)/referrers/(?P<arg>[^/]+)$")),
)


def parse_endpoint(path: str) -> Endpoint:
    """Parse a request path that starts with ``/v2``."""
    if path in ("/v2", "/v2/"):
        return BaseEndpoint()
    if not path.startswith("/v2/"):
        raise NotFound(detail={"path": path[:300]})
    rest = path[len("/v2/") :]
    if rest in ("_catalog", "_catalog/"):
        return CatalogEndpoint()
    for kind, pattern in _PATTERNS:
        match = pattern.match(rest)
        if match is not None:
            name = parse_repository_name(match.group("name"))
            return _typed(kind, name, match.groupdict().get("arg") or "")
    raise NotFound(detail={"path": path[:300]})


def _typed(kind: Kind, name: RepositoryName, argument: str) -> RepositoryEndpoint:
    match kind:
        case Kind.UPLOADS:
            return UploadsEndpoint(name)
        case Kind.UPLOAD:
            return UploadEndpoint(name, argument)
        case Kind.BLOB:
            return BlobEndpoint(name, parse_digest(argument))
        case Kind.MANIFEST:
            return ManifestEndpoint(name, parse_manifest_reference(argument))
        case Kind.TAGS:
            return TagsEndpoint(name)
        case Kind.REFERRERS:
            return ReferrersEndpoint(name, parse_digest(argument))
    raise AssertionError(f"no endpoint of kind {kind}")  # pragma: no cover
