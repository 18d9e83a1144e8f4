"""A mirrored registry as the edge's upstream: :class:`edge.upstream_types.Upstream` over one
:class:`core.client.registry.RegistryClient`.

One client per (upstream, credential): the client's authenticator caches bearer tokens per
(realm, service, scope) until shortly before they expire, with at most one token request in
flight per key, so the cache is per (upstream, scope, credential) by construction. The token
service is whatever the upstream's challenge names (Docker Hub's ``auth.docker.io``).

What the upstream's answers mean for the edge:

- 404 → ``BlobUnknown`` / ``ManifestUnknown`` / ``NameUnknown`` (the client maps them);
- 401 or 403 → ``NameUnknown``: to an anonymous client Docker Hub answers 401 for a
  repository that does not exist as for a private one, and a caller of the mirror cannot fix
  the upstream's access anyway. Configured credentials the upstream (or its token service)
  rejects are the operator's to fix: ``Unavailable``, logged, so cached tags are served stale;
- 429, and 5xx or a transport failure or timeout (at the registry or its token service)
  → ``Unavailable`` carrying the upstream's ``Retry-After``: stale-if-error for tags, 503
  with that ``Retry-After`` for what is not cached.

``Retry-After`` is honoured towards the upstream: after a 429 (or a 503 that says when to come
back) nothing is sent to it until then; requests meanwhile fail at once with the time left.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio

from core.client.registry import RegistryClient
from core.digest import Digest
from core.errors import Denied, NameUnknown, TooManyRequests, Unauthorized, Unavailable
from core.reference import RepositoryName, Tag
from edge.mirror.metrics import MirrorMetrics
from edge.upstream_types import UpstreamBlob, UpstreamManifest

log = logging.getLogger("depot.edge.mirror")

#: The longest an upstream's ``Retry-After`` keeps the edge away from it.
MAX_BACKOFF_SECONDS = 3600.0


class MirrorUpstream:
    def __init__(
        self,
        label: str,
        client: RegistryClient,
        metrics: MirrorMetrics,
        *,
        has_credentials: bool,
    ) -> None:
        """``label`` names the upstream in logs and metrics (``docker.io``, ``acme/ghcr.io``)."""
        self.label = label
        self._client = client
        self._has_credentials = has_credentials
        self._bytes = metrics.bytes.labels(label)
        self._fills = metrics.fills.labels(label)
        self._not_before = -math.inf  # trio time before which nothing is sent

    @asynccontextmanager
    async def open_blob(
        self, repository: RepositoryName, digest: Digest
    ) -> AsyncIterator[UpstreamBlob]:
        with self._boundary(f"GET blob {repository}@{digest}"):
            self._fills.inc()
            async with self._client.open_blob(repository, digest) as blob:
                chunks = self._counted(blob.chunks)
                try:
                    yield UpstreamBlob(blob.length, chunks)
                finally:
                    await chunks.aclose()

    async def blob_size(self, repository: RepositoryName, digest: Digest) -> int | None:
        with self._boundary(f"HEAD blob {repository}@{digest}"):
            return await self._client.blob_size(repository, digest)

    async def get_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> UpstreamManifest:
        with self._boundary(f"GET manifest {repository}:{reference}"):
            fetched = await self._client.get_manifest(repository, reference)
        self._bytes.inc(len(fetched.payload))
        return UpstreamManifest(fetched.digest, fetched.media_type, fetched.payload)

    async def head_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> Digest | None:
        with self._boundary(f"HEAD manifest {repository}:{reference}"):
            return await self._client.head_manifest(repository, reference)

    async def list_tags(self, repository: RepositoryName) -> list[Tag]:
        with self._boundary(f"GET tags {repository}"):
            return await self._client.list_tags(repository)

    # -- failures --------------------------------------------------------------------------

    @contextmanager
    def _boundary(self, what: str, *, starting: bool = True) -> Iterator[None]:
        """Refuse at once while backing off (``starting``: before anything is sent); map the
        client's failures (see the module's doc)."""
        wait = self._not_before - trio.current_time()
        if starting and wait > 0:
            retry = {"Retry-After": str(math.ceil(wait))}
            raise Unavailable(f"{self.label} asked to wait before the next request", headers=retry)
        try:
            yield
        except Denied as exc:
            raise NameUnknown(f"{self.label} refused access", detail={"during": what}) from exc
        except Unauthorized as exc:
            if self._has_credentials:
                log.error("%s refused the configured credentials: %s", self.label, what)
                raise Unavailable(f"{self.label} refused this edge's credentials") from exc
            raise NameUnknown(
                f"{self.label} refused access: no such repository, or it is private",
                detail={"during": what},
            ) from exc
        except TooManyRequests as exc:
            self._back_off(exc.headers.get("Retry-After"))
            log.warning("%s is rate limiting (%s)", self.label, what)
            raise Unavailable(f"{self.label} is rate limiting", headers=exc.headers) from exc
        except Unavailable as exc:
            self._back_off(exc.headers.get("Retry-After"))
            raise

    def _back_off(self, retry_after: str | None) -> None:
        if retry_after is None or not retry_after.isdigit():
            return
        seconds = min(float(retry_after), MAX_BACKOFF_SECONDS)
        self._not_before = max(self._not_before, trio.current_time() + seconds)

    async def _counted(self, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        with self._boundary("reading a blob", starting=False):
            async for chunk in chunks:
                self._bytes.inc(len(chunk))
                yield chunk
