"""The edge when its origin fails: mid-fill aborts, a killed and restarted origin process, a
down / overloaded / stalled origin behind a warm cache, corrupted bodies.

A reader of a failed fill must never get a complete body (HTTP/1.1 says "incomplete" by
cutting the connection short of Content-Length), nothing wrong is ever cached, and every
answer while origin is away is a prompt 200 from the cache or a 503 with Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.edges import (
    EdgeFactory,
    Fetched,
    edge_client,
    fetch,
    metric,
    metrics,
    start_edge,
    upstream_gets,
)
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import (
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
from tests.processes import origin_command, origin_process

MIB = 1024 * 1024
TIMEOUT = 30
#: A hang guard for answers that must come promptly (never a timing assertion).
PROMPT = 10


async def concurrent_fetches(
    http: httpx.AsyncClient,
    proxy: OriginProxy,
    path: str,
    readers: int,
    *,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> list[Fetched]:
    """``readers`` GETs of ``path`` joined on one fill: the proxy must stall the blob body
    (``stall_blob_after_bytes``) until every reader has its response head; then
    ``meanwhile()`` runs and the stall is released (and switched off)."""
    results: list[Fetched] = []
    heads: list[int] = []
    all_in = trio.Event()

    def arrived(response: httpx.Response) -> None:
        heads.append(response.status_code)
        if len(heads) == readers:
            all_in.set()

    async def one() -> None:
        results.append(await fetch(http, path, on_headers=arrived))

    async with trio.open_nursery() as nursery:
        for _ in range(readers):
            nursery.start_soon(one)
        await all_in.wait()
        await proxy.wait_for(lambda p: p.waiting == 1)
        if meanwhile is not None:
            await meanwhile()
        proxy.stall_blob_after_bytes = None
        proxy.release()
    return results


def assert_incomplete(result: Fetched, size: int) -> None:
    """A failed fill's reader: the head was sent, the body cut short (never complete)."""
    assert result.status == 200
    assert result.headers["Content-Length"] == str(size)
    assert result.size < size
    assert result.error is not None


