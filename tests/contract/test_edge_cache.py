"""The edge's disk cache (EdgeCache over diskcache): adoption, eviction, recovery, entries."""

from __future__ import annotations

import fcntl
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from core import mediatypes
from core.digest import Digest, sha256_of
from core.reference import RepositoryName, Tag, parse_repository_name, parse_tag
from edge.cache.store import EdgeCache

KIB = 1024
TIMEOUT = 20
APP, V1 = parse_repository_name("acme/app"), parse_tag("v1")


def name(text: str) -> RepositoryName:
    return parse_repository_name(text)


@pytest.fixture
def edge_dir(tmp_path: Path) -> Path:
    return tmp_path / "edge"


@pytest.fixture
def cache(edge_dir: Path) -> Iterator[EdgeCache]:
    opened = EdgeCache.open(edge_dir, 1024 * KIB)
    yield opened
    opened.close()


def blob(size: int, seed: int) -> tuple[Digest, bytes]:
    data = random.Random(seed).randbytes(size)
    return sha256_of(data), data


def spool(cache: EdgeCache, digest: Digest, data: bytes) -> Path:
    path = cache.spool_path(digest)
    path.write_bytes(data)
    return path


async def put(cache: EdgeCache, size: int, seed: int) -> Digest:
    digest, data = blob(size, seed)
    assert await cache.adopt_blob(digest, spool(cache, digest, data), size)
    return digest


async def read_blob(cache: EdgeCache, digest: Digest) -> bytes | None:
    cached = await cache.open_blob(digest)
    if cached is None:
        return None
    try:
        return cached.file.read()
    finally:
        cached.close()


async def present(cache: EdgeCache, *digests: Digest) -> list[bool]:
    return [await cache.blob_size(digest) is not None for digest in digests]


async def test_adopt_moves_the_file_without_copying(cache: EdgeCache) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = blob(300 * KIB, 1)
        path = spool(cache, digest, data)
        inode = path.stat().st_ino
        assert await cache.adopt_blob(digest, path, len(data))
        assert not path.exists()
        cached = await cache.open_blob(digest)
        assert cached is not None
        try:
            assert os.fstat(cached.file.fileno()).st_ino == inode
            assert cached.size == len(data)
            assert cached.file.read() == data
        finally:
            cached.close()
        assert await cache.blob_size(digest) == len(data)
        assert await cache.blob_size(sha256_of(b"other")) is None


async def test_lru_eviction_keeps_the_new_blob_and_the_recently_used(cache: EdgeCache) -> None:
    with trio.fail_after(TIMEOUT):
        a, b, c = [await put(cache, 256 * KIB, seed) for seed in (1, 2, 3)]
        assert (await cache.stats()).evictions == 0
        assert await read_blob(cache, a) is not None  # a is now more recent than b
        d = await put(cache, 256 * KIB, 4)
        assert await present(cache, a, b, c, d) == [True, False, True, True]
        # A bigger blob needs two evictions: the least recently used ones, never itself.
        e = await put(cache, 500 * KIB, 5)
        assert await present(cache, a, c, d, e) == [False, False, True, True]
        stats = await cache.stats()
        assert stats.evictions == 3
        assert stats.volume_bytes <= stats.size_limit == 1024 * KIB
        assert stats.blobs == 2


async def test_each_new_blob_survives_a_full_cache(cache: EdgeCache) -> None:
    # The cull_limit trap: diskcache's batch cull would evict the value just stored.
    with trio.fail_after(TIMEOUT):
        for seed in range(6):
            digest = await put(cache, 450 * KIB, seed)
            assert await read_blob(cache, digest) == blob(450 * KIB, seed)[1]
        stats = await cache.stats()
        assert stats.blobs == 2 and stats.evictions == 4


