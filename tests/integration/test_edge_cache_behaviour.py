"""The edge's cache, seen from outside: hits and misses, HEAD and Range, single-flight fills,
clients leaving mid-fill, tag freshness and invalidation (eviction: test_edge_eviction.py).

Real servers on loopback: origin (auth on) ← fault-injecting proxy (counts what reaches the
origin) ← edge ← httpx clients.
"""

from __future__ import annotations

import os

import httpx
import trio

from tests.integration.edges import (
    EdgeFactory,
    Fetched,
    edge_client,
    fetch,
    metric,
    metrics,
    upstream_gets,
)
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import (
    Blob,
    assert_error,
    config_blob,
    image_manifest,
    new_image,
    push_blob,
    push_manifest,
    random_blob,
)
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic, bearer_for

MIB = 1024 * 1024
TIMEOUT = 30


async def pull_headers(http: httpx.AsyncClient, token: str, *repos: str) -> dict[str, str]:
    scopes = [f"repository:{repo}:pull" for repo in repos]
    return await bearer_for(http, token, *scopes)


async def test_hits_misses_head_and_ranges(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        big, cold416, suffix = random_blob(2 * MIB + 17), random_blob(5000), random_blob(3000)
        image = image_manifest(config_blob(), [big, cold416, suffix])
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        async with edge_client(edge.url) as http:
            http.headers.update(await pull_headers(http, tenants.acme_pull, "acme/app"))

            # HEAD of a cold blob: answered with origin's HEAD, never a fill.
            for _ in range(2):
                head = await http.head(f"/v2/acme/app/blobs/{big.digest}")
                assert head.status_code == 200
                assert head.headers["Content-Length"] == str(big.size)
                assert head.headers["Docker-Content-Digest"] == big.digest
                assert head.content == b""
            assert proxy.count("HEAD", "blob") == 2
            assert proxy.count("GET", "blob") == 0

            # Manifests: by tag (a miss, then fresh), by digest (cached by the tag pull).
            by_tag = await http.get("/v2/acme/app/manifests/v1")
            assert by_tag.status_code == 200, by_tag.text
            assert by_tag.content == image.payload
            assert by_tag.headers["Content-Type"] == image.media_type
            assert by_tag.headers["Docker-Content-Digest"] == image.digest
            manifest_requests = proxy.count("GET", "manifest") + proxy.count("HEAD", "manifest")
            assert manifest_requests >= 1
            for reference in ("v1", image.digest, "v1", image.digest):
                again = await http.get(f"/v2/acme/app/manifests/{reference}")
                assert again.status_code == 200
                assert again.content == image.payload
                assert again.headers["Docker-Content-Digest"] == image.digest
                head = await http.head(f"/v2/acme/app/manifests/{reference}")
                assert head.status_code == 200 and head.content == b""
                assert head.headers["Content-Length"] == str(image.size)
                assert head.headers["Docker-Content-Digest"] == image.digest
            assert proxy.count("GET", "manifest") + proxy.count("HEAD", "manifest") == (
                manifest_requests
            )

            # Range on a cold miss: the exact bytes, and the fill still caches the whole blob.
            part = await http.get(
                f"/v2/acme/app/blobs/{big.digest}", headers={"Range": "bytes=100-199"}
            )
            assert part.status_code == 206
            assert part.content == big.data[100:200]
            assert part.headers["Content-Range"] == f"bytes 100-199/{big.size}"
            assert part.headers["Content-Length"] == "100"
            whole = await http.get(f"/v2/acme/app/blobs/{big.digest}")
            assert whole.status_code == 200 and whole.content == big.data
            assert whole.headers["Docker-Content-Digest"] == big.digest
            assert upstream_gets(proxy, big.digest) == 1

            # Range on hits.
            n = big.size
            for header, first, last in [
                ("bytes=0-0", 0, 0),
                ("bytes=-10", n - 10, n - 1),
                (f"bytes={n - 1}-", n - 1, n - 1),
                ("bytes=5-", 5, n - 1),
                (f"bytes={MIB}-{MIB + 99}", MIB, MIB + 99),
                (f"bytes=7-{n + 1000}", 7, n - 1),
            ]:
                got = await http.get(f"/v2/acme/app/blobs/{big.digest}", headers={"Range": header})
                assert got.status_code == 206, header
                assert got.content == big.data[first : last + 1], header
                assert got.headers["Content-Range"] == f"bytes {first}-{last}/{n}", header
            for header in (f"bytes={n}-", f"bytes={n + 5}-{n + 10}", "bytes=-0"):
                refused = await http.get(
                    f"/v2/acme/app/blobs/{big.digest}", headers={"Range": header}
                )
                assert_error(refused, 416, "RANGE_INVALID")
                assert refused.headers["Content-Range"] == f"bytes */{n}"
            head = await http.head(f"/v2/acme/app/blobs/{big.digest}")
            assert head.status_code == 200 and head.headers["Content-Length"] == str(n)

            # 416 and a suffix range on cold misses.
            refused = await http.get(
                f"/v2/acme/app/blobs/{cold416.digest}", headers={"Range": "bytes=6000-"}
            )
            assert_error(refused, 416, "RANGE_INVALID")
            assert refused.headers["Content-Range"] == f"bytes */{cold416.size}"
            tail = await http.get(
                f"/v2/acme/app/blobs/{suffix.digest}", headers={"Range": "bytes=-10"}
            )
            assert tail.status_code == 206 and tail.content == suffix.data[-10:]
            assert (
                tail.headers["Content-Range"]
                == f"bytes {suffix.size - 10}-{suffix.size - 1}/{suffix.size}"
            )
            for blob in (cold416, suffix):
                got = await http.get(f"/v2/acme/app/blobs/{blob.digest}")
                assert got.status_code == 200 and got.content == blob.data
                assert upstream_gets(proxy, blob.digest) == 1

            # Unknown objects.
            missing = random_blob(10)
            assert_error(
                await http.get(f"/v2/acme/app/blobs/{missing.digest}"), 404, "BLOB_UNKNOWN"
            )
            assert_error(
                await http.head(f"/v2/acme/app/blobs/{missing.digest}"), 404, "BLOB_UNKNOWN"
            )
            assert_error(await http.get("/v2/acme/app/manifests/nope"), 404, "MANIFEST_UNKNOWN")
            assert proxy.count("GET", "blob") == 3


async def test_concurrent_cold_gets_make_one_upstream_fetch(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(2 * TIMEOUT):  # 2 GiB to the clients: a loaded machine is slow
        edge = await edges()
        blob = Blob(os.urandom(64 * MIB))
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_blob(origin, "acme/big", blob)
        proxy.stall_blob_after_bytes = MIB  # the fill stays open until every client is in
        clients = 32
        with_headers = 0
        all_in = trio.Event()
        results: list[Fetched] = []

        def counted(response: httpx.Response) -> None:
            nonlocal with_headers
            assert response.status_code == 200, response.status_code
            assert response.headers["Content-Length"] == str(blob.size)
            with_headers += 1
            if with_headers == clients:
                all_in.set()

        async with edge_client(edge.url) as http:
            http.headers.update(await pull_headers(http, tenants.acme_pull, "acme/big"))

            async def one() -> None:
                results.append(
                    await fetch(http, f"/v2/acme/big/blobs/{blob.digest}", on_headers=counted)
                )

            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    nursery.start_soon(one)
                await all_in.wait()
                await proxy.wait_for(lambda p: p.waiting == 1)
                during = await metrics(http)
                assert metric(during, "depot_edge_fills_in_flight") == 1
                assert metric(during, "depot_edge_fill_waiters_coalesced") == clients - 1
                proxy.release()
            assert len(results) == clients
            for result in results:
                assert result.error is None, result.error
                assert (result.status, result.size, result.digest) == (200, blob.size, blob.digest)
            assert upstream_gets(proxy, blob.digest) == 1
            assert proxy.count("GET", "blob") == 1
            # Cached: the last bytes come from the cache, not from a second fetch.
            tail = await http.get(
                f"/v2/acme/big/blobs/{blob.digest}", headers={"Range": "bytes=-100"}
            )
            assert tail.status_code == 206 and tail.content == blob.data[-100:]
            assert proxy.count("GET", "blob") == 1


async def test_a_client_leaving_mid_fill_does_not_disturb_the_others(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        shared, alone = random_blob(8 * MIB), random_blob(4 * MIB)
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            for blob in (shared, alone):
                await push_blob(origin, "acme/app", blob)
        proxy.stall_blob_after_bytes = 2 * MIB
        async with edge_client(edge.url) as http:
            http.headers.update(await pull_headers(http, tenants.acme_pull, "acme/app"))
            path = f"/v2/acme/app/blobs/{shared.digest}"
            stayers, results = 3, []
            left, all_in = trio.Event(), trio.Event()

            async def leaver() -> None:
                async with http.stream("GET", path) as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_raw():
                        assert chunk and chunk == shared.data[: len(chunk)]
                        break
                left.set()  # leaving the block closed the connection mid-body

            def arrived(response: httpx.Response) -> None:
                arrivals.append(response.status_code)
                if len(arrivals) == stayers:
                    all_in.set()

            arrivals: list[int] = []

            async def stayer() -> None:
                results.append(await fetch(http, path, on_headers=arrived))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(leaver)
                for _ in range(stayers):
                    nursery.start_soon(stayer)
                await left.wait()
                await all_in.wait()
                await proxy.wait_for(lambda p: p.waiting == 1)
                proxy.release()
            for result in results:
                assert result.error is None, result.error
                assert result.status == 200
                assert (result.size, result.digest) == (shared.size, shared.digest)
            # Cached: the next GET is a hit.
            again = await fetch(http, path)
            assert (again.size, again.digest) == (shared.size, shared.digest)
            assert upstream_gets(proxy, shared.digest) == 1

            # The only client leaves: the fill goes on and caches the blob all the same.
            async with http.stream("GET", f"/v2/acme/app/blobs/{alone.digest}") as response:
                assert response.status_code == 200
                await proxy.wait_for(lambda p: p.waiting == 1)
            proxy.release()
            for _ in range(100):
                if metric(await metrics(http), "depot_edge_fills_in_flight") == 0:
                    break
                await trio.sleep(0.05)
            assert metric(await metrics(http), "depot_edge_fills_in_flight") == 0
            got = await fetch(http, f"/v2/acme/app/blobs/{alone.digest}")
            assert (got.size, got.digest) == (alone.size, alone.digest)
            assert upstream_gets(proxy, alone.digest) == 1


async def test_a_tag_moved_on_origin_is_seen_after_the_freshness_window(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges(tag_freshness_seconds=1)
        first, second = new_image(), new_image()
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as origin,
            edge_client(edge.url) as http,
        ):
            http.headers.update(await pull_headers(http, tenants.acme_pull, "acme/app"))
            await push_manifest(origin, "acme/app", first, "v1")
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.status_code == 200 and got.content == first.payload
            await push_manifest(origin, "acme/app", second, "v1")
            early = await http.get("/v2/acme/app/manifests/v1")
            assert early.status_code == 200
            assert early.headers["Docker-Content-Digest"] in (first.digest, second.digest)
            for _ in range(25):
                got = await http.get("/v2/acme/app/manifests/v1")
                assert got.status_code == 200
                if got.headers["Docker-Content-Digest"] == second.digest:
                    break
                await trio.sleep(0.2)
            assert got.headers["Docker-Content-Digest"] == second.digest
            assert got.content == second.payload
            assert "Warning" not in got.headers


async def test_a_manifest_put_through_the_edge_invalidates_its_tag_at_once(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges(tag_freshness_seconds=300)
        first, second, third = new_image(), new_image(), new_image()
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as origin,
            edge_client(edge.url, basic(tenants.acme)) as pusher,
            edge_client(edge.url) as http,
        ):
            http.headers.update(await pull_headers(http, tenants.acme_pull, "acme/app"))
            await push_manifest(origin, "acme/app", first, "v1")
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.headers["Docker-Content-Digest"] == first.digest
            await push_manifest(pusher, "acme/app", second, "v1")  # through the edge
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.status_code == 200
            assert got.headers["Docker-Content-Digest"] == second.digest
            assert got.content == second.payload
            # A push straight to origin is seen only after the (long) freshness window:
            # the answer above came from the edge's invalidation, not from a revalidation.
            await push_manifest(origin, "acme/app", third, "v1")
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.headers["Docker-Content-Digest"] == second.digest
