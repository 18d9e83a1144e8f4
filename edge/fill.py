"""Single-flight cache fills: one upstream fetch per digest, streamed to every waiter.

``open`` joins the flight in progress for a digest or starts one in the process's root
nursery (a client that leaves does not stop what others wait on). A flight looks the blob up
in the cache and, on a miss, fills it: the upstream body goes into a spool file, handed to a
writer task at once while it is idle and batched (up to ~1 MiB) while it is busy; the writer
hashes and writes each batch in a worker thread and publishes how many bytes the spool
holds. Every waiter reads the spool through its own descriptor, so bytes reach clients while
the fill runs; but a read that reaches the end of the blob is held one byte short until the
fill is verified (size == Content-Length, digest matches, fsynced). Then the spool is
adopted into the cache by rename. On any failure every reader raises instead of finishing,
so the HTTP layer cuts the body short: a client never receives a complete wrong blob. Nothing
is cached, the spool is deleted, and the next ``open`` starts afresh (no negative caching).

Descriptors: a flight keeps one read descriptor (on its spool, or on the cached file) while
it runs or anyone is joining; each stream holds a ``dup`` of it, so an eviction, a rename
into the cache or an unlink on failure never disturbs a reader.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import trio

from core.client.socket_body import SocketBody, receive_into
from core.digest import Digest
from core.errors import BlobUnknown, NameUnknown, RegistryError, Unavailable
from core.reference import RepositoryName
from core.web.file_body import FileChunks
from edge.cache.spool import SpoolFile
from edge.cache.store import EdgeCache
from edge.coord.host_lock import HostLocks
from edge.upstream_types import Upstream, UpstreamBlob

log = logging.getLogger("depot.edge.fill")

T = TypeVar("T")

WRITE_BATCH = 1 << 20  # most bytes per spool write (one thread hop)
_QUEUED_BATCHES = 4
#: Socket bodies: most bytes per worker-thread hop (one buffer per fill), and how many make
#: a hop return as soon as the socket is momentarily empty (readers see progress sooner).
RECEIVE_BUFFER = 4 << 20
RECEIVE_ENOUGH = 1 << 20
#: A receiving thread gives control back this often while the upstream sends nothing (so
#: the progress timeout and cancellation are checked).
RECEIVE_WAIT = 0.2
_MAX_PIECES = 512  # chunks per batch (os.writev takes at most IOV_MAX buffers)
PROGRESS_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class FillStatistics:
    in_flight: int
    waiters_coalesced: int  # opens that joined a fill already in flight
    completed: int
    failed: int
    bytes_from_upstream: int


class _Fill:
    """One fill's state, shared by the fill task and its readers (all in the trio thread)."""

    def __init__(
        self, upstream: Upstream, repository: RepositoryName, digest: Digest, started_at: float
    ) -> None:
        self.upstream = upstream  # where the bytes come from: origin, or a mirrored registry
        self.repository, self.digest, self.started_at = repository, digest, started_at
        self.size: int | None = None  # from Content-Length, once the upstream answered
        self.durable = 0  # bytes written to the spool, readable through any descriptor
        self.verified = False
        self.from_cache = False  # the flight found the blob cached: no fill at all
        self.failure: Exception | None = None
        self.spool: SpoolFile | None = None
        self.read_fd: int | None = None
        self._refs = 1  # the fill task, plus joiners not yet holding their own dup
        self._changed = trio.Event()
        self.ended = trio.Event()  # the fill task is done, its spool adopted or gone

    def publish(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def acquire(self) -> None:
        self._refs += 1

    def release(self) -> None:
        self._refs -= 1
        if self._refs == 0 and self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None

    def error(self) -> Exception:
        """A fresh exception for one waiter (one object must not be raised in many tasks)."""
        failure = self.failure
        if isinstance(failure, RegistryError):
            fresh: Exception = type(failure)(
                failure.message, detail=failure.detail, headers=failure.headers
            )
        else:
            fresh = Unavailable("blob fill failed")
        fresh.__cause__ = failure
        return fresh


class BlobStream:
    """An open blob, cached or being filled: ``size`` and one body via ``chunks``.

    ``chunks(offset, length)`` matches ``core.web.blobs.BodyOpener``; leaving its context
    closes the stream. A stream never read should be closed (garbage collection does it too).
    """

    def __init__(self, fd: int, size: int, fill: _Fill | None, limiter: trio.CapacityLimiter):
        self.size = size
        self._fd = fd
        self._fill = fill
        self._limiter = limiter
        self._close = weakref.finalize(self, os.close, fd)

    @property
    def from_cache(self) -> bool:
        return self._fill is None

    def close(self) -> None:
        self._close()

    @asynccontextmanager
    async def chunks(self, offset: int, length: int) -> AsyncIterator[AsyncIterator[bytes]]:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} outside a blob of {self.size} bytes")
        if not self._close.alive:
            raise RuntimeError("blob stream already read or closed")
        try:
            if self._fill is None or self._fill.verified:
                # All the bytes are in the file (cached, or a fill already verified): the
                # connection layer may send them by sendfile. The descriptor is our own dup,
                # so an eviction (unlink) or the spool's rename never disturbs it.
                yield FileChunks(self._fd, offset, length, self._limiter)
            else:
                yield _SpoolTail(self, self._fill, offset, length)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close, limiter=self._limiter)


