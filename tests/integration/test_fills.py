"""Single-flight fills against a fake upstream whose body the test controls chunk by chunk.

Fills use worker threads (spool writes, reads, diskcache), so these tests run on the real
clock with small deadlines rather than trio's MockClock.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from core.digest import Digest, sha256_of
from core.errors import BlobUnknown, RegistryError, Unavailable
from core.reference import RepositoryName, Tag, parse_repository_name
from edge.cache.store import EdgeCache
from edge.fill import BlobStream, Fills
from edge.upstream_types import UpstreamBlob, UpstreamManifest

KIB, MIB = 1024, 1024 * 1024
TIMEOUT = 20
CHUNK = 64 * KIB
APP = parse_repository_name("acme/app")


class FakeUpstream:
    """Serves blobs from memory in CHUNK pieces, with faults to order.

    ``gate(i)``: the body waits before chunk ``i`` until the returned event is set (and sets
    ``at_gate[i]`` when it gets there). ``fail_at``: raise before that chunk. ``corrupt``: flip
    one byte of the first chunk. ``short_by``: end the body that many bytes early;
    ``trailing``: bytes sent after it, beyond the Content-Length.
    ``open_error``: raised when the blob is opened. ``holders``: repository → digests it
    holds (None: every repository holds everything).
    """

    def __init__(self, *blobs: bytes, chunk_size: int = CHUNK) -> None:
        self.blobs = {str(sha256_of(data)): data for data in blobs}
        self.chunk_size = chunk_size
        self.opens: list[tuple[str, str]] = []
        self.gates: dict[int, trio.Event] = {}
        self.at_gate: dict[int, trio.Event] = {}
        self.fail_at: int | None = None
        self.corrupt = False
        self.short_by = 0
        self.trailing = b""
        self.open_error: RegistryError | None = None
        self.holders: dict[str, set[str]] | None = None
        self.open_gate: trio.Event | None = None  # open_blob waits for it before answering
        self.opened = trio.Event()  # set on the first open_blob
        self.closed = 0

    def gate(self, index: int) -> trio.Event:
        self.at_gate[index] = trio.Event()
        self.gates[index] = trio.Event()
        return self.gates[index]

    @asynccontextmanager
    async def open_blob(self, name: RepositoryName, typed: Digest) -> AsyncIterator[UpstreamBlob]:
        repository, digest = str(name), str(typed)
        self.opens.append((repository, digest))
        self.opened.set()
        await trio.lowlevel.checkpoint()
        if self.open_gate is not None:
            await self.open_gate.wait()
        if self.open_error is not None:
            raise self.open_error
        if self.holders is not None and digest not in self.holders.get(repository, set()):
            raise BlobUnknown()
        data = self.blobs[digest]
        try:
            yield UpstreamBlob(len(data), FakeBody(self, data))
        finally:
            self.closed += 1

    async def blob_size(self, repository: RepositoryName, digest: Digest) -> int | None:
        raise NotImplementedError

    async def get_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> UpstreamManifest:
        raise NotImplementedError

    async def head_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> Digest | None:
        raise NotImplementedError


class FakeBody:
    """A class, not an async generator: a fill that stops early leaves nothing to finalise."""

    def __init__(self, upstream: FakeUpstream, data: bytes) -> None:
        self._upstream = upstream
        self._data = data
        self._index = 0
        self._trailed = False

    def __aiter__(self) -> FakeBody:
        return self

    async def __anext__(self) -> bytes:
        up, index = self._upstream, self._index
        start = index * up.chunk_size
        if start >= len(self._data) - up.short_by:
            if self._trailed or not up.trailing:
                raise StopAsyncIteration
            self._trailed = True
            return up.trailing
        if index in up.gates:
            up.at_gate[index].set()
            await up.gates[index].wait()
        await trio.lowlevel.checkpoint()
        if up.fail_at == index:
            raise Unavailable("upstream connection reset")
        self._index += 1
        chunk = self._data[start : min(start + up.chunk_size, len(self._data) - up.short_by)]
        if up.corrupt and index == 0:
            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        return chunk


def make_blob(size: int, seed: int = 1) -> tuple[Digest, bytes]:
    data = random.Random(seed).randbytes(size)
    return sha256_of(data), data


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[EdgeCache]:
    opened = EdgeCache.open(tmp_path / "edge", 256 * MIB)
    yield opened
    opened.close()


def make_fills(
    cache: EdgeCache,
    upstream: FakeUpstream,
    nursery: trio.Nursery,
    *,
    deadline: float = 15,
    progress_timeout: float = 10,
) -> Fills:
    return Fills(
        cache,
        upstream,
        nursery,
        fill_deadline_seconds=deadline,
        progress_timeout_seconds=progress_timeout,
        clock=time.time,
    )


async def read_all(stream: BlobStream, offset: int = 0, length: int | None = None) -> bytes:
    if length is None:
        length = stream.size - offset
    async with stream.chunks(offset, length) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def read_until_failure(stream: BlobStream, received: list[int]) -> Exception:
    """Read the whole body, counting bytes; return what it raised (it must raise)."""
    try:
        async with stream.chunks(0, stream.size) as chunks:
            async for chunk in chunks:
                received.append(len(chunk))
    except Exception as exc:
        return exc
    raise AssertionError("the body ended without an error")


def spools(cache: EdgeCache) -> list[Path]:
    return list(cache.spool_dir.iterdir())


async def test_concurrent_opens_share_one_upstream_fetch(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(5 * MIB + 3)
        upstream = FakeUpstream(data)
        release = upstream.gate(0)
        fills = make_fills(cache, upstream, nursery)
        bodies: list[bytes] = []
        opened = 0
        all_opened = trio.Event()

        async def client() -> None:
            nonlocal opened
            stream = await fills.open(APP, digest)
            assert stream.size == len(data)
            opened += 1
            if opened == 32:
                all_opened.set()
            bodies.append(await read_all(stream))

        async with trio.open_nursery() as clients:
            for _ in range(32):
                clients.start_soon(client)
            await all_opened.wait()  # open() returns on the size, before any body byte
            assert fills.statistics().in_flight == 1
            release.set()
        assert len(bodies) == 32 and all(body == data for body in bodies)
        assert upstream.opens == [("acme/app", str(digest))]
        await fills.wait_idle()
        stats = fills.statistics()
        assert (stats.in_flight, stats.waiters_coalesced, stats.completed, stats.failed) == (
            0,
            31,
            1,
            0,
        )
        assert stats.bytes_from_upstream == len(data)
        assert await cache.blob_size(digest) == len(data)
        assert spools(cache) == []


async def test_first_bytes_arrive_before_the_fill_ends(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(3 * MIB)
        upstream = FakeUpstream(data)
        release = upstream.gate(20)
        fills = make_fills(cache, upstream, nursery)
        stream = await fills.open(APP, digest)
        async with stream.chunks(0, stream.size) as chunks:
            first = await anext(chunks)
            assert first == data[: len(first)]
            await upstream.at_gate[20].wait()
            assert fills.statistics().in_flight == 1
            release.set()
            rest = b"".join([chunk async for chunk in chunks])
        assert first + rest == data


async def test_a_range_in_the_middle_is_served_during_the_fill(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(4 * MIB)
        upstream = FakeUpstream(data)
        release = upstream.gate(48)  # 3 MiB in
        fills = make_fills(cache, upstream, nursery)
        stream = await fills.open(APP, digest)
        assert await read_all(stream, MIB + 5, MIB) == data[MIB + 5 : 2 * MIB + 5]
        await upstream.at_gate[48].wait()
        assert fills.statistics().in_flight == 1  # served while the fill cannot finish
        # The range that reaches the end waits for the rest and for verification.
        tail = await fills.open(APP, digest)
        tails: list[bytes] = []

        async def read_tail() -> None:
            tails.append(await read_all(tail, 3 * MIB))

        async with trio.open_nursery() as readers:
            readers.start_soon(read_tail)
            await trio.testing.wait_all_tasks_blocked()
            assert tails == []
            release.set()
        assert tails == [data[3 * MIB :]]


async def test_a_reader_that_leaves_does_not_stop_the_others(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(2 * MIB)
        upstream = FakeUpstream(data)
        release = upstream.gate(10)
        fills = make_fills(cache, upstream, nursery)
        leaving = await fills.open(APP, digest)
        staying = await fills.open(APP, digest)
        with trio.CancelScope() as scope:
            async with leaving.chunks(0, leaving.size) as chunks:
                await anext(chunks)
                scope.cancel()
                await anext(chunks)  # cancelled while waiting for more
        assert scope.cancelled_caught
        release.set()
        assert await read_all(staying) == data
        await fills.wait_idle()
        assert fills.statistics().completed == 1
        assert await cache.blob_size(digest) == len(data)


async def test_a_fill_completes_and_caches_after_every_reader_left(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(2 * MIB)
        upstream = FakeUpstream(data)
        release = upstream.gate(5)
        fills = make_fills(cache, upstream, nursery)
        with trio.CancelScope() as scope:
            stream = await fills.open(APP, digest)
            async with stream.chunks(0, stream.size) as chunks:
                await anext(chunks)
                scope.cancel()
        release.set()
        await fills.wait_idle()
        assert fills.statistics().completed == 1
        again = await fills.open(APP, digest)
        assert again.from_cache
        assert await read_all(again) == data
        assert len(upstream.opens) == 1


async def test_a_hit_after_a_fill_does_not_ask_the_upstream(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(6 * MIB + 7)
        upstream = FakeUpstream(data)
        fills = make_fills(cache, upstream, nursery)
        first = await fills.open(APP, digest)
        assert not first.from_cache
        assert await read_all(first) == data
        await fills.wait_idle()
        for offset, length in [(0, len(data)), (MIB, 3), (len(data) - 1, 1), (5, 0)]:
            stream = await fills.open(APP, digest)
            assert stream.from_cache
            assert await read_all(stream, offset, length) == data[offset : offset + length]
        unread = await fills.open(APP, digest)
        unread.close()  # a stream never read (a HEAD) releases its descriptor
        assert len(upstream.opens) == 1
        stats = await cache.stats()
        assert stats.hits == 5


async def test_upstream_failure_mid_stream_fails_every_reader_then_a_retry_works(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(3 * MIB)
        upstream = FakeUpstream(data)
        upstream.fail_at = 30
        fills = make_fills(cache, upstream, nursery)
        streams = [await fills.open(APP, digest) for _ in range(4)]
        errors: list[Exception] = []
        counts: list[list[int]] = [[] for _ in streams]

        async def reader(stream: BlobStream, received: list[int]) -> None:
            errors.append(await read_until_failure(stream, received))

        async with trio.open_nursery() as readers:
            for stream, received in zip(streams, counts, strict=True):
                readers.start_soon(reader, stream, received)
        assert len(errors) == 4 and all(isinstance(exc, Unavailable) for exc in errors)
        assert len({id(exc) for exc in errors}) == 4  # one exception object per reader
        assert all(sum(received) < len(data) for received in counts)
        await fills.wait_idle()
        assert await cache.blob_size(digest) is None
        assert spools(cache) == []
        assert fills.statistics().failed == 1

        upstream.fail_at = None
        retry = await fills.open(APP, digest)
        assert await read_all(retry) == data
        assert len(upstream.opens) == 2


@pytest.mark.parametrize("fault", ["corrupt", "short", "long"])
async def test_a_wrong_body_never_reaches_a_reader_complete(
    cache: EdgeCache, nursery: trio.Nursery, fault: str
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(2 * MIB + 100)
        upstream = FakeUpstream(data)
        if fault == "corrupt":
            upstream.corrupt = True  # right size, wrong digest
        elif fault == "short":
            upstream.short_by = 100
        else:
            upstream.trailing = b"extra"
        fills = make_fills(cache, upstream, nursery)
        streams = [await fills.open(APP, digest) for _ in range(3)]
        counts: list[list[int]] = [[] for _ in streams]
        errors = [
            await read_until_failure(stream, received)
            for stream, received in zip(streams, counts, strict=True)
        ]
        assert all(isinstance(exc, Unavailable) for exc in errors)
        assert all(sum(received) < len(data) for received in counts)
        await fills.wait_idle()
        assert await cache.blob_size(digest) is None
        assert spools(cache) == []


async def test_an_error_before_the_body_reaches_every_waiter(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, _ = make_blob(100)
        upstream = FakeUpstream()
        fills = make_fills(cache, upstream, nursery)
        raised: list[Exception] = []

        async def waiter() -> None:
            try:
                await fills.open(APP, digest)
            except RegistryError as exc:
                raised.append(exc)

        for error in (BlobUnknown(), Unavailable("origin down")):
            upstream.open_error = error
            raised.clear()
            async with trio.open_nursery() as waiters:
                for _ in range(3):
                    waiters.start_soon(waiter)
            assert [type(exc) for exc in raised] == [type(error)] * 3
            assert len({id(exc) for exc in raised}) == 3
        assert len(upstream.opens) == 2  # one per round: failures are not cached


async def test_a_joined_fill_for_another_repository_is_retried_with_ours(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(100 * KIB)
        upstream = FakeUpstream(data)
        upstream.holders = {"good/app": {str(digest)}}
        fills = make_fills(cache, upstream, nursery)
        outcomes: dict[str, object] = {}

        async def client(repository: str) -> None:
            try:
                stream = await fills.open(parse_repository_name(repository), digest)
                outcomes[repository] = await read_all(stream)
            except BlobUnknown as exc:
                outcomes[repository] = exc

        async with trio.open_nursery() as clients:
            clients.start_soon(client, "other/app")
            await trio.testing.wait_all_tasks_blocked()
            clients.start_soon(client, "good/app")
        assert isinstance(outcomes["other/app"], BlobUnknown)
        assert outcomes["good/app"] == data


async def test_one_flight_per_digest_whichever_upstream_asks(
    cache: EdgeCache, nursery: trio.Nursery
) -> None:
    """Origin and a mirror asking for the same digest share one fetch (the same bytes); a
    flight started at an upstream that lacks the blob is retried at the joiner's own."""
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(300 * KIB)
        origin, mirror = FakeUpstream(data), FakeUpstream(data)
        release = origin.gate(0)
        fills = make_fills(cache, origin, nursery)
        bodies: list[bytes] = []

        async def client(upstream: FakeUpstream | None) -> None:
            bodies.append(await read_all(await fills.open(APP, digest, upstream=upstream)))

        async with trio.open_nursery() as clients:
            clients.start_soon(client, None)
            await origin.at_gate[0].wait()
            clients.start_soon(client, mirror)
            await trio.testing.wait_all_tasks_blocked()
            assert fills.statistics().waiters_coalesced == 1
            release.set()
        assert bodies == [data, data]
        assert (len(origin.opens), mirror.opens) == (1, [])

        second, second_data = make_blob(50 * KIB, seed=3)
        lacking, holding = FakeUpstream(second_data), FakeUpstream(second_data)
        lacking.holders = {}  # answers BlobUnknown, once let go
        lacking.open_gate = trio.Event()
        outcomes: dict[str, object] = {}

        async def attempt(label: str, upstream: FakeUpstream) -> None:
            try:
                outcomes[label] = await read_all(await fills.open(APP, second, upstream=upstream))
            except BlobUnknown as exc:
                outcomes[label] = exc

        async with trio.open_nursery() as clients:
            clients.start_soon(attempt, "lacking", lacking)
            await lacking.opened.wait()  # its flight asks its upstream (after a cache lookup)
            clients.start_soon(attempt, "holding", holding)
            await trio.testing.wait_all_tasks_blocked()
            assert (len(lacking.opens), holding.opens) == (1, [])  # joined, not started
            lacking.open_gate.set()
        assert isinstance(outcomes["lacking"], BlobUnknown)
        assert outcomes["holding"] == second_data
        assert (len(lacking.opens), len(holding.opens)) == (1, 1)


