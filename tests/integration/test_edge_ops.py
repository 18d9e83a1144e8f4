"""Operating an edge: /healthz and /readyz, /metrics, the JSON access log, and the
``depot-registry edge cache stats|purge`` commands against a cache an edge filled."""

from __future__ import annotations

import json
import logging
from typing import Any

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
    upstream_gets,
)
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import config_blob, image_manifest, push_blob, push_manifest, random_blob
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic, bearer_for
from tests.processes import origin_command

MIB = 1024 * 1024
TIMEOUT = 30


async def test_health_and_readiness(proxy: OriginProxy, edges: EdgeFactory) -> None:
    with trio.fail_after(TIMEOUT):
        proxy.down = True  # the edge cannot load origin's token keys
        edge = await edges()
        async with edge_client(edge.url) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 503
            assert proxy.count("GET", "jwks") >= 1
            proxy.down = False  # origin is back: the edge retries and becomes ready
            for _ in range(100):
                if (await http.get("/readyz")).status_code == 200:
                    break
                await trio.sleep(0.1)
            assert (await http.get("/readyz")).status_code == 200
            assert (await http.get("/healthz")).status_code == 200


def samples(text: str) -> dict[str, float]:
    return {
        name: metric(text, *name.split("|"))
        for name in (
            'depot_edge_cache_hits_total|kind="blob"',
            'depot_edge_cache_misses_total|kind="blob"',
            'depot_edge_cache_hits_total|kind="manifest"',
            'depot_edge_cache_misses_total|kind="tag"',
            'depot_edge_bytes_served_total|source="cache"',
            'depot_edge_bytes_served_total|source="upstream"',
            "depot_edge_bytes_from_upstream",
            "depot_edge_fills_in_flight",
            "depot_edge_fill_waiters_coalesced",
            "depot_edge_fill_failures",
            "depot_edge_stale_serves_total",
            "depot_edge_cache_size_bytes",
            "depot_edge_cache_evictions",
        )
    }


def access_records(caplog: pytest.LogCaptureFixture) -> dict[str, dict[str, Any]]:
    """The access log's JSON lines, by request id."""
    records = [r for r in caplog.records if r.name == "depot.edge.access"]
    entries = [json.loads(r.getMessage()) for r in records]
    return {entry["request_id"]: entry for entry in entries}


async def fills_settled(http: httpx.AsyncClient) -> None:
    """A fill adopts its spool into the cache after releasing the last byte to readers, so
    it leaves the in-flight count a moment after they finish: wait for that."""
    for _ in range(1000):
        if samples(await metrics(http))["depot_edge_fills_in_flight"] == 0:
            return
        await trio.sleep(0.02)
    raise AssertionError("a fill never left the in-flight count")