async def test_an_open_reader_survives_eviction(cache: EdgeCache) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = blob(400 * KIB, 1)
        assert await cache.adopt_blob(digest, spool(cache, digest, data), len(data))
        cached = await cache.open_blob(digest)
        assert cached is not None
        try:
            first = cached.file.read(1000)
            await put(cache, 400 * KIB, 2)
            await put(cache, 400 * KIB, 3)
            assert await cache.open_blob(digest) is None  # evicted, its file unlinked
            assert first + cached.file.read() == data
        finally:
            cached.close()


async def test_a_blob_over_half_the_limit_is_refused(cache: EdgeCache) -> None:
    with trio.fail_after(TIMEOUT):
        assert cache.max_blob_bytes == 512 * KIB
        digest, data = blob(512 * KIB + 1, 1)
        path = spool(cache, digest, data)
        assert not await cache.adopt_blob(digest, path, len(data))
        assert path.exists()  # left to the caller, which still serves it
        assert await cache.open_blob(digest) is None


async def test_adopt_checks_the_size(cache: EdgeCache) -> None:
    with trio.fail_after(TIMEOUT):
        digest, data = blob(10 * KIB, 1)
        with pytest.raises(ValueError):
            await cache.adopt_blob(digest, spool(cache, digest, data), len(data) + 1)
        assert await cache.open_blob(digest) is None


async def test_a_truncated_cached_file_is_a_miss(cache: EdgeCache, edge_dir: Path) -> None:
    with trio.fail_after(TIMEOUT):
        digest = await put(cache, 100 * KIB, 1)
        (value,) = [p for p in (edge_dir / "cache").rglob("*.val")]
        os.truncate(value, 50 * KIB)  # what a crash before the data reached the disk leaves
        assert await cache.open_blob(digest) is None
        assert not value.exists()
        assert (await cache.stats()).blobs == 0


async def test_open_deletes_leftover_spools_and_orphans(edge_dir: Path) -> None:
    with trio.fail_after(TIMEOUT):
        first = EdgeCache.open(edge_dir, 1024 * KIB)
        kept = await put(first, 100 * KIB, 1)
        digest, data = blob(100 * KIB, 2)
        leftover = spool(first, digest, data)
        live = spool(first, digest, data)
        orphan = edge_dir / "cache" / "ab" / "cd" / "0123456789.val"  # a set() killed mid-way
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"partial")
        first.close()
        live_fd = os.open(live, os.O_RDONLY)
        fcntl.flock(live_fd, fcntl.LOCK_EX)  # what a running fill holds
        try:
            second = EdgeCache.open(edge_dir, 1024 * KIB)
            try:
                assert not leftover.exists()
                assert live.exists()
                assert not orphan.exists()
                assert await read_blob(second, kept) == blob(100 * KIB, 1)[1]
            finally:
                second.close()
        finally:
            os.close(live_fd)


async def test_manifests_tags_and_links(cache: EdgeCache) -> None:
    with trio.fail_after(TIMEOUT):
        digest = sha256_of(b"{}")
        media_type = "application/vnd.oci.image.manifest.v1+json"
        assert await cache.get_manifest(APP, digest) is None
        await cache.put_manifest(APP, digest, media_type, b"{}")
        big = b"x" * (100 * KIB)  # stored as a file by diskcache
        await cache.put_manifest(APP, sha256_of(big), media_type, big)
        assert await cache.get_manifest(APP, digest) == (media_type, b"{}")
        assert await cache.get_manifest(APP, sha256_of(big)) == (media_type, big)

        assert await cache.get_tag(APP, V1) is None
        await cache.put_tag(APP, V1, digest, media_type, 1700000000.5)
        entry = await cache.get_tag(APP, V1)
        assert entry is not None
        assert (entry.digest, entry.media_type, entry.fetched_at) == (
            digest,
            media_type,
            1700000000.5,
        )
        assert await cache.get_tag(APP, parse_tag("v2")) is None
        # No parser makes this tag (':' is not allowed in one); its key must not collide.
        assert await cache.get_tag(name("acme/ap"), Tag("p:v1")) is None
        await cache.drop_tag(APP, V1)
        assert await cache.get_tag(APP, V1) is None
        await cache.drop_tag(APP, V1)  # absent: not an error

        other = sha256_of(b"other")
        await cache.add_links(APP, [digest, other])
        assert await cache.has_link(APP, digest)
        assert await cache.has_link(APP, other)
        assert not await cache.has_link(name("evil/app"), digest)
        assert not await cache.has_link(APP, sha256_of(b"third"))


