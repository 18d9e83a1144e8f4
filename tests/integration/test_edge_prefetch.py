"""Prefetch on manifest: an image manifest fetched from origin starts fills of its blobs in
the background, so the client's blob GETs join them; an index prefetches nothing until its
client asks for a child manifest. Every blob reaches the origin exactly once.

Real servers on loopback: origin ← counting proxy ← edge (prefetch on) ← httpx.
"""

from __future__ import annotations

import trio

from tests.integration.edges import EdgeFactory, edge_client, fetch, upstream_gets
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import (
    Blob,
    config_blob,
    image_manifest,
    index_manifest,
    push_manifest,
    random_blob,
)
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic, bearer_for

MIB = 1024 * 1024
TIMEOUT = 60
PULL = "repository:acme/app:pull"


async def _until_fetched(proxy: OriginProxy, blobs: list[Blob]) -> None:
    """Wait (the test's deadline bounds it) until the origin saw a GET of every blob."""
    await proxy.wait_for(lambda p: all(upstream_gets(p, b.digest) >= 1 for b in blobs))


async def test_an_image_manifest_prefetches_its_blobs_once(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges(prefetch_blobs=2)
        config = config_blob()
        layers = [random_blob(2 * MIB + i) for i in range(3)]
        image = image_manifest(config, layers)
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        async with edge_client(edge.url) as http:
            http.headers.update(await bearer_for(http, tenants.acme_pull, PULL))
            assert upstream_gets(proxy, layers[0].digest) == 0
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.status_code == 200 and got.content == image.payload
            # Nobody asked for a blob: the edge fetches them all on its own.
            blobs = [config, *layers]
            await _until_fetched(proxy, blobs)
            for blob in blobs:
                pulled = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
                assert (pulled.status, pulled.digest, pulled.error) == (200, blob.digest, None)
            assert [upstream_gets(proxy, b.digest) for b in blobs] == [1] * len(blobs)

            # A second image sharing a layer: only the new blobs are fetched.
            extra = random_blob(MIB)
            second = image_manifest(config, [layers[0], extra])
            async with edge_client(tenants.url, basic(tenants.acme)) as origin:
                await push_manifest(origin, "acme/app", second, "v2")
            assert (await http.get("/v2/acme/app/manifests/v2")).status_code == 200
            await _until_fetched(proxy, [extra])
            pulled = await fetch(http, f"/v2/acme/app/blobs/{extra.digest}")
            assert (pulled.status, pulled.digest) == (200, extra.digest)
            assert upstream_gets(proxy, extra.digest) == 1
            assert [upstream_gets(proxy, b.digest) for b in blobs] == [1] * len(blobs)


async def test_an_index_prefetches_the_child_its_client_asks_for(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges(prefetch_blobs=3)
        amd = image_manifest(config_blob(), [random_blob(MIB + 1)])
        arm = image_manifest(config_blob(), [random_blob(MIB + 2)])
        index = index_manifest([amd, arm])
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", amd)
            await push_manifest(origin, "acme/app", arm)
            await push_manifest(origin, "acme/app", index, "multi")
        async with edge_client(edge.url) as http:
            http.headers.update(await bearer_for(http, tenants.acme_pull, PULL))
            assert (await http.get("/v2/acme/app/manifests/multi")).status_code == 200
            assert (await http.get(f"/v2/acme/app/manifests/{arm.digest}")).status_code == 200
            arm_blobs = list(arm.blobs)
            await _until_fetched(proxy, arm_blobs)
            for blob in arm_blobs:
                pulled = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
                assert (pulled.status, pulled.digest) == (200, blob.digest)
                assert upstream_gets(proxy, blob.digest) == 1
            # The other platform's child was never asked for: none of its blobs moved.
            assert [upstream_gets(proxy, b.digest) for b in amd.blobs] == [0] * len(amd.blobs)
