"""LRU eviction in a small edge cache: the least recently used blob goes, evictions show in
/metrics, an evicted blob is filled again, and a reader of a blob being evicted still gets it
whole."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

from tests.integration.edges import EdgeFactory, edge_client, fetch, metric, metrics, upstream_gets
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import (
    Blob,
    config_blob,
    image_manifest,
    push_blob,
    push_manifest,
    random_blob,
)
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic, bearer_for

MIB = 1024 * 1024
TIMEOUT = 30


async def test_lru_eviction_under_a_small_cache(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge.server.STATS_INTERVAL_SECONDS", 0.05)
    with trio.fail_after(TIMEOUT):
        edge = await edges(cache_size_bytes=8 * MIB)
        b1, b2, b3, b4 = (random_blob(3 * MIB) for _ in range(4))
        image = image_manifest(config_blob(), [b1, b2, b3, b4])
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        async with edge_client(edge.url) as http:
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )

            async def get(blob: Blob) -> None:
                got = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
                assert (got.status, got.size, got.digest) == (200, blob.size, blob.digest)

            async def evictions() -> float:
                return metric(await metrics(http), "depot_edge_cache_evictions")

            assert (await http.get("/v2/acme/app/manifests/v1")).status_code == 200
            await get(b1)
            await get(b2)
            await get(b1)  # a hit: b1 is now more recently used than b2
            assert (upstream_gets(proxy, b1.digest), upstream_gets(proxy, b2.digest)) == (1, 1)
            await get(b3)  # 9 MiB > 8 MiB: the least recently used blob, b2, goes
            # The gauges refresh every few seconds in the background: poll until they do
            # (bounded by the test's fail_after, not by a guess of the refresh period).
            for _ in range(10_000):
                if await evictions() >= 1:
                    break
                await trio.sleep(0.05)
            await get(b1)
            assert upstream_gets(proxy, b1.digest) == 1  # kept
            await get(b2)
            assert upstream_gets(proxy, b2.digest) == 2  # evicted, filled again, correct
            for _ in range(10_000):  # the gauge is refreshed in the background
                if metric(await metrics(http), "depot_edge_cache_size_bytes") <= 8 * MIB:
                    break
                await trio.sleep(0.05)
            assert 6 * MIB <= metric(await metrics(http), "depot_edge_cache_size_bytes") <= 8 * MIB


async def test_a_blob_evicted_while_being_read_is_served_whole(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        # 24 MiB blobs: more than the edge reads ahead of a slow socket (4 MiB chunks, two
        # queued, one being sent), so the edge is still reading the file when it is evicted.
        edge = await edges(cache_size_bytes=64 * MIB)
        read, x, y = (random_blob(24 * MIB) for _ in range(3))
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            for blob in (read, x, y):
                await push_blob(origin, "acme/app", blob)
        # A client that reads slowly: a small receive buffer, so the kernel holds little.
        slow_transport = httpx.AsyncHTTPTransport(
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)]
        )
        async with (
            edge_client(edge.url) as http,
            httpx.AsyncClient(base_url=edge.url, trust_env=False, transport=slow_transport) as slow,
        ):
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            slow.headers.update(http.headers)

            async def get(blob: Blob) -> None:
                got = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
                assert (got.status, got.size, got.digest) == (200, blob.size, blob.digest)

            async def from_cache() -> float:
                text = await metrics(http)
                return metric(text, "depot_edge_bytes_served_total", 'source="cache"')

            await get(read)
            before = await from_cache()
            async with slow.stream("GET", f"/v2/acme/app/blobs/{read.digest}") as response:
                assert response.status_code == 200
                body = response.aiter_raw()
                received = [await anext(body)]
                await get(x)
                await get(y)  # over the limit: the least recently used blob goes, ``read``
                assert await from_cache() - before < read.size  # the edge was mid-read
                received += [chunk async for chunk in body]
            assert b"".join(received) == read.data
            await get(read)
            assert upstream_gets(proxy, read.digest) == 2  # it had been evicted
