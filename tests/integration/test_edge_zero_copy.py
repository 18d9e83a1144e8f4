"""Edge cache hits go out by sendfile (whole and ranged), and an eviction while a hit is
being sent never disturbs it: the open descriptor keeps the evicted file's bytes alive.

Real servers on loopback (origin ← counting proxy ← edge, all in this trio run); the spy on
``os.sendfile`` counts what the kernel copied without changing what it does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from core.digest import parse_digest
from edge.cache.store import EdgeCache
from tests.integration.edges import EdgeFactory, edge_client, fetch, upstream_gets
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import config_blob, image_manifest, push_manifest, random_blob
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic, bearer_for

MIB = 1024 * 1024
TIMEOUT = 60
PULL = "repository:acme/app:pull"


class SendfileSpy:
    """Counts the bytes sendfile copied from files under ``under`` (the origin runs in this
    process too, and sends its blob files the same way)."""

    def __init__(self) -> None:
        self.under = "/nonexistent/"
        self._by_path: dict[str, int] = {}
        self._real = os.sendfile

    def __call__(self, out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = self._real(out_fd, in_fd, offset, count)
        path = os.readlink(f"/proc/self/fd/{in_fd}")
        self._by_path[path] = self._by_path.get(path, 0) + sent
        return sent

    @property
    def bytes(self) -> int:
        return sum(n for path, n in self._by_path.items() if path.startswith(self.under))

    async def reached(self, expected: int) -> int:
        """The count once it reached ``expected`` (the client can have the last bytes before
        the sending thread returns to count them); the caller's deadline bounds the wait."""
        while self.bytes < expected:  # noqa: ASYNC110  # written by sendfile threads
            await trio.sleep(0.01)
        return self.bytes


@pytest.fixture(name="sendfile")
def sendfile_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[SendfileSpy]:
    spy = SendfileSpy()
    monkeypatch.setattr(os, "sendfile", spy)
    yield spy


async def test_cache_hits_whole_and_ranged_go_by_sendfile(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory, sendfile: SendfileSpy
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        sendfile.under = str(edge.settings.cache_dir)
        blob = random_blob(3 * MIB + 11)
        image = image_manifest(config_blob(), [blob])
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        async with edge_client(edge.url) as http:
            http.headers.update(await bearer_for(http, tenants.acme_pull, PULL))
            path = f"/v2/acme/app/blobs/{blob.digest}"
            miss = await fetch(http, path)
            assert (miss.status, miss.digest) == (200, blob.digest)
            total = await sendfile.reached(blob.size)  # the miss tailed the spool
            assert total == blob.size

            hit = await http.get(path)
            assert hit.status_code == 200 and hit.content == blob.data
            total += blob.size
            assert await sendfile.reached(total) == total

            n = blob.size
            for header, first, last in [
                ("bytes=0-0", 0, 0),
                ("bytes=-10", n - 10, n - 1),
                (f"bytes={MIB}-{2 * MIB + 99}", MIB, 2 * MIB + 99),
            ]:
                part = await http.get(path, headers={"Range": header})
                assert part.status_code == 206, header
                assert part.content == blob.data[first : last + 1], header
                assert part.headers["Content-Range"] == f"bytes {first}-{last}/{n}"
                total += last + 1 - first
                assert await sendfile.reached(total) == total, header
            assert upstream_gets(proxy, blob.digest) == 1

            # Counted as bytes served from the cache, like streamed hits.
            text = (await http.get("/metrics")).text
            served = [
                line for line in text.splitlines()
                if line.startswith('depot_edge_bytes_served_total{source="cache"}')
            ]  # fmt: skip
            assert served and float(served[0].rpartition(" ")[2]) >= blob.size


async def test_an_eviction_mid_send_leaves_the_hit_whole(
    tenants: Tenants,
    proxy: OriginProxy,
    edges: EdgeFactory,
    sendfile: SendfileSpy,
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        sendfile.under = str(edge.settings.cache_dir)
        blob = random_blob(48 * MIB)
        image = image_manifest(config_blob(), [blob])
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        async with edge_client(edge.url) as http:
            http.headers.update(await bearer_for(http, tenants.acme_pull, PULL))
            path = f"/v2/acme/app/blobs/{blob.digest}"
            assert (await fetch(http, path)).digest == blob.digest  # the fill
            before = await sendfile.reached(blob.size)  # the miss
            cache = EdgeCache.open(edge.settings.cache_dir, recover=False)
            try:
                hasher = hashlib.sha256()
                received = 0
                async with http.stream("GET", path) as response:
                    assert response.status_code == 200
                    chunks = response.aiter_raw()
                    async for chunk in chunks:
                        hasher.update(chunk)
                        received += len(chunk)
                        if received >= MIB:
                            break
                    # Evicted while the response is half sent: the file is unlinked.
                    assert await cache.purge() >= 1
                    assert await cache.blob_size(parse_digest(blob.digest)) is None
                    async for chunk in chunks:
                        hasher.update(chunk)
                        received += len(chunk)
                assert received == blob.size
                assert f"sha256:{hasher.hexdigest()}" == blob.digest
            finally:
                cache.close()
            assert await sendfile.reached(before + blob.size) == before + blob.size
            # The next GET is a miss again, filled from origin once more.
            again = await fetch(http, path)
            assert (again.status, again.digest) == (200, blob.digest)
            assert upstream_gets(proxy, blob.digest) == 2


async def test_a_cold_miss_is_sent_by_sendfile_as_the_spool_grows(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory, sendfile: SendfileSpy
) -> None:
    """Readers of a fill in progress tail its spool zero-copy; several at once, one fetch."""
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        sendfile.under = str(edge.settings.cache_dir)
        blob = random_blob(8 * MIB + 3)
        image = image_manifest(config_blob(), [blob])
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        async with edge_client(edge.url) as http:
            http.headers.update(await bearer_for(http, tenants.acme_pull, PULL))
            path = f"/v2/acme/app/blobs/{blob.digest}"
            results = []

            async def one() -> None:
                results.append(await fetch(http, path))

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(one)
            assert [(r.status, r.digest, r.error) for r in results] == [
                (200, blob.digest, None)
            ] * 3
            assert await sendfile.reached(3 * blob.size) == 3 * blob.size
            assert upstream_gets(proxy, blob.digest) == 1
