"""What the edge needs from its upstream (the origin, or a mirrored registry), as types.

The fill machinery and the routes code against :class:`Upstream`; ``edge/upstream.py``
implements it over HTTP. Failures are :mod:`core.errors` values, translated at that
boundary: ``BlobUnknown``/``ManifestUnknown``/``NameUnknown`` for a 404, ``Unavailable`` for
a transport error, a timeout, a 5xx or a 429 (the cache may then serve stale).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from core.client.socket_body import SocketBody
from core.digest import Digest
from core.reference import RepositoryName, Tag


@dataclass(frozen=True, slots=True)
class UpstreamBlob:
    size: int  # from Content-Length; the fill checks it against the bytes received
    chunks: AsyncIterator[bytes]
    #: The body as a socket the fill reads in a worker thread instead of ``chunks``.
    socket_body: SocketBody | None = None


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    digest: Digest  # of the payload: verified at the boundary, never trusted from a header
    media_type: str
    payload: bytes


class Upstream(Protocol):
    def open_blob(
        self, repository: RepositoryName, digest: Digest
    ) -> AbstractAsyncContextManager[UpstreamBlob]:
        """Stream a blob of ``repository`` (an internal ``<org>/<path>`` name)."""
        ...

    async def blob_size(self, repository: RepositoryName, digest: Digest) -> int | None:
        """HEAD: the size when ``repository`` holds the blob, None when it does not."""
        ...

    async def get_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> UpstreamManifest:
        """GET a manifest by tag or digest."""
        ...

    async def head_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> Digest | None:
        """HEAD: the digest a tag (or digest) resolves to now, None when unknown."""
        ...