async def test_namespaces_keep_names_apart_and_share_content(cache: EdgeCache) -> None:
    """Origin's ``acme/app`` and a mirror's ``acme/app`` are different repositories: their
    tags and links never answer each other; blobs and manifests are the same bytes."""
    with trio.fail_after(TIMEOUT):
        hub, ghcr = cache.namespaced("mirror:docker.io"), cache.namespaced("org:acme:ghcr.io:x")
        assert (cache.namespace, hub.namespace) == ("", "mirror:docker.io")
        digest = await put(hub, 10 * KIB, 7)
        assert await read_blob(cache, digest) == blob(10 * KIB, 7)[1]
        # A payload that names its media type is the same manifest in every namespace.
        named = b'{"mediaType":"%s"}' % mediatypes.OCI_MANIFEST.encode()
        await cache.put_manifest(APP, sha256_of(named), mediatypes.OCI_MANIFEST, named)
        assert await ghcr.get_manifest(APP, sha256_of(named)) == (mediatypes.OCI_MANIFEST, named)

        await hub.add_links(APP, [digest])
        await hub.put_tag(APP, V1, digest, "application/json", 5.0)
        assert await hub.has_link(APP, digest)
        assert (await hub.get_tag(APP, V1)) is not None
        for other in (cache, ghcr, cache.namespaced("mirror:docker.io2")):
            assert not await other.has_link(APP, digest), other.namespace
            assert await other.get_tag(APP, V1) is None, other.namespace
        await cache.add_links(APP, [digest])  # origin's own link does not widen the mirror's
        assert not await ghcr.has_link(APP, digest)
        await hub.drop_tag(APP, V1)
        assert await hub.get_tag(APP, V1) is None

        for bad in ("", "a|b"):
            with pytest.raises(ValueError, match="namespace"):
                cache.namespaced(bad)


async def test_media_types_are_per_repository_unless_the_payload_names_one(
    cache: EdgeCache,
) -> None:
    oci, docker = mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST
    other = name("other/app")
    with trio.fail_after(TIMEOUT):
        # The same bytes without a mediaType: each repository keeps the type it was given.
        bare = b'{"schemaVersion":2,"config":{},"layers":[]}'
        await cache.put_manifest(other, sha256_of(bare), docker, bare)
        assert await cache.get_manifest(APP, sha256_of(bare)) is None  # unknown type here
        await cache.put_manifest(APP, sha256_of(bare), oci, bare)
        await cache.put_manifest(other, sha256_of(bare), docker, bare)
        assert await cache.get_manifest(APP, sha256_of(bare)) == (oci, bare)
        assert await cache.get_manifest(other, sha256_of(bare)) == (docker, bare)
        # Bytes that name their type are served as that, whoever fetched them first.
        named = b'{"schemaVersion":2,"mediaType":"%s","config":{},"layers":[]}' % oci.encode()
        await cache.put_manifest(other, sha256_of(named), docker, named)
        for repository in (APP, other):
            assert await cache.get_manifest(repository, sha256_of(named)) == (oci, named)


