"""``depot-registry edge serve --workers 2`` as a real process in front of a counting proxy:
one fill per digest across the worker processes, and a worker killed mid-fill taken over
by its sibling (edge/coord/host_lock.py)."""

from __future__ import annotations

import os
import re
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.edges import edge_client, fetch, metric, metrics, upstream_gets
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import Blob, config_blob, image_manifest, push_manifest, random_blob
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic
from tests.processes import OriginProcess, edge_process

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
TIMEOUT = 60
_WORKER = re.compile(r'^depot_edge_worker\{pid="(\d+)"\} 1\.0$', re.MULTILINE)


async def pushed_blob(tenants: Tenants, size: int) -> Blob:
    layer = random_blob(size)
    async with edge_client(tenants.url, basic(tenants.acme)) as origin:
        await push_manifest(origin, "acme/app", image_manifest(config_blob(), [layer]), "v1")
    return layer


async def workers_edge(
    stack: AsyncExitStack, tenants: Tenants, proxy: OriginProxy, tmp_path: Path
) -> tuple[OriginProcess, Path]:
    _, token = await tenants.store.create_token("edge", now=time.time())
    token_file = tmp_path / "edge.token"
    token_file.write_text(token)
    cache_dir = tmp_path / "cache"
    edge = await stack.enter_async_context(
        edge_process(
            proxy.url,
            token_file,
            cache_dir,
            tmp_path / "edge.log",
            ["--workers", "2"],
            env={**os.environ, "DEPOT_EDGE_EVENTS": "false", "DEPOT_EDGE_PREFETCH_BLOBS": "0"},
        )
    )
    return edge, cache_dir


async def worker_of(http: httpx.AsyncClient) -> int:
    """The pid of the worker serving ``http``'s (single, kept-alive) connection."""
    found = _WORKER.search(await metrics(http))
    assert found is not None
    return int(found.group(1))


async def pinned_clients(
    stack: AsyncExitStack, url: str, tenants: Tenants, per_worker: int
) -> dict[int, list[httpx.AsyncClient]]:
    """Clients of one connection each, grouped by the worker process that accepted it."""
    by_worker: dict[int, list[httpx.AsyncClient]] = {}
    for _ in range(60):
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=url,
                trust_env=False,
                timeout=30,
                headers={"Accept-Encoding": "identity", **basic(tenants.acme_pull)},
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
        )
        by_worker.setdefault(await worker_of(http), []).append(http)
        if len(by_worker) == 2 and all(len(c) >= per_worker for c in by_worker.values()):
            return by_worker
    raise AssertionError(f"connections did not reach both workers: {list(by_worker)}")


async def test_concurrent_cold_gets_across_workers_make_one_upstream_fetch(
    tenants: Tenants, proxy: OriginProxy, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as pinned:
            await _one_fetch(tenants, proxy, tmp_path, pinned)


async def _one_fetch(
    tenants: Tenants, proxy: OriginProxy, tmp_path: Path, pinned: AsyncExitStack
) -> None:
    blob = await pushed_blob(tenants, 16 * MIB)
    edge, cache_dir = await workers_edge(pinned, tenants, proxy, tmp_path)
    # Eight GETs on each worker, and one more connection to each for its metrics.
    by_worker = await pinned_clients(pinned, edge.url, tenants, per_worker=9)
    proxy.stall_blob_after_bytes = MIB  # until both workers are in the flight
    received: list[tuple[int, str]] = []

    async def pull(http: httpx.AsyncClient) -> None:
        got = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
        received.append((got.status, got.digest))

    async with trio.open_nursery() as nursery:
        for group in by_worker.values():
            for http in group[1:9]:
                nursery.start_soon(pull, http)
        await proxy.wait_for(lambda p: p.waiting >= 1)
        leader = lock_holder(cache_dir, blob)
        (follower,) = set(by_worker) - {leader}
        await until_waiting(by_worker[follower][0])
        proxy.heal()
    assert received == [(200, blob.digest)] * 16
    assert upstream_gets(proxy, blob.digest) == 1
    waits = {
        pid: metric(await metrics(group[0]), "depot_edge_fill_host_waits")
        for pid, group in by_worker.items()
    }
    assert waits == {leader: 0, follower: 1}  # the follower waited, then read the cache


def lock_holder(cache_dir: Path, blob: Blob) -> int:
    """The pid written in ``blob``'s host lock file by the worker holding it."""
    lock = cache_dir / "locks" / f"{blob.digest.replace(':', '-')}.lock"
    return int(lock.read_text())


async def until_waiting(http: httpx.AsyncClient) -> None:
    """Return once the worker behind ``http`` waits for another worker's fill."""
    while metric(await metrics(http), "depot_edge_fill_host_waits") < 1:  # noqa: ASYNC110
        await trio.sleep(0.05)


async def test_a_worker_killed_mid_fill_is_taken_over_by_its_sibling(
    tenants: Tenants, proxy: OriginProxy, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as pinned:
            await _takeover(tenants, proxy, tmp_path, pinned)


async def _takeover(
    tenants: Tenants, proxy: OriginProxy, tmp_path: Path, pinned: AsyncExitStack
) -> None:
    blob = await pushed_blob(tenants, 16 * MIB)
    edge, cache_dir = await workers_edge(pinned, tenants, proxy, tmp_path)
    by_worker = await pinned_clients(pinned, edge.url, tenants, per_worker=2)
    proxy.stall_blob_after_bytes = 4 * MIB
    results: dict[int, tuple[int, str, bool]] = {}

    async def pull(pid: int, http: httpx.AsyncClient) -> None:
        got = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
        results[pid] = (got.status, got.digest, got.error is None and got.size == blob.size)

    async with trio.open_nursery() as nursery:
        for pid, group in by_worker.items():
            nursery.start_soon(pull, pid, group[0])
        await proxy.wait_for(lambda p: p.waiting >= 1)  # the leader's fill is stalled
        leader = lock_holder(cache_dir, blob)
        (follower,) = set(by_worker) - {leader}
        # The follower's worker is waiting for the lock (asked on its second connection).
        await until_waiting(by_worker[follower][1])
        os.kill(leader, signal.SIGKILL)
        proxy.heal()  # the follower's own fill goes through
    assert results[follower] == (200, blob.digest, True)
    assert results[leader][2] is False  # its client was cut, never served a wrong blob
    assert upstream_gets(proxy, blob.digest) == 2  # the killed fill and the takeover
    # The parent replaced the killed worker; the edge serves the cached blob.
    async with edge_client(edge.url, basic(tenants.acme_pull)) as http:
        got = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
    assert (got.status, got.digest) == (200, blob.digest)
    assert edge.process.returncode is None
    # ... and deleted the spool the killed worker left (the takeover's was adopted).
    while any((cache_dir / "spool").iterdir()):  # noqa: ASYNC110 (another process's work)
        await trio.sleep(0.05)
