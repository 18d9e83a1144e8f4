"""Parsing ``/v2/...`` paths into typed endpoints.

Repository names contain slashes, so the name is whatever precedes the final
``/blobs/...``, ``/manifests/...``, ``/tags/list`` or ``/referrers/...`` segment; matching
here (not in the web framework's router) lets a bad name get ``NAME_INVALID``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from core.errors import NotFound
from core.reference import RepositoryName, parse_repository_name


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
class Endpoint:
    kind: Kind
    name: RepositoryName | None = None
    argument: str | None = None  # digest, reference or upload id, still unparsed


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
        return Endpoint(Kind.BASE)
    if not path.startswith("/v2/"):
        raise NotFound(detail={"path": path[:300]})
    rest = path[len("/v2/") :]
    if rest in ("_catalog", "_catalog/"):
        return Endpoint(Kind.CATALOG)
    for kind, pattern in _PATTERNS:
        match = pattern.match(rest)
        if match is not None:
            name = parse_repository_name(match.group("name"))
            argument = match.groupdict().get("arg")
            return Endpoint(kind, name, argument)
    raise NotFound(detail={"path": path[:300]})
