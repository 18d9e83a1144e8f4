"""Answering pulls from the cache, or from origin once and then from the cache.

Blobs and manifests by digest are immutable: cached forever (until evicted for space).
A tag is answered locally inside its freshness window, then revalidated with a HEAD (one at
a time per tag, and one manifest GET at a time per digest, shared by the clients asking
meanwhile: :mod:`edge.single_flight`); when
origin fails (down, too slow, 5xx, 429) a cached tag is served stale with ``Warning: 299``
and an uncached object gets 503 with ``Retry-After``.

A repository may be served a digest only if it contains it: known from manifests fetched
through this edge for that repository, or confirmed with origin once and remembered. That
is what keeps org B from reading org A's blob by digest, hit or miss.

Names and digests arrive typed from the route and go down typed to the cache, the fills and
the upstream: nothing here parses them again.

A mirrored registry is served the same way, by a PullThrough of its own (``edge/mirror/``):
its upstream, a cache view whose tags and links are its own, the shared fills; ``name`` says
which upstream failed, and ``upstream_retry_after`` passes the upstream's ``Retry-After`` on
(a registry that rate-limits says when it will answer again).

Every question to the upstream goes through its circuit breaker (:mod:`edge.breaker`). While
the circuit is open nothing waits on a hung origin: a tag with a cached answer is served stale
at once (and, when a probe is due, revalidated in the background: the probe), anything else
gets 503 with ``Retry-After`` at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from config.settings import EdgeSettings
from core.digest import Digest, sha256_of
from core.errors import BlobUnknown, DigestInvalid, ManifestInvalid, ManifestUnknown, Unavailable
from core.manifest import Descriptor, parse_manifest
from core.reference import RepositoryName, Tag
from edge.breaker import CircuitBreaker, CircuitOpen, State
from edge.cache.store import EdgeCache
from edge.fill import BlobStream, Fills
from edge.metrics import EdgeMetrics
from edge.single_flight import SingleFlight
from edge.upstream_types import Upstream, UpstreamManifest

log = logging.getLogger("depot.edge")

STALE_WARNING = '299 - "Response is stale: origin unavailable"'
#: What counts against the circuit: the upstream not answering (in time, or at all).
_FAILURES = (Unavailable, trio.TooSlowError)


@dataclass(frozen=True, slots=True)
class ServedManifest:
    digest: Digest
    media_type: str
    payload: bytes
    stale: bool = False


class PullThrough:
    def __init__(
        self,
        settings: EdgeSettings,
        cache: EdgeCache,
        fills: Fills,
        upstream: Upstream,
        metrics: EdgeMetrics,
        clock: Callable[[], float],
        *,
        name: str = "origin",
        upstream_retry_after: bool = False,
        breaker: CircuitBreaker | None = None,
        nursery: trio.Nursery | None = None,
    ) -> None:
        """``nursery`` (the process's root) runs background revalidations; without one, a
        due probe runs in the request instead."""
        self._settings = settings
        self._name = name
        self._upstream_retry_after = upstream_retry_after
        self._cache = cache
        self._fills = fills
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock
        self._tag_flights: SingleFlight[tuple[RepositoryName, Tag], ServedManifest] = SingleFlight()
        self._manifest_flights: SingleFlight[tuple[RepositoryName, Digest], UpstreamManifest] = (
            SingleFlight()
        )
        self._breaker = breaker if breaker is not None else CircuitBreaker()
        self._nursery = nursery
        self._revalidating: set[tuple[RepositoryName, Tag]] = set()
        # Shared by every prefetch of this upstream: FIFO, so the largest blob of the first
        # manifest starts first.
        self._prefetching = trio.CapacityLimiter(max(1, settings.prefetch_blobs))

    # -- manifests -------------------------------------------------------------------------

    async def manifest(self, repository: RepositoryName, reference: Tag | Digest) -> ServedManifest:
        if isinstance(reference, Digest):
            return await self._manifest_by_digest(repository, reference)
        return await self._manifest_by_tag(repository, reference)

    async def _manifest_by_digest(
        self, repository: RepositoryName, digest: Digest
    ) -> ServedManifest:
        cached = await self._cache.get_manifest(repository, digest)
        if cached is not None and await self._contains(repository, digest, manifest=True):
            self._metrics.cache_hits.labels("manifest").inc()
            return ServedManifest(digest, cached[0], cached[1])
        self._metrics.cache_misses.labels("manifest").inc()
        fetched = await self._fetch_manifest(repository, digest)
        return ServedManifest(fetched.digest, fetched.media_type, fetched.payload)

    async def _manifest_by_tag(self, repository: RepositoryName, tag: Tag) -> ServedManifest:
        now = self._clock()
        window = self._settings.tag_freshness_seconds
        hot = self._cache.fresh_tag(repository, tag, now, window)
        if hot is not None:  # warm: from memory, no thread hop (manifests are kept hot too)
            cached = await self._cache.get_manifest(repository, hot.digest)
            if cached is not None:
                self._metrics.cache_hits.labels("tag").inc()
                return ServedManifest(hot.digest, cached[0], cached[1])
        entry = await self._cache.get_tag(repository, tag)
        now = self._clock()
        stale: ServedManifest | None = None
        if entry is not None:
            cached = await self._cache.get_manifest(repository, entry.digest)
            if cached is not None:
                if now - entry.fetched_at < self._settings.tag_freshness_seconds:
                    self._metrics.cache_hits.labels("tag").inc()
                    return ServedManifest(entry.digest, cached[0], cached[1])
                stale = ServedManifest(entry.digest, cached[0], cached[1], stale=True)
        self._metrics.cache_misses.labels("tag").inc()
        if stale is not None and self._breaker.state is not State.CLOSED:
            # The upstream is failing: answer now; a due probe revalidates in the background,
            # or (no nursery to run it in) in this request, still bounded by the deadline.
            if self._breaker.allow():
                if self._nursery is not None:
                    self._revalidate_later(repository, tag)
                else:
                    try:
                        return await self._revalidate(repository, tag, probe=True)
                    except _FAILURES as exc:
                        return self._serve_stale(repository, tag, stale, exc)
            return self._serve_stale(repository, tag, stale, f"the circuit to {self._name} is open")
        try:
            return await self._tag_flights.run(
                (repository, tag), lambda: self._revalidate(repository, tag)
            )
        except _FAILURES as exc:
            if stale is not None:
                return self._serve_stale(repository, tag, stale, exc)
            raise self._unavailable(exc) from exc

    def _serve_stale(
        self, repository: RepositoryName, tag: Tag, stale: ServedManifest, why: object
    ) -> ServedManifest:
        self._metrics.stale_serves.inc()
        log.warning("serving %s:%s stale: %s", repository, tag, why)
        return stale

    async def _revalidate(
        self, repository: RepositoryName, tag: Tag, *, probe: bool = False
    ) -> ServedManifest:
        """Ask the upstream what ``tag`` points at now, fetch that manifest if needed, and
        record it. ``probe``: the breaker let this caller through already."""
        now = self._clock()
        with self._asking(probe):
            with trio.fail_after(self._settings.upstream_deadline_seconds):
                current = await self._upstream.head_manifest(repository, tag)
        if current is None:
            await self._cache.drop_tag(repository, tag)
            raise ManifestUnknown(detail={"reference": tag.value})
        cached = await self._cache.get_manifest(repository, current)
        if cached is not None:
            served = ServedManifest(current, cached[0], cached[1])
        else:
            fetched = await self._fetch_manifest(repository, current)
            served = ServedManifest(fetched.digest, fetched.media_type, fetched.payload)
        await self._cache.add_links(repository, [current])
        await self._cache.put_tag(repository, tag, current, served.media_type, now)
        return served

    def _revalidate_later(self, repository: RepositoryName, tag: Tag) -> None:
        """The breaker's probe, as a background revalidation of one tag."""
        assert self._nursery is not None
        key = (repository, tag)
        if key in self._revalidating:
            self._breaker.abandon()  # one is running already: let another caller probe
            return

        async def probe() -> None:
            try:
                await self._revalidate(repository, tag, probe=True)
            except (*_FAILURES, ManifestUnknown) as exc:
                log.info("background revalidation of %s:%s: %s", repository, tag, exc)
            except Exception:  # a background task must not end the process
                log.exception("background revalidation of %s:%s failed", repository, tag)
            finally:
                self._revalidating.discard(key)

        self._revalidating.add(key)
        self._nursery.start_soon(probe)

    @contextmanager
    def _asking(self, probe: bool = False) -> Iterator[None]:
        """Ask the upstream inside: refused at once while the circuit is open (unless this
        caller is the probe), the outcome recorded."""
        if probe:
            with self._breaker.record(_FAILURES):
                yield
        else:
            with self._breaker.attempt(_FAILURES):
                yield

    async def _fetch_manifest(self, repository: RepositoryName, digest: Digest) -> UpstreamManifest:
        return await self._manifest_flights.run(
            (repository, digest), lambda: self._fetch_manifest_now(repository, digest)
        )

    async def _fetch_manifest_now(
        self, repository: RepositoryName, digest: Digest
    ) -> UpstreamManifest:
        try:
            with self._asking(), trio.fail_after(self._settings.upstream_deadline_seconds):
                fetched = await self._upstream.get_manifest(repository, digest)
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc
        if fetched.digest != digest or (
            digest.algorithm == "sha256" and sha256_of(fetched.payload) != digest
        ):
            raise Unavailable(f"{self._name} sent a manifest that does not match its digest")
        try:
            parsed = parse_manifest(fetched.payload, fetched.media_type)
        except (ManifestInvalid, DigestInvalid):
            parsed = None  # serve it anyway (origin accepted it); just learn no links
        await self._cache.put_manifest(repository, digest, fetched.media_type, fetched.payload)
        links = [digest]
        if parsed is not None:
            links += [d.digest for d in (*parsed.blobs, *parsed.manifests)]
        await self._cache.add_links(repository, links)
        if parsed is not None and parsed.blobs and not parsed.manifests:
            self._prefetch(repository, parsed.blobs)
        return fetched

    def _prefetch(self, repository: RepositoryName, blobs: Sequence[Descriptor]) -> None:
        """An image manifest came from the upstream: its client asks for these blobs next
        (three at a time), so fill them now, in the background, largest first. (An index's
        client asks for its platform's child manifest next: that fetch prefetches.) Only
        what the cache will keep: a blob too large to cache would be fetched twice."""
        if (
            self._nursery is None
            or self._settings.prefetch_blobs <= 0
            or self._breaker.state is not State.CLOSED
        ):
            return
        wanted = sorted(
            (b for b in blobs if b.size <= self._cache.max_blob_bytes),
            key=lambda b: b.size,
            reverse=True,
        )
        try:
            for blob in dict.fromkeys(b.digest for b in wanted):
                self._nursery.start_soon(self._prefetch_one, repository, blob)
        except RuntimeError:
            return  # the process is stopping: nothing new starts

    async def _prefetch_one(self, repository: RepositoryName, digest: Digest) -> None:
        async with self._prefetching:
            try:
                if await self._cache.blob_size(digest) is not None:
                    return  # cached: not a use, so not counted as one
                await self._fills.prefetch(repository, digest, upstream=self._upstream)
            except Exception:  # a background task must not end the process
                log.exception("prefetch of %s failed", digest)

    async def forget_tag(self, repository: RepositoryName, tag: Tag) -> None:
        """A manifest PUT or DELETE went through this edge: stop answering the old digest."""
        await self._cache.drop_tag(repository, tag)

    # -- blobs -----------------------------------------------------------------------------

    async def blob_size(self, repository: RepositoryName, digest: Digest) -> tuple[int, bool]:
        """HEAD: the size, and whether the cache answered; never filling."""
        size = await self._cache.blob_size(digest)
        if size is not None and await self._contains(repository, digest):
            self._metrics.cache_hits.labels("blob").inc()
            return size, True
        self._metrics.cache_misses.labels("blob").inc()
        try:
            with self._asking(), trio.fail_after(self._settings.upstream_deadline_seconds):
                upstream_size = await self._upstream.blob_size(repository, digest)
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc
        if upstream_size is None:
            raise BlobUnknown(detail={"digest": str(digest)})
        await self._cache.add_links(repository, [digest])
        return upstream_size, False

    async def open_blob(self, repository: RepositoryName, digest: Digest) -> BlobStream:
        """The blob's stream (cache hit, or joining/starting the single fill)."""
        if not await self._contains(repository, digest):
            raise BlobUnknown(detail={"digest": str(digest)})
        probe = False
        if self._breaker.state is not State.CLOSED and await self._cache.blob_size(digest) is None:
            if not self._breaker.allow():  # a fill would ask the failing origin
                raise self._breaker.unavailable()
            probe = True
        # The upstream deadline bounds the wait for the blob's size (the response head), not
        # the fill: a waiter gives up with a prompt 503 while the fill goes on for others.
        try:
            with trio.fail_after(self._settings.upstream_deadline_seconds):
                stream = await self._fills.open(repository, digest, upstream=self._upstream)
        except _FAILURES as exc:
            self._breaker.failed()
            if isinstance(exc, Unavailable) and "Retry-After" in exc.headers:
                raise
            raise self._unavailable(exc) from exc  # e.g. origin unreachable: no Retry-After
        except BaseException:
            if probe:
                self._breaker.abandon()
            raise
        if probe or not stream.from_cache:
            self._breaker.succeeded()
        counter = self._metrics.cache_hits if stream.from_cache else self._metrics.cache_misses
        counter.labels("blob").inc()
        return stream

    async def _contains(
        self, repository: RepositoryName, digest: Digest, *, manifest: bool = False
    ) -> bool:
        if await self._cache.has_link(repository, digest):
            return True
        try:
            with self._asking(), trio.fail_after(self._settings.upstream_deadline_seconds):
                if manifest:
                    found = await self._upstream.head_manifest(repository, digest) is not None
                else:
                    found = await self._upstream.blob_size(repository, digest) is not None
        except _FAILURES as exc:
            # Without origin we cannot tell whether this repository may read the digest.
            raise self._unavailable(exc) from exc
        except (BlobUnknown, ManifestUnknown):
            found = False
        if found:
            await self._cache.add_links(repository, [digest])
        return found

    def _unavailable(self, cause: BaseException | None = None) -> Unavailable:
        """503 with Retry-After; the breaker's own answer when it refused the request."""
        if isinstance(cause, CircuitOpen):
            return cause
        retry = str(self._settings.unavailable_retry_after_seconds)
        if self._upstream_retry_after and isinstance(cause, Unavailable):
            retry = cause.headers.get("Retry-After", retry)
        return Unavailable(f"{self._name} unavailable", headers={"Retry-After": retry})
