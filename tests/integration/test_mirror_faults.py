"""A mirrored upstream that fails, against a real Distribution behind a fault proxy.

- Refused, answering 503 or 429, or stalled mid-way through a pull (the tag and some blobs
  cached, the rest not): the cached tag is served stale with ``Warning: 299``, the cached
  blobs as always, and what is not cached gets a prompt 503 with the upstream's
  ``Retry-After`` (or the edge's own when the upstream gave none); after a 429 the edge
  leaves the upstream alone for as long as it asked.
- Its token service failing, for an edge that restarted (no token in memory): stale too.
- A blob body cut mid-way: nothing cached, the next pull fetches it again, right.
- 32 concurrent cold pulls: one upstream fetch per digest, one tag HEAD, one manifest GET.
- Tags: answered locally inside the freshness window, then revalidated with a HEAD only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.edges import edge_client, fetch, metric, metrics, start_edge
from tests.integration.mirrors import Upstream, running_upstream
from tests.integration.oci import assert_error, config_blob, image_manifest, random_blob
from tests.integration.tenants import Tenants, basic, start_tenants

TIMEOUT = 60
PROMPT = 10  # a failing upstream must not make clients wait (deadlines here are 1 s)
KIB, MIB = 1024, 1024 * 1024


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "origin")
    yield running
    running.origin.shutdown.set()
    running.store.close()


@pytest.fixture
async def hub(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Upstream]:
    async with running_upstream(nursery, tmp_path, "docker.io") as upstream:
        yield upstream


def three_layers(size: int = 64 * KIB) -> object:
    return image_manifest(config_blob(), [random_blob(size + i) for i in range(3)])


async def fresh(http: httpx.AsyncClient, path: str, expected: bytes) -> None:
    """GET ``path`` until the upstream answers it (200, not stale): bounded, never assumed."""
    for _ in range(50):
        got = await http.get(path)
        if got.status_code == 200 and "Warning" not in got.headers:
            break
        await trio.sleep(0.1)
    assert got.status_code == 200 and "Warning" not in got.headers, (path, got.status_code)
    assert got.content == expected


@pytest.mark.parametrize("failure", ["refused", "503", "429", "stall"])
async def test_a_failing_upstream_mid_pull(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, hub: Upstream, failure: str
) -> None:
    with trio.fail_after(TIMEOUT):
        image = image_manifest(config_blob(), [random_blob(MIB + 3), random_blob(5 * KIB)])
        await hub.push("library/alpine", image, "3")
        edge = await start_edge(
            nursery,
            tenants,
            tmp_path / "edge",
            mirrors=(hub.mirror("anonymous"),),
            tag_freshness_seconds=0,
            upstream_deadline_seconds=1,
            unavailable_retry_after_seconds=7,
        )
        async with edge_client(edge.url) as http:
            # Mid-way: the tag and the config are cached, the layers are not.
            await fresh(http, "/v2/docker.io/alpine/manifests/3", image.payload)
            config, *layers = image.blobs
            assert (await http.get(f"/v2/docker.io/alpine/blobs/{config.digest}")).content == (
                config.data
            )

            if failure == "refused":
                await hub.proxy.disconnect()
            elif failure == "stall":
                hub.proxy.hold = frozenset({"manifest", "blob"})
            else:
                hub.proxy.down, hub.proxy.down_status = True, int(failure)

            # Concurrently: a stalled upstream costs each request one deadline, not a sum.
            expected = "7" if failure in ("refused", "stall") else "1"  # upstream's, else ours

            async def stale(method: str) -> None:
                got = await http.request(method, "/v2/docker.io/alpine/manifests/3")
                assert got.status_code == 200, (method, got.text)
                assert got.headers["Warning"] == '299 - "Response is stale: docker.io unavailable"'
                assert got.headers["Docker-Content-Digest"] == image.digest

            async def cached() -> None:
                got = await http.get(f"/v2/docker.io/alpine/blobs/{config.digest}")
                assert got.status_code == 200 and got.content == config.data

            async def unavailable(method: str, path: str) -> None:
                response = await http.request(method, path)
                assert_error(response, 503, "UNAVAILABLE")
                assert response.headers["Retry-After"] == expected, (method, path, failure)

            with trio.fail_after(PROMPT):
                async with trio.open_nursery() as checks:
                    checks.start_soon(stale, "GET")
                    checks.start_soon(stale, "HEAD")
                    checks.start_soon(cached)
                    for layer in layers:
                        for method in ("GET", "HEAD"):
                            path = f"/v2/docker.io/alpine/blobs/{layer.digest}"
                            checks.start_soon(unavailable, method, path)
                    checks.start_soon(unavailable, "GET", "/v2/docker.io/library/other/manifests/1")

            if failure == "429":
                # Told to wait: the edge asks nothing more until then.
                asked = len(hub.proxy.requests)
                response = await http.get(f"/v2/docker.io/alpine/blobs/{layers[0].digest}")
                assert_error(response, 503, "UNAVAILABLE")
                assert response.headers["Retry-After"] in ("1", "0")
                assert len(hub.proxy.requests) == asked
            text = await metrics(http)
            assert metric(text, "depot_edge_mirror_stale_serves_total", 'upstream="docker.io"') >= 2
            throttled = metric(text, "depot_edge_mirror_throttled_total", 'upstream="docker.io"')
            assert (throttled > 0) == (failure == "429")

            if failure == "refused":
                await hub.proxy.reconnect()
            hub.proxy.heal()
            await fresh(http, "/v2/docker.io/alpine/manifests/3", image.payload)
            for layer in layers:
                got = await fetch(http, f"/v2/docker.io/alpine/blobs/{layer.digest}")
                assert (got.status, got.digest) == (200, layer.digest)


async def test_a_failing_token_service_after_a_restart_serves_stale(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, hub: Upstream
) -> None:
    with trio.fail_after(TIMEOUT):
        image = three_layers()
        await hub.push("library/alpine", image, "3")
        settings = {
            "mirrors": (hub.mirror("anonymous"),),
            "tag_freshness_seconds": 0,
            "upstream_deadline_seconds": 2,
        }
        edge = await start_edge(nursery, tenants, tmp_path / "edge", **settings)
        async with edge_client(edge.url) as http:
            await fresh(http, "/v2/library/alpine/manifests/3?ns=docker.io", image.payload)
        await edge.stop()

        hub.tokens.fail_status = 503
        asked = len(hub.tokens.requests)
        edge = await start_edge(nursery, tenants, tmp_path / "edge", **settings)
        async with edge_client(edge.url) as http:
            got = await http.get("/v2/library/alpine/manifests/3", params={"ns": "docker.io"})
            assert got.status_code == 200 and got.content == image.payload
            assert got.headers["Warning"].startswith("299 ")
            assert len(hub.tokens.requests) > asked  # it did try the token service
            response = await http.get(
                f"/v2/library/alpine/blobs/{image.blobs[1].digest}?ns=docker.io"
            )
            assert_error(response, 503, "UNAVAILABLE")
            hub.tokens.fail_status = None
            await fresh(http, "/v2/library/alpine/manifests/3?ns=docker.io", image.payload)


async def test_a_body_cut_mid_way_is_never_cached(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, hub: Upstream
) -> None:
    with trio.fail_after(TIMEOUT):
        layer = random_blob(2 * MIB)
        image = image_manifest(config_blob(), [layer])
        await hub.push("library/alpine", image, "3")
        edge = await start_edge(
            nursery, tenants, tmp_path / "edge", mirrors=(hub.mirror("anonymous"),)
        )
        path = f"/v2/docker.io/alpine/blobs/{layer.digest}"
        async with edge_client(edge.url) as http:
            await fresh(http, "/v2/docker.io/alpine/manifests/3", image.payload)
            hub.proxy.fail_blob_after_bytes = MIB
            cut = await fetch(http, path)
            assert cut.size < layer.size and cut.error is not None, cut
            hub.proxy.heal()
            whole = await fetch(http, path)
            assert (whole.status, whole.size, whole.digest) == (200, layer.size, layer.digest)
            assert hub.gets(layer.digest) == 2
            again = await fetch(http, path)
            assert again.digest == layer.digest and hub.gets(layer.digest) == 2


async def test_concurrent_cold_pulls_fetch_each_digest_once(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, hub: Upstream
) -> None:
    with trio.fail_after(TIMEOUT):
        image = three_layers(64 * KIB)
        await hub.push("library/alpine", image, "3")
        edge = await start_edge(
            nursery, tenants, tmp_path / "edge", mirrors=(hub.mirror("authenticated"),)
        )
        pulled: list[bool] = []

        async def pull(http: httpx.AsyncClient) -> None:
            manifest = await http.get("/v2/library/alpine/manifests/3", params={"ns": "docker.io"})
            assert manifest.content == image.payload
            for blob in image.blobs:
                got = await fetch(http, f"/v2/library/alpine/blobs/{blob.digest}?ns=docker.io")
                assert (got.status, got.digest) == (200, blob.digest)
            pulled.append(True)

        async with edge_client(edge.url, basic(tenants.acme_pull)) as http:
            # The first request learns the upstream's challenge (a 401, then again with a
            # token): done once here, so what follows is counted exactly.
            missing = await http.get("/v2/library/none/manifests/1", params={"ns": "docker.io"})
            assert_error(missing, 404, "MANIFEST_UNKNOWN")
            heads = hub.proxy.count("HEAD", "manifest")
            hub.proxy.hold = frozenset({"manifest", "blob"})  # everyone arrives before anything
            async with trio.open_nursery() as clients:
                for _ in range(32):
                    clients.start_soon(pull, http)
                await hub.proxy.wait_for(lambda proxy: proxy.waiting >= 1)
                await trio.testing.wait_all_tasks_blocked()
                hub.proxy.hold = frozenset()
                hub.proxy.release()
            assert len(pulled) == 32
            assert [hub.gets(blob.digest) for blob in image.blobs] == [1] * len(image.blobs)
            assert hub.proxy.count("HEAD", "manifest") == heads + 1
            assert hub.proxy.count("GET", "manifest") == 1
            # One token for the repository, fetched once, used by every request after.
            scoped = [
                r for r in hub.tokens.requests if "repository:library/alpine:pull" in r.scopes
            ]
            assert len(scoped) == 1, hub.tokens.requests
            text = await metrics(http)
            fills = metric(text, "depot_edge_mirror_fills_total", 'upstream="docker.io"')
            assert fills == len(image.blobs)


async def test_tags_are_fresh_then_revalidated_with_head(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, hub: Upstream
) -> None:
    with trio.fail_after(TIMEOUT):
        first, second = three_layers(), three_layers()
        await hub.push("library/alpine", first, "3")
        hub.proxy.add_headers = {"ratelimit-remaining": "99;w=21600"}
        fresh_edge = await start_edge(
            nursery, tenants, tmp_path / "fresh", mirrors=(hub.mirror("anonymous"),)
        )
        async with edge_client(fresh_edge.url) as http:
            await fresh(http, "/v2/library/alpine/manifests/3", first.payload)
            asked = len(hub.proxy.requests)
            for _ in range(20):
                got = await http.get("/v2/library/alpine/manifests/3")
                assert got.content == first.payload
            assert len(hub.proxy.requests) == asked  # inside the freshness window: local
            text = await metrics(http)
            remaining = 'upstream="docker.io"'
            assert metric(text, "depot_edge_mirror_ratelimit_remaining", remaining) == 99

        revalidating = await start_edge(
            nursery,
            tenants,
            tmp_path / "revalidating",
            mirrors=(hub.mirror("anonymous"),),
            tag_freshness_seconds=0,
        )
        async with edge_client(revalidating.url) as http:
            await fresh(http, "/v2/library/alpine/manifests/3", first.payload)
            gets = hub.proxy.count("GET", "manifest")
            heads = hub.proxy.count("HEAD", "manifest")
            for _ in range(3):
                assert (await http.get("/v2/library/alpine/manifests/3")).content == first.payload
            assert hub.proxy.count("HEAD", "manifest") == heads + 3
            assert hub.proxy.count("GET", "manifest") == gets  # never a pull, by Hub's rules
            await hub.push("library/alpine", second, "3")  # the tag moves upstream
            got = await http.get("/v2/library/alpine/manifests/3")
            assert got.content == second.payload
            assert got.headers["Docker-Content-Digest"] == second.digest