async def test_the_fill_deadline(cache: EdgeCache, nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(2 * MIB)
        upstream = FakeUpstream(data)
        upstream.gate(3)  # never released
        fills = make_fills(cache, upstream, nursery, deadline=0.5)
        stream = await fills.open(APP, digest)
        exc = await read_until_failure(stream, [])
        assert isinstance(exc, Unavailable) and "exceeded" in exc.message
        await fills.wait_idle()
        assert upstream.closed == 1
        assert spools(cache) == []


async def test_the_progress_timeout(cache: EdgeCache, nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(2 * MIB)
        upstream = FakeUpstream(data)
        upstream.gate(3)  # never released
        fills = make_fills(cache, upstream, nursery, progress_timeout=0.3)
        stream = await fills.open(APP, digest)
        exc = await read_until_failure(stream, [])
        assert isinstance(exc, Unavailable) and "sent nothing" in exc.message


async def test_a_blob_too_large_to_cache_is_still_served(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    small = EdgeCache.open(tmp_path / "small", 2 * MIB)
    try:
        with trio.fail_after(TIMEOUT):
            digest, data = make_blob(MIB + 1)
            upstream = FakeUpstream(data)
            fills = make_fills(small, upstream, nursery)
            bodies = [await read_all(await fills.open(APP, digest)) for _ in range(2)]
            assert bodies == [data, data]
            await fills.wait_idle()
            assert len(upstream.opens) == 2
            assert await small.blob_size(digest) is None
            assert spools(small) == []
    finally:
        small.close()


async def test_an_empty_blob(cache: EdgeCache, nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(0)
        upstream = FakeUpstream(data)
        fills = make_fills(cache, upstream, nursery)
        assert await read_all(await fills.open(APP, digest)) == b""
        await fills.wait_idle()
        assert await cache.blob_size(digest) == 0


async def test_a_fill_cancelled_at_shutdown_fails_its_readers_and_cleans_up(
    cache: EdgeCache,
) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = make_blob(2 * MIB)
        upstream = FakeUpstream(data)
        upstream.gate(4)  # never released
        outcome: list[Exception] = []

        async def reader(stream: BlobStream) -> None:
            outcome.append(await read_until_failure(stream, []))

        async with trio.open_nursery() as readers:
            async with trio.open_nursery() as root:
                fills = make_fills(cache, upstream, root)
                readers.start_soon(reader, await fills.open(APP, digest))
                await upstream.at_gate[4].wait()
                root.cancel_scope.cancel()  # the process stops
        assert isinstance(outcome[0], Unavailable)
        assert fills.statistics().failed == 1
        assert spools(cache) == []
        assert await cache.blob_size(digest) is None