class _SpoolTail(FileChunks):
    """The bytes of a fill in progress: sent (by sendfile or streamed) as they reach the
    spool. A range that reaches the end of the blob is held one byte short until the fill
    is verified; a failed fill fails every reader."""

    def __init__(self, stream: BlobStream, fill: _Fill, offset: int, length: int) -> None:
        super().__init__(stream._fd, offset, length, stream._limiter)
        self._fill = fill
        self._to_end = offset + length == stream.size

    async def ready(self, offset: int, count: int) -> int:
        fill, end = self._fill, self.offset + self.count
        while True:
            if fill.failure is not None:
                raise fill.error()
            available = min(count, fill.durable - offset)
            if self._to_end and not fill.verified:
                available = min(available, end - 1 - offset)  # the last byte waits
            if available > 0:
                return available
            await fill.changed()


class Fills:
    def __init__(
        self,
        cache: EdgeCache,
        upstream: Upstream,
        nursery: trio.Nursery,
        *,
        fill_deadline_seconds: float,
        clock: Callable[[], float],
        progress_timeout_seconds: float = PROGRESS_TIMEOUT_SECONDS,
        threads: int = 16,
        host_locks: HostLocks | None = None,
    ) -> None:
        """``nursery`` must be the process's root nursery; ``clock`` gives POSIX seconds.

        ``host_locks``: fills of the host's other edge processes (sharing the cache
        directory) are waited for, then served from the cache, instead of fetched again."""
        self._host_locks = host_locks
        self._cache = cache
        self._upstream = upstream
        self._nursery = nursery
        self._deadline = fill_deadline_seconds
        self._progress_timeout = progress_timeout_seconds
        self._clock = clock
        self._read_limiter = trio.CapacityLimiter(threads)
        self._write_limiter = trio.CapacityLimiter(threads)
        self._in_flight: dict[Digest, _Fill] = {}
        self._ended = trio.Event()
        self._running = 0  # fill tasks, until their spool is cleaned up
        self._coalesced = self._completed = self._failed = self._bytes = 0

    def statistics(self) -> FillStatistics:
        return FillStatistics(
            len(self._in_flight), self._coalesced, self._completed, self._failed, self._bytes
        )

    async def wait_idle(self) -> None:
        """Return once no fill task runs, its spool gone (for shutdown and tests)."""
        while self._running:
            await self._ended.wait()

    async def open(
        self, repository: RepositoryName, digest: Digest, *, upstream: Upstream | None = None
    ) -> BlobStream:
        """Open ``digest`` from the cache, or from its fill once the upstream gave the size.

        The caller has authorised ``repository`` for ``digest``; ``upstream`` (default: the
        one these fills were made with) is asked with it. A digest names the same bytes
        wherever they come from, so there is one flight per digest, whichever upstream
        started it. Raises what the upstream raised before the size was known
        (``BlobUnknown``, ``Unavailable``, ...); a joined fill started for another repository
        (or upstream) that does not hold the blob is retried once with ``repository``.
        """
        source = self._upstream if upstream is None else upstream
        for attempt in (1, 2):
            fill = self._in_flight.get(digest)
            joined = fill is not None
            if fill is None:
                fill = self._start(source, repository, digest)
            fill.acquire()
            try:
                while fill.read_fd is None and fill.failure is None:
                    await fill.changed()
                if fill.failure is None:
                    assert fill.size is not None and fill.read_fd is not None
                    if joined and not fill.from_cache:
                        self._coalesced += 1
                    filling = None if fill.from_cache else fill
                    return BlobStream(os.dup(fill.read_fd), fill.size, filling, self._read_limiter)
            finally:
                fill.release()
            other_repository = (fill.upstream, fill.repository) != (source, repository)
            if attempt == 2 or not (
                other_repository and isinstance(fill.failure, (BlobUnknown, NameUnknown))
            ):
                raise fill.error()
        raise AssertionError("unreachable")  # pragma: no cover

    async def prefetch(
        self, repository: RepositoryName, digest: Digest, *, upstream: Upstream | None = None
    ) -> None:
        """Fill ``digest`` unless it is cached or filling already (then that flight is the
        one); return when that flight ended, whatever its outcome (a failure is logged by
        the flight, and the next ``open`` starts afresh)."""
        fill = self._in_flight.get(digest)
        if fill is None:
            fill = self._start(self._upstream if upstream is None else upstream, repository, digest)
        await fill.ended.wait()

    def _start(self, upstream: Upstream, repository: RepositoryName, digest: Digest) -> _Fill:
        fill = _Fill(upstream, repository, digest, self._clock())
        self._nursery.start_soon(self._run, fill)  # raises if the process is stopping
        self._in_flight[digest] = fill
        self._running += 1
        return fill

    async def _run(self, fill: _Fill) -> None:
        adopted = False
        try:
            if await self._from_cache(fill):  # a flight of one cache lookup
                return
            async with AsyncExitStack() as host_lock:
                try:
                    with trio.fail_after(self._deadline):
                        if self._host_locks is not None:
                            # Held until the blob is adopted; another process that filled
                            # it while we waited has committed it to the shared cache.
                            hold = self._host_locks.hold(fill.digest)
                            if await host_lock.enter_async_context(hold):
                                if await self._from_cache(fill):
                                    return
                        await self._fetch(fill)
                except trio.TooSlowError:
                    raise Unavailable(f"blob fill exceeded {self._deadline:g} s") from None
                fill.verified = True  # readers may take the last bytes now
                fill.publish()
                self._completed += 1
                adopted = await self._adopt(fill)
        except Exception as exc:
            fill.failure = exc
            if isinstance(exc, RegistryError):
                log.warning("fill of %s failed: %s", fill.digest, exc)
            else:
                log.exception("fill of %s failed", fill.digest)
        finally:
            if not fill.verified:
                self._failed += 1
                if fill.failure is None:  # cancelled: the process is stopping
                    fill.failure = Unavailable("blob fill cancelled")
            if self._in_flight.get(fill.digest) is fill:
                del self._in_flight[fill.digest]
            fill.release()
            fill.publish()
            try:
                if fill.spool is not None:
                    with trio.CancelScope(shield=True):
                        await self._thread(fill.spool.finish, adopted)
            finally:
                fill.ended.set()
                self._running -= 1
                self._ended.set()
                self._ended = trio.Event()

    async def _from_cache(self, fill: _Fill) -> bool:
        cached = await self._cache.open_blob(fill.digest)
        if cached is None:
            return False
        try:
            fill.read_fd = os.dup(cached.file.fileno())
        finally:
            cached.close()
        fill.size = fill.durable = cached.size
        fill.from_cache = fill.verified = True
        return True

    async def _adopt(self, fill: _Fill) -> bool:
        """Move the verified spool into the cache; a failure here only costs the caching."""
        assert fill.spool is not None
        try:
            adopted = await self._cache.adopt_blob(fill.digest, fill.spool.path, fill.durable)
        except Exception:
            log.exception("caching %s failed", fill.digest)
            return False
        seconds = max(self._clock() - fill.started_at, 1e-9)
        log.info(
            "filled %s: %d bytes in %.2f s (%.0f MB/s)%s",
            fill.digest, fill.durable, seconds, fill.durable / seconds / 1e6,
            "" if adopted else ", not cached (too large)",
        )  # fmt: skip
        return adopted

    async def _thread(self, function: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(function, *args), limiter=self._write_limiter)

    async def _fetch(self, fill: _Fill) -> None:
        hasher = fill.digest.hasher()
        async with fill.upstream.open_blob(fill.repository, fill.digest) as blob:
            fill.spool = await self._thread(SpoolFile.create, self._cache.spool_path(fill.digest))
            fill.size, fill.read_fd = blob.size, fill.spool.read_fd
            fill.publish()
            if blob.socket_body is not None:
                await self._receive(fill, blob.socket_body, hasher)
            else:
                await self._stream(fill, blob, hasher)
        if fill.durable != blob.size:
            raise Unavailable(f"upstream body ended at byte {fill.durable} of {blob.size}")
        if hasher.hexdigest() != fill.digest.encoded:
            raise Unavailable("upstream body does not match its digest")
        await self._thread(fill.spool.sync)

    async def _receive(self, fill: _Fill, body: SocketBody, hasher: hashlib._Hash) -> None:
        """Upstream socket → spool in worker threads, up to RECEIVE_BUFFER per hop: one
        thread receives into one buffer while another hashes and writes the other (each
        step releases the GIL), so the event loop only publishes progress. ~4 copies per
        byte fewer than through httpx (core/client/socket_body.py)."""
        spool = fill.spool
        assert spool is not None
        if body.leftover:
            self._appended(fill, await self._thread(spool.write, [body.leftover], hasher))
        size = max(1, min(RECEIVE_BUFFER, body.length))
        buffers = [memoryview(bytearray(size)), memoryview(bytearray(size))]
        remaining = body.length - len(body.leftover)
        last_progress = trio.current_time()
        pending: memoryview | None = None  # received, not yet hashed and written
        turn = 0
        while remaining or pending is not None:
            view = buffers[turn][: min(size, remaining)]
            received = 0

            async def receive(view: memoryview = view) -> None:
                nonlocal received
                if view:
                    received = await self._thread(
                        receive_into, body.fd, view, RECEIVE_ENOUGH, RECEIVE_WAIT
                    )

            async def write(piece: memoryview | None = pending) -> None:
                if piece is not None:
                    self._appended(fill, await self._thread(spool.write, [piece], hasher))

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write)
                    await receive()
            except (OSError, EOFError) as exc:
                raise Unavailable(f"upstream body ended at byte {fill.durable}: {exc}") from exc
            pending = None
            if received:
                last_progress = trio.current_time()
                remaining -= received
                pending, turn = view[:received], 1 - turn
            elif remaining and trio.current_time() - last_progress >= self._progress_timeout:
                raise Unavailable(f"upstream sent nothing for {self._progress_timeout:g} s")

    def _appended(self, fill: _Fill, written: int) -> None:
        fill.durable += written
        self._bytes += written
        fill.publish()

    async def _stream(self, fill: _Fill, blob: UpstreamBlob, hasher: hashlib._Hash) -> None:
        """Upstream → batches → spool, the reading and the writing overlapped."""
        # A few full batches may wait, so the socket keeps being read while the writer
        # thread hashes and writes (unbuffered, the two took turns: ~0.3x Distribution's
        # proxy on cold fills). Partial batches go only to an idle writer.
        send, receive = trio.open_memory_channel[list[bytes]](_QUEUED_BATCHES)
        failures: list[Exception] = []  # nursery children report here, not as groups
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_batches, fill, hasher, receive, failures)
            try:
                async with send:
                    await self._read_upstream(blob, send)
            except trio.BrokenResourceError:
                pass  # the writer stopped; its failure is in ``failures``
            except Exception as exc:
                failures.insert(0, exc)
                nursery.cancel_scope.cancel()
        if failures:
            raise failures[0]

    async def _read_upstream(
        self, blob: UpstreamBlob, send: trio.MemorySendChannel[list[bytes]]
    ) -> None:
        """Hand chunks to the writer: at once when it is idle, else batched up to ~1 MiB."""
        batch: list[bytes] = []
        received = batched = 0
        while True:
            with trio.move_on_after(self._progress_timeout) as idle:
                chunk = await anext(blob.chunks, None)
            if idle.cancelled_caught:
                raise Unavailable(f"upstream sent nothing for {self._progress_timeout:g} s")
            if chunk is None:
                break
            received += len(chunk)
            if received > blob.size:
                raise Unavailable("upstream sent more than its Content-Length")
            if not chunk:
                continue
            batch.append(chunk)
            batched += len(chunk)
            if batched >= WRITE_BATCH or len(batch) >= _MAX_PIECES:
                await send.send(batch)
            elif send.statistics().tasks_waiting_receive:
                send.send_nowait(batch)  # the writer is idle: first bytes reach readers now
            else:
                continue
            batch, batched = [], 0
        if batch:
            await send.send(batch)

    async def _write_batches(
        self,
        fill: _Fill,
        hasher: hashlib._Hash,
        receive: trio.MemoryReceiveChannel[list[bytes]],
        failures: list[Exception],
    ) -> None:
        assert fill.spool is not None
        with receive:
            try:
                async for batch in receive:
                    self._appended(fill, await self._thread(fill.spool.write, batch, hasher))
            except Exception as exc:
                failures.append(exc)
