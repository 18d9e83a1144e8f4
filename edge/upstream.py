"""The origin as the edge's upstream: :class:`edge.upstream_types.Upstream` over the registry
client, authenticated as the edge (Basic ``x-token:<edge token>``, sent up front: origin
takes it on ``/v2`` directly, so no token round trip).

Repository names here are INTERNAL (``<org>/<path>``): on origin's own host a path-style name
is the internal name. The client maps failures into :mod:`core.errors`; what they mean for
the edge is decided here: the edge credential refused (401/403) → ``Unavailable``, logged (an
operator must fix it); 429 → ``Unavailable`` carrying origin's ``Retry-After`` (the cache may
serve stale); 404 → the matching ``*Unknown``; 5xx, transport errors → ``Unavailable``.
Origin's control plane (JWKS, projects, token exchange) is :mod:`edge.origin_control`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from core.client.credentials import x_token_credentials
from core.client.listings import Referrer
from core.client.registry import RegistryClient
from core.digest import Digest
from core.errors import Denied, TooManyRequests, Unauthorized, Unavailable
from core.reference import RepositoryName, Tag
from edge.upstream_types import UpstreamBlob, UpstreamManifest

log = logging.getLogger("depot.edge.upstream")


class OriginUpstream:
    def __init__(self, client: RegistryClient) -> None:
        """``client`` speaks to origin with the edge credential (see :meth:`open`)."""
        self._client = client

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        origin_url: str,
        edge_token: str,
        *,
        max_connections: int = 16,
        verify: ssl.SSLContext | bool = True,
    ) -> AsyncIterator[OriginUpstream]:
        """An upstream with its own connection pool, closed on exit."""
        async with RegistryClient.open(
            origin_url,
            x_token_credentials(edge_token),
            preemptive_basic=True,
            max_connections=max_connections,
            verify=verify,
        ) as client:
            yield cls(client)

    @asynccontextmanager
    async def open_blob(
        self, repository: RepositoryName, digest: Digest
    ) -> AsyncIterator[UpstreamBlob]:
        with _as_upstream_errors(f"GET blob {digest}"):
            async with self._client.open_blob(repository, digest) as blob:
                chunks = _mapped(blob.chunks)
                try:
                    yield UpstreamBlob(blob.length, chunks, blob.socket_body)
                finally:
                    await chunks.aclose()

    @asynccontextmanager
    async def open_blob_from(
        self, repository: RepositoryName, digest: Digest, offset: int
    ) -> AsyncIterator[UpstreamBlob]:
        """The blob from ``offset`` on (by ``Range``); its ``size`` is the bytes left."""
        with _as_upstream_errors(f"GET blob {digest} from {offset}"):
            async with self._client.open_blob(repository, digest, offset=offset) as blob:
                chunks = _mapped(blob.chunks)
                try:
                    yield UpstreamBlob(blob.length, chunks)
                finally:
                    await chunks.aclose()

    async def blob_size(self, repository: RepositoryName, digest: Digest) -> int | None:
        with _as_upstream_errors(f"HEAD blob {digest}"):
            return await self._client.blob_size(repository, digest)

    async def get_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> UpstreamManifest:
        with _as_upstream_errors(f"GET manifest {repository}@{reference}"):
            fetched = await self._client.get_manifest(repository, reference)
        return UpstreamManifest(fetched.digest, fetched.media_type, fetched.payload)

    async def head_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> Digest | None:
        with _as_upstream_errors(f"HEAD manifest {repository}@{reference}"):
            return await self._client.head_manifest(repository, reference)

    async def referrers(
        self, repository: RepositoryName, subject: Digest
    ) -> tuple[Referrer, ...] | None:
        """Origin's referrers of ``subject`` (for the push relay; pulls pass them through)."""
        with _as_upstream_errors(f"GET referrers {repository}@{subject}"):
            found = await self._client.referrers(repository, subject)
        return None if found is None else found.manifests


@contextmanager
def _as_upstream_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (Unauthorized, Denied) as exc:
        log.error("origin refused the edge credential: %s -> %d", what, exc.status)
        raise Unavailable("edge credential rejected by origin") from exc
    except TooManyRequests as exc:
        raise Unavailable("origin is rate limiting", headers=exc.headers) from exc


async def _mapped(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """``chunks``, with failures while reading mapped as above."""
    with _as_upstream_errors("reading a blob"):
        async for chunk in chunks:
            yield chunk
