"""The edge's upstream inside a region: one fetch from upstream per digest per region.

:class:`RegionalUpstream` wraps the edge's own upstream (origin, or a shield edge) and changes
only where a blob's bytes come from:

1. A live peer of the region that advertises the digest → from that peer (unless this request
   came from a peer itself: peers never send each other around, so no loops).
2. Otherwise this edge takes the region's fill lock for the digest → from its own upstream,
   the lock renewed while the bytes flow and released at the end.
3. Another edge holds the lock → from that edge, which streams the fill it is receiving (its
   single flight serves us like any client).

A peer's stream that breaks (the leader died) is taken over where this edge's copy got to:
the lock is claimed again (the dead leader's expires) and the rest comes from upstream, or
from the new leader, by ``Range``. Whatever the source, the fill verifies the digest before
anything is cached, so a peer can cost time, never correctness. Manifests, tags and HEADs go
to the edge's own upstream as before: they are small and their freshness matters.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import trio

from core.digest import Digest
from core.errors import Unavailable
from core.reference import RepositoryName, Tag
from edge.region.directory import RegionDirectory
from edge.upstream_types import Upstream, UpstreamBlob, UpstreamManifest

log = logging.getLogger("depot.edge.region")

#: Set (by the edge's request handling) while serving a request from a peer of the region:
#: fills it starts never go to another peer through an advertisement. Trio copies the
#: context into tasks started from the request, so the fill task sees it.
FROM_PEER: contextvars.ContextVar[bool] = contextvars.ContextVar("depot_from_peer", default=False)

#: The header a peer's requests carry (its edge id); only a hint, trusted for nothing else.
PEER_HEADER = "X-Depot-Region-Peer"

#: How many times a broken stream is taken over before the fill gives up.
TAKEOVERS = 3


@dataclass
class RegionCounters:
    peer_fetches: int = 0  # blob streams opened from a peer edge
    upstream_fetches: int = 0  # blob streams opened from this edge's own upstream, as leader
    takeovers: int = 0  # broken peer streams continued from elsewhere


class RegionalUpstream:
    def __init__(
        self,
        inner: Upstream,
        directory: RegionDirectory,
        peer: Callable[[str], Upstream],
    ) -> None:
        """``peer(url)``: the upstream that is the edge at ``url`` (pooled by the caller)."""
        self._inner = inner
        self._directory = directory
        self._peer = peer
        self.counters = RegionCounters()

    # -- what stays the inner upstream's ---------------------------------------------------

    async def blob_size(self, repository: RepositoryName, digest: Digest) -> int | None:
        return await self._inner.blob_size(repository, digest)

    async def get_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> UpstreamManifest:
        return await self._inner.get_manifest(repository, reference)

    async def head_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> Digest | None:
        return await self._inner.head_manifest(repository, reference)

    # -- blobs -----------------------------------------------------------------------------

    def open_blob(
        self, repository: RepositoryName, digest: Digest
    ) -> AbstractAsyncContextManager[UpstreamBlob]:
        return self._open_blob(repository, digest)

    @asynccontextmanager
    async def _open_blob(
        self, repository: RepositoryName, digest: Digest
    ) -> AsyncIterator[UpstreamBlob]:
        async with trio.open_nursery() as nursery:
            flow = _Flow(self, repository, digest, nursery)
            try:
                size = await flow.open(0)
                yield UpstreamBlob(size, flow.chunks(size))
            finally:
                with trio.CancelScope(shield=True):
                    await flow.aclose()
                nursery.cancel_scope.cancel()


class _Flow:
    """One blob's bytes for one fill, from whichever source the region says, switching
    source (by ``Range``) when a peer's stream breaks."""

    def __init__(
        self,
        region: RegionalUpstream,
        repository: RepositoryName,
        digest: Digest,
        nursery: trio.Nursery,
    ) -> None:
        self._region = region
        self._directory = region._directory
        self._repository = repository
        self._digest = digest
        self._nursery = nursery
        self._stack = AsyncExitStack()
        self._chunks: AsyncIterator[bytes] | None = None
        self._from_peer = False
        self._leading = False
        self._skip: set[str] = set()  # peers whose stream broke
        self._peer_id = ""

    async def open(self, offset: int) -> int:
        """Open the next source at ``offset``; returns the blob's size."""
        await self._stack.aclose()
        self._stack = AsyncExitStack()
        if not self._leading:
            for peer_id, url in await self._advertised():
                opened = await self._try_peer(peer_id, url, offset)
                if opened is not None:
                    return opened
            # A holder that stays unreachable while it keeps its lock: after two lock
            # periods, fetch from upstream anyway (correct, just not shared).
            give_up = trio.current_time() + 2 * self._directory.lock_seconds
            while True:
                holder = await self._directory.claim(self._digest)
                if holder is None:
                    # A peer may have finished the blob since we looked (it advertises
                    # before it releases the lock): take it from there, not upstream.
                    late = await self._advertised()
                    if not late:
                        self._lead()
                        break
                    await self._directory.release(self._digest)
                    for peer_id, url in late:
                        opened = await self._try_peer(peer_id, url, offset)
                        if opened is not None:
                            return opened
                    continue  # they failed us (now skipped): claim again
                if trio.current_time() > give_up:
                    log.warning("edge %s holds %s but cannot serve it", holder, self._digest)
                    break
                holder_url = await self._directory.address(holder)
                if holder_url is not None and holder not in self._skip:
                    opened = await self._try_peer(holder, holder_url, offset)
                    if opened is not None:
                        return opened
                # The holder is gone or failed us: its lock expires soon; wait, then claim.
                await trio.sleep(min(0.25, self._directory.lock_seconds / 4))
        self._region.counters.upstream_fetches += 1
        self._from_peer = False
        blob = await self._stack.enter_async_context(
            _opened(self._region._inner, self._repository, self._digest, offset)
        )
        self._chunks = blob.chunks
        return blob.size + offset if offset and blob.size is not None else blob.size

    async def _advertised(self) -> list[tuple[str, str]]:
        if FROM_PEER.get():
            return []
        return [p for p in await self._directory.holders(self._digest) if p[0] not in self._skip]

    async def _try_peer(self, peer_id: str, url: str, offset: int) -> int | None:
        try:
            blob = await self._stack.enter_async_context(
                _opened(self._region._peer(url), self._repository, self._digest, offset)
            )
        except Unavailable as exc:
            log.info("peer %s cannot serve %s: %s", peer_id, self._digest, exc)
            self._skip.add(peer_id)
            await self._stack.aclose()
            self._stack = AsyncExitStack()
            return None
        self._region.counters.peer_fetches += 1
        self._from_peer = True
        self._peer_id = peer_id
        self._chunks = blob.chunks
        return blob.size + offset if offset else blob.size

    def _lead(self) -> None:
        self._leading = True
        self._nursery.start_soon(self._keep_lock)

    async def _keep_lock(self) -> None:
        while True:
            await trio.sleep(self._directory.lock_seconds / 3)
            if not await self._directory.renew(self._digest) and self._directory.healthy:
                log.warning("lost the region's fill lock of %s", self._digest)
                return

    async def chunks(self, size: int) -> AsyncGenerator[bytes, None]:
        received = 0
        takeovers = 0
        while True:
            assert self._chunks is not None
            try:
                async for chunk in self._chunks:
                    received += len(chunk)
                    yield chunk
                if received >= size or not self._from_peer:
                    break
                failure: Exception = Unavailable("the peer's stream ended early")
            except Unavailable as exc:
                if not self._from_peer:
                    raise
                failure = exc
            takeovers += 1
            if takeovers > TAKEOVERS:
                raise Unavailable("no edge of the region could finish this blob")
            log.warning(
                "peer %s broke off %s at %d bytes (%s): taking over",
                self._peer_id,
                self._digest,
                received,
                failure,
            )
            self._skip.add(self._peer_id)
            self._region.counters.takeovers += 1
            if await self.open(received) != size:
                raise Unavailable("the blob's size changed between sources")
        if received == size:
            # The fill verifies the digest next; a bad copy advertised costs a peer one
            # refetch (it verifies too), never a wrong byte.
            await self._directory.advertise(self._digest)

    async def aclose(self) -> None:
        await self._stack.aclose()
        if self._leading:
            await self._directory.release(self._digest)


@asynccontextmanager
async def _opened(
    upstream: Upstream, repository: RepositoryName, digest: Digest, offset: int
) -> AsyncIterator[UpstreamBlob]:
    """``upstream``'s blob from ``offset``: by ``Range`` when the upstream takes an offset."""
    if offset:
        opener = getattr(upstream, "open_blob_from", None)
        if opener is None:
            raise Unavailable("this upstream cannot resume a blob")
        async with opener(repository, digest, offset) as blob:
            yield blob
    else:
        async with upstream.open_blob(repository, digest) as blob:
            yield blob