async def test_stats_and_purge_from_another_instance(cache: EdgeCache, edge_dir: Path) -> None:
    with trio.fail_after(TIMEOUT):
        a = await put(cache, 100 * KIB, 1)
        await put(cache, 100 * KIB, 2)
        await cache.put_tag(APP, V1, a, "application/json", 1.0)
        assert await read_blob(cache, a) is not None
        assert await read_blob(cache, sha256_of(b"absent")) is None
        # A tool attaching while the edge runs: the recorded limit, no recovery.
        tool = EdgeCache.open(edge_dir, recover=False)
        try:
            stats = await tool.stats()
            assert (stats.entries, stats.blobs, stats.hits, stats.misses) == (3, 2, 1, 1)
            assert stats.size_limit == 1024 * KIB
            assert stats.volume_bytes > 200 * KIB
            held = await cache.open_blob(a)
            assert held is not None
            assert await tool.purge() == 3
        finally:
            tool.close()
        try:
            assert held.file.read() == blob(100 * KIB, 1)[1]
        finally:
            held.close()
        assert await cache.open_blob(a) is None
        assert await cache.get_tag(APP, V1) is None
        stats = await cache.stats()
        assert (stats.entries, stats.blobs, stats.hits) == (0, 0, 2)
        await put(cache, 100 * KIB, 3)  # still usable after a purge


async def test_concurrent_tasks(edge_dir: Path) -> None:
    cache = EdgeCache.open(edge_dir, 2048 * KIB)
    try:
        with trio.fail_after(TIMEOUT):
            results: dict[int, bytes | None] = {}

            async def worker(seed: int) -> None:
                digest = await put(cache, 64 * KIB, seed)
                await cache.add_links(name(f"org{seed}/app"), [digest])
                results[seed] = await read_blob(cache, digest)
                assert await cache.has_link(name(f"org{seed}/app"), digest)

            async with trio.open_nursery() as nursery:
                for seed in range(24):
                    nursery.start_soon(worker, seed)
            assert results == {seed: blob(64 * KIB, seed)[1] for seed in range(24)}
            stats = await cache.stats()
            assert stats.blobs == 24 and stats.evictions == 0
    finally:
        cache.close()


async def test_fresh_tags_are_answered_from_memory_and_dropped_with_the_tag(
    cache: EdgeCache, edge_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        digest = sha256_of(b"{}")
        other = cache.namespaced("docker.io")
        assert cache.fresh_tag(APP, V1, 100.0, 30) is None
        await cache.put_tag(APP, V1, digest, mediatypes.OCI_MANIFEST, 100.0)
        # Synchronous: no thread, no disk. Fresh only inside the window.
        hot = cache.fresh_tag(APP, V1, 110.0, 30)
        assert hot is not None and (hot.digest, hot.fetched_at) == (digest, 100.0)
        assert cache.fresh_tag(APP, V1, 130.0, 30) is None
        assert cache.fresh_tag(APP, V1, 99.0, 30) is None  # a clock that went back
        assert other.fresh_tag(APP, V1, 110.0, 30) is None  # another upstream's name

        await cache.drop_tag(APP, V1)
        assert cache.fresh_tag(APP, V1, 110.0, 30) is None
        assert await cache.get_tag(APP, V1) is None

        await cache.put_tag(APP, V1, digest, mediatypes.OCI_MANIFEST, 100.0)
        await cache.purge()
        assert cache.fresh_tag(APP, V1, 110.0, 30) is None

        # Dropped by another process: memory keeps it until the disk is read again.
        await cache.put_tag(APP, V1, digest, mediatypes.OCI_MANIFEST, 100.0)
        elsewhere = EdgeCache.open(edge_dir, recover=False)
        try:
            await elsewhere.drop_tag(APP, V1)
        finally:
            elsewhere.close()
        assert cache.fresh_tag(APP, V1, 110.0, 30) is not None
        assert await cache.get_tag(APP, V1) is None
        assert cache.fresh_tag(APP, V1, 110.0, 30) is None

        await cache.put_tag(APP, V1, digest, mediatypes.OCI_MANIFEST, 100.0)
        cache.forget_hot_tags()
        assert cache.fresh_tag(APP, V1, 110.0, 30) is None
        entry = await cache.get_tag(APP, V1)
        assert entry is not None and entry.digest == digest
        assert cache.fresh_tag(APP, V1, 110.0, 30) is not None  # read back into memory