async def test_origin_failing_mid_fill(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        blob = random_blob(4 * MIB)
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_blob(origin, "acme/app", blob)
        path = f"/v2/acme/app/blobs/{blob.digest}"
        proxy.stall_blob_after_bytes = 256 * 1024
        proxy.fail_blob_after_bytes = MIB  # then the connection is cut
        async with edge_client(edge.url) as http:
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            for result in await concurrent_fetches(http, proxy, path, 3):
                assert_incomplete(result, blob.size)
                assert result.size <= MIB
            assert upstream_gets(proxy, blob.digest) == 1
            assert metric(await metrics(http), "depot_edge_fill_failures") == 1
            # Nothing was cached: the next request fetches again, and fails again.
            assert_incomplete(await fetch(http, path), blob.size)
            assert upstream_gets(proxy, blob.digest) == 2
            # Healthy again: served whole, then cached.
            proxy.heal()
            for expected_gets in (3, 3):
                got = await fetch(http, path)
                assert (got.status, got.size, got.digest) == (200, blob.size, blob.digest)
                assert upstream_gets(proxy, blob.digest) == expected_gets


async def test_a_corrupted_body_is_never_served_complete_nor_cached(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        blob = random_blob(2 * MIB + 5)
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_blob(origin, "acme/app", blob)
        path = f"/v2/acme/app/blobs/{blob.digest}"
        proxy.corrupt_blob = True  # one byte flipped: right size, wrong digest
        async with edge_client(edge.url) as http:
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            proxy.stall_blob_after_bytes = 0
            for result in await concurrent_fetches(http, proxy, path, 3):
                assert_incomplete(result, blob.size)
            assert upstream_gets(proxy, blob.digest) == 1
            assert_incomplete(await fetch(http, path), blob.size)  # not cached, not remembered
            assert upstream_gets(proxy, blob.digest) == 2
            # A range that reaches the end waits for verification too.
            tail = await fetch(http, path, {"Range": "bytes=-100"})
            assert tail.status == 206 and tail.size < 100 and tail.error is not None
            assert upstream_gets(proxy, blob.digest) == 3
            assert metric(await metrics(http), "depot_edge_fill_failures") == 3
            proxy.corrupt_blob = False
            for _ in range(2):
                got = await fetch(http, path)
                assert (got.status, got.size, got.digest) == (200, blob.size, blob.digest)
            assert upstream_gets(proxy, blob.digest) == 4


async def test_origin_process_killed_mid_fill_and_restarted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data = tmp_path / "origin-data"
    log = tmp_path / "origin.log"

    async def cli(*args: str) -> dict[str, str]:
        done = await trio.run_process(
            [*origin_command(), *args, "--data-dir", str(data), "--json"], capture_stdout=True
        )
        answer: dict[str, str] = json.loads(done.stdout)
        return answer

    with trio.fail_after(TIMEOUT + 15):
        acme = (await cli("org", "create", "acme", "--init"))["token"]
        edge_token = (await cli("token", "create", "--kind", "edge"))["token"]
        blob = random_blob(32 * MIB)  # far more than the sockets between them buffer
        path = f"/v2/acme/app/blobs/{blob.digest}"
        proxy = OriginProxy("http://127.0.0.1:9")  # pointed at each origin as it starts
        await proxy.start(nursery)
        http = edge_client("http://127.0.0.1:9")
        try:
            async with origin_process(data, log) as first:
                proxy.target = first.url
                async with edge_client(first.url, basic(acme)) as origin:
                    await push_blob(origin, "acme/app", blob)
                edge = await start_edge(
                    nursery,
                    None,
                    tmp_path / "edge",
                    token=edge_token,
                    upstream=proxy.url,
                    graceful_timeout_seconds=2,
                )
                http.base_url = httpx.URL(edge.url)
                http.headers.update(await bearer_for(http, acme, "repository:acme/app:pull"))
                proxy.stall_blob_after_bytes = MIB
                results = await concurrent_fetches(http, proxy, path, 2, meanwhile=first.kill)
                for result in results:  # SIGKILLed mid-body
                    assert_incomplete(result, blob.size)
                assert upstream_gets(proxy, blob.digest) == 1
            async with origin_process(data, log) as second:  # same data, another port
                proxy.target = second.url
                got = await fetch(http, path)
                assert (got.status, got.size, got.digest) == (200, blob.size, blob.digest)
                assert upstream_gets(proxy, blob.digest) == 2
                await edge.stop()
        finally:
            await http.aclose()
            await proxy.stop()


@pytest.mark.parametrize("failure", ["refused", "503", "429", "stall"])
async def test_a_warm_cache_outlives_the_origin(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory, failure: str
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges(
            tag_freshness_seconds=0,
            upstream_deadline_seconds=1,
            unavailable_retry_after_seconds=7,
        )
        warm = image_manifest(config_blob(), [random_blob(MIB + 3)])
        linked = new_image()  # its manifest pulled (its blobs known to the edge), blobs not
        never = new_image()  # nothing of it pulled
        unlinked = random_blob(100)
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", warm, "v1")
            await push_manifest(origin, "acme/app", linked, "v2")
            await push_manifest(origin, "acme/app", never, "v3")
            await push_blob(origin, "acme/app", unlinked)
        async with edge_client(edge.url) as http:
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            # Warm up (the short deadline can trip on a loaded machine: that is not the test).
            await fresh(http, "/v2/acme/app/manifests/v1", warm.payload)
            await fresh(http, f"/v2/acme/app/manifests/{linked.digest}", linked.payload)
            for blob in warm.blobs:
                await fresh(http, f"/v2/acme/app/blobs/{blob.digest}", blob.data)

            if failure == "refused":
                await proxy.disconnect()
            elif failure == "stall":
                proxy.hold = frozenset({"manifest", "blob"})
            else:
                proxy.down, proxy.down_status = True, int(failure)

            # Cached: served, the tag marked stale.
            with trio.fail_after(PROMPT):
                for method in ("GET", "HEAD"):
                    got = await http.request(method, "/v2/acme/app/manifests/v1")
                    assert got.status_code == 200, (method, got.status_code)
                    assert got.headers["Docker-Content-Digest"] == warm.digest
                    assert got.headers["Warning"].startswith("299 ")
                    assert got.content == (warm.payload if method == "GET" else b"")
                got = await http.get(f"/v2/acme/app/manifests/{warm.digest}")
                assert got.status_code == 200 and got.content == warm.payload
                for blob in warm.blobs:
                    got = await http.get(f"/v2/acme/app/blobs/{blob.digest}")
                    assert got.status_code == 200 and got.content == blob.data
                    head = await http.head(f"/v2/acme/app/blobs/{blob.digest}")
                    assert head.status_code == 200

            # Not cached: 503 with Retry-After, promptly; never a 500, never a hang.
            async def unavailable(method: str, what: str) -> None:
                with trio.fail_after(PROMPT):
                    response = await http.request(method, f"/v2/acme/app/{what}")
                assert_error(response, 503, "UNAVAILABLE")
                assert response.headers["Retry-After"].isdigit(), (method, what)

            async with trio.open_nursery() as nursery:
                for method, what in [
                    ("GET", f"blobs/{linked.blobs[-1].digest}"),
                    ("HEAD", f"blobs/{linked.blobs[-1].digest}"),
                    ("GET", f"blobs/{unlinked.digest}"),
                    ("HEAD", f"blobs/{unlinked.digest}"),
                    ("GET", "manifests/v3"),
                    ("GET", f"manifests/{never.digest}"),
                    ("HEAD", f"manifests/{never.digest}"),
                ]:
                    nursery.start_soon(unavailable, method, what)

            if failure == "refused":
                await proxy.reconnect()
            proxy.heal()
            await fresh(http, "/v2/acme/app/manifests/v1", warm.payload)
            layer = linked.blobs[-1]
            await fresh(http, f"/v2/acme/app/blobs/{layer.digest}", layer.data)


async def fresh(http: httpx.AsyncClient, path: str, expected: bytes) -> None:
    """GET ``path`` until origin answers it (200, not stale): bounded, never assumed."""
    for _ in range(50):
        got = await http.get(path)
        if got.status_code == 200 and "Warning" not in got.headers:
            break
        await trio.sleep(0.1)
    assert got.status_code == 200 and "Warning" not in got.headers, (path, got.status_code)
    assert got.content == expected
