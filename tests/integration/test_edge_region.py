"""Edges of one region, coordinated through a real (private) Redis.

origin ← proxy (counts blob GETs) ← three edges in one region. Cold blobs are fetched from
origin once per region however many clients ask at which edges; a leader edge stopped
mid-fill is taken over where the followers' copies got to; Redis down means every edge serves
alone (no wrong bytes, nothing refused) and coordination resumes when it is back.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.integration.edges import (
    EdgeFactory,
    RunningEdge,
    edge_client,
    fetch,
    metric,
    metrics,
    upstream_gets,
)
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import Blob, config_blob, image_manifest, push_manifest, random_blob
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic
from tests.redis_server import RedisServer, redis_server

TIMEOUT = 90
MIB = 1024 * 1024


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        await server.start()
        yield server


async def region_of(
    edges: EdgeFactory, redis: RedisServer, count: int, region: str = ""
) -> list[RunningEdge]:
    """``count`` edges of ``region`` (a new one by default)."""
    region = region or f"r-{uuid.uuid4().hex[:8]}"
    return [
        await edges(
            f"{region}-edge{uuid.uuid4().hex[:6]}",
            redis_url=redis.url,
            region=region,
            region_lock_seconds=2,
        )
        for _ in range(count)
    ]


async def pushed_blob(tenants: Tenants, size: int) -> Blob:
    layer = random_blob(size)
    image = image_manifest(config_blob(), [layer])
    async with edge_client(tenants.url, basic(tenants.acme)) as origin:
        await push_manifest(origin, "acme/app", image, "v1")
    return layer


async def pull(edge: RunningEdge, tenants: Tenants, blob: Blob) -> str:
    """One client's GET of ``blob`` through ``edge``: the digest of what it received."""
    async with edge_client(edge.url, basic(tenants.acme_pull)) as http:
        got = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
    assert got.status == 200 and got.error is None, (got.status, got.error)
    return got.digest


async def test_many_clients_over_a_region_make_one_origin_fetch(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory, redis: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        blob = await pushed_blob(tenants, 16 * MIB)
        name = f"r-{uuid.uuid4().hex[:8]}"
        region = await region_of(edges, redis, 3, name)
        received: list[str] = []

        async def client(i: int) -> None:
            received.append(await pull(region[i % 3], tenants, blob))

        async with trio.open_nursery() as clients:
            for i in range(24):
                clients.start_soon(client, i)
        assert received == [blob.digest] * 24
        assert upstream_gets(proxy, blob.digest) == 1
        peer_fetches = 0.0
        for edge in region:
            async with edge_client(edge.url) as http:
                text = await metrics(http)
                assert metric(text, "depot_edge_region_redis_up") == 1
                peer_fetches += metric(text, "depot_edge_region_peer_fetches")
                ready = await http.get("/readyz")
                assert ready.status_code == 200 and "redis up" in ready.text
        assert peer_fetches >= 2  # the two edges that did not lead got it from a peer

        # Later misses of the same digest at a fresh edge of the region: from a peer.
        (late,) = await region_of(edges, redis, 1, name)
        assert await pull(late, tenants, blob) == blob.digest
        assert upstream_gets(proxy, blob.digest) == 1


async def test_a_leader_stopped_mid_fill_is_taken_over(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory, redis: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        blob = await pushed_blob(tenants, 8 * MIB)
        leader, *followers = await region_of(edges, redis, 3)
        proxy.stall_blob_after_bytes = 2 * MIB
        received: list[str] = []

        async def first() -> None:
            async with edge_client(leader.url, basic(tenants.acme_pull)) as http:
                await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")  # cut: the leader stops

        async def follower(edge: RunningEdge) -> None:
            received.append(await pull(edge, tenants, blob))

        async with trio.open_nursery() as clients:
            clients.start_soon(first)
            await proxy.wait_for(lambda p: p.waiting == 1)  # the leader's fill is stalled
            for edge in followers:
                clients.start_soon(follower, edge)
            # The followers stream what the leader has: their peer requests joined its fill.
            async with edge_client(leader.url) as http:
                for _ in range(400):
                    if metric(await metrics(http), "depot_edge_fill_waiters_coalesced") >= 2:
                        break
                    await trio.sleep(0.05)
            proxy.stall_blob_after_bytes = None
            await leader.stop()  # mid-fill: its peers' streams break
            proxy.release()
        assert received == [blob.digest] * 2
        # The leader's (cut) fetch, then one takeover from where the copies got to.
        assert upstream_gets(proxy, blob.digest) == 2
        takeovers = 0.0
        for edge in followers:
            async with edge_client(edge.url) as http:
                takeovers += metric(await metrics(http), "depot_edge_region_takeovers")
        assert takeovers >= 1


async def test_redis_down_then_back(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory, redis: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        region = await region_of(edges, redis, 2)
        redis.stop()
        alone = await pushed_blob(tenants, 2 * MIB)
        # Each edge serves alone: right bytes, one origin fetch per edge at most.
        for edge in region:
            assert await pull(edge, tenants, alone) == alone.digest
        assert upstream_gets(proxy, alone.digest) <= 2
        async with edge_client(region[0].url) as http:
            assert metric(await metrics(http), "depot_edge_region_redis_up") == 0
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and "DOWN" in ready.text

        await redis.start()  # same port, empty: the heartbeats re-join the edges
        for edge in region:
            async with edge_client(edge.url) as http:
                for _ in range(100):
                    if metric(await metrics(http), "depot_edge_region_redis_up") == 1:
                        break
                    await trio.sleep(0.1)
                assert metric(await metrics(http), "depot_edge_region_redis_up") == 1
        together = await pushed_blob(tenants, 2 * MIB)
        async with trio.open_nursery() as clients:
            for edge in region * 4:
                clients.start_soon(pull, edge, tenants, together)
        assert upstream_gets(proxy, together.digest) == 1
        assert hashlib.sha256(together.data).hexdigest() == together.digest.split(":")[1]