async def test_metrics_and_access_log(
    tenants: Tenants,
    proxy: OriginProxy,
    edges: EdgeFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("edge.server.STATS_INTERVAL_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="depot.edge.access")
    with trio.fail_after(TIMEOUT):
        edge = await edges(tag_freshness_seconds=0)
        layer, shared, failing = random_blob(MIB), random_blob(2 * MIB), random_blob(MIB)
        image = image_manifest(config_blob(), [layer, shared, failing])
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        async with edge_client(edge.url) as http:
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            start = samples(await metrics(http))
            assert start['depot_edge_cache_hits_total|kind="blob"'] == 0

            def moved(now: dict[str, float]) -> dict[str, float]:
                """What changed since ``start``, but the size gauge (refreshed on its own)."""
                return {
                    k: v - start[k]
                    for k, v in now.items()
                    if v != start[k] and k != "depot_edge_cache_size_bytes"
                }

            assert (await http.get("/v2/acme/app/manifests/v1")).status_code == 200
            assert (await http.get(f"/v2/acme/app/manifests/{image.digest}")).status_code == 200
            blob = f"/v2/acme/app/blobs/{layer.digest}"
            cut_path = f"/v2/acme/app/blobs/{failing.digest}"
            for request_id in ("req-miss", "req-hit"):
                got = await fetch(http, blob, {"X-Request-Id": request_id})
                assert (got.status, got.size, got.digest) == (200, layer.size, layer.digest)
                assert got.headers["X-Request-Id"] == request_id
                await fills_settled(http)  # adopted into the cache: the next GET is a hit
            assert moved(samples(await metrics(http))) == {
                'depot_edge_cache_misses_total|kind="tag"': 1,
                'depot_edge_cache_hits_total|kind="manifest"': 1,
                'depot_edge_cache_misses_total|kind="blob"': 1,
                'depot_edge_cache_hits_total|kind="blob"': 1,
                'depot_edge_bytes_served_total|source="upstream"': layer.size,
                'depot_edge_bytes_served_total|source="cache"': layer.size,
                "depot_edge_bytes_from_upstream": layer.size,
            }

            for request_id, path in [("req-head-hit", blob), ("req-head-cold", cut_path)]:
                head = await http.head(path, headers={"X-Request-Id": request_id})
                assert head.status_code == 200

            # Two clients on one fill: in flight, one coalesced waiter.
            proxy.stall_blob_after_bytes = 0
            results: list[Fetched] = []
            heads: list[int] = []
            both_in = trio.Event()

            def arrived(response: httpx.Response) -> None:
                heads.append(response.status_code)
                if len(heads) == 2:
                    both_in.set()

            async def client() -> None:
                path = f"/v2/acme/app/blobs/{shared.digest}"
                results.append(await fetch(http, path, on_headers=arrived))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                nursery.start_soon(client)
                await proxy.wait_for(lambda p: p.waiting == 1)
                await both_in.wait()
                during = samples(await metrics(http))
                assert during["depot_edge_fills_in_flight"] == 1
                assert during["depot_edge_fill_waiters_coalesced"] == 1
                proxy.stall_blob_after_bytes = None
                proxy.release()
            assert [r.digest for r in results] == [shared.digest] * 2
            # The fill adopts its spool into the cache after releasing the last byte: it
            # leaves the in-flight count a moment after its readers finish.
            await fills_settled(http)
            after = samples(await metrics(http))
            assert after["depot_edge_fill_failures"] == 0

            # A failed fill, then a stale tag.
            proxy.fail_blob_after_bytes = 1000
            cut = await fetch(
                http, f"/v2/acme/app/blobs/{failing.digest}", {"X-Request-Id": "req-cut"}
            )
            assert cut.size < failing.size
            proxy.status_for_manifests = 503
            stale = await http.get(
                "/v2/acme/app/manifests/v1", headers={"X-Request-Id": "req-stale"}
            )
            assert stale.status_code == 200 and stale.headers["Warning"].startswith("299 ")
            proxy.heal()
            after = samples(await metrics(http))
            assert after["depot_edge_fill_failures"] == 1
            assert after["depot_edge_stale_serves_total"] == 1
            assert after["depot_edge_cache_evictions"] == 0
            for _ in range(100):  # the size gauge is refreshed in the background
                size = samples(await metrics(http))["depot_edge_cache_size_bytes"]
                if size >= layer.size + shared.size:
                    break
                await trio.sleep(0.05)
            assert size >= layer.size + shared.size

        log = access_records(caplog)
        for request_id, cache in [("req-miss", "miss"), ("req-hit", "hit")]:
            entry = log[request_id]
            assert entry["repository"] == "acme/app"
            assert entry["digest"] == layer.digest
            assert entry["cache"] == cache
            assert (entry["status"], entry["bytes"]) == (200, layer.size)
            assert entry["method"] == "GET"
            assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        for request_id, cache, size in [
            ("req-head-hit", "hit", layer.size),
            ("req-head-cold", "miss", failing.size),
        ]:
            entry = log[request_id]
            assert (entry["method"], entry["status"], entry["bytes"]) == ("HEAD", 200, size)
            assert entry["cache"] == cache
        assert log["req-cut"]["cache"] == "miss" and log["req-cut"]["digest"] == failing.digest
        stale_entry = log["req-stale"]
        assert (stale_entry["cache"], stale_entry["status"]) == ("stale", 200)
        assert stale_entry["digest"] == image.digest


async def edge_cache_cli(*args: str) -> str:
    done = await trio.run_process(
        [*origin_command(), "edge", "cache", *args], capture_stdout=True, capture_stderr=True
    )
    return done.stdout.decode()


async def test_cache_stats_and_purge_commands(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        cache_dir = str(edge.settings.cache_dir)
        small, large = random_blob(MIB), random_blob(2 * MIB)
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            for blob in (small, large):
                await push_blob(origin, "acme/app", blob)
        async with edge_client(edge.url) as http:
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )

            async def pull(blob: Any) -> None:
                got = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
                assert (got.status, got.size, got.digest) == (200, blob.size, blob.digest)

            for blob in (small, large, small):
                await pull(blob)

            # Against the running edge's cache.
            stats = json.loads(await edge_cache_cli("stats", "--cache-dir", cache_dir, "--json"))
            assert stats["blobs"] == 2
            assert stats["entries"] >= 2
            assert small.size + large.size <= stats["volume_bytes"] <= stats["size_limit"]
            assert stats["size_limit"] == edge.settings.cache_size_bytes
            assert (stats["hits"], stats["misses"], stats["evictions"]) == (1, 2, 0)
            purged = json.loads(await edge_cache_cli("purge", "--cache-dir", cache_dir, "--json"))
            assert purged["removed"] == stats["entries"]
            await pull(small)  # filled again from origin
            assert upstream_gets(proxy, small.digest) == 2

        # Against a stopped edge's cache, in the plain-text format.
        await edge.stop()
        text = await edge_cache_cli("stats", "--cache-dir", cache_dir)
        fields = dict(line.split("\t") for line in text.splitlines())
        assert fields["blobs"] == "1"
        assert int(fields["volume_bytes"]) >= small.size
        assert (fields["hits"], fields["misses"]) == ("1", "3")  # counters outlive a purge
