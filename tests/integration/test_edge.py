"""A real edge in front of a real origin: pulls served from cache, fills, passthrough."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.edges import RunningEdge, start_edge
from tests.integration.oci import new_image, push_manifest
from tests.integration.tenants import Tenants, basic, bearer_for, start_tenants

TIMEOUT = 30


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "origin")
    yield running
    running.origin.shutdown.set()
    running.store.close()


@pytest.fixture
async def edge(
    nursery: trio.Nursery, tenants: Tenants, tmp_path: Path
) -> AsyncIterator[RunningEdge]:
    running = await start_edge(nursery, tenants, tmp_path / "edge")
    yield running
    running.shutdown.set()


def client(url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        trust_env=False,
        timeout=TIMEOUT,
        headers={"Accept-Encoding": "identity", **(headers or {})},
    )


async def test_pull_through_the_edge(tenants: Tenants, edge: RunningEdge) -> None:
    manifest = new_image(layers=2)
    with trio.fail_after(TIMEOUT):
        async with client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", manifest, "v1")
        async with client(edge.url) as http:
            unauthenticated = await http.get("/v2/")
            assert unauthenticated.status_code == 401
            assert edge.url.removeprefix("http://") in unauthenticated.headers["WWW-Authenticate"]
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.status_code == 200, got.text
            assert got.content == manifest.payload
            for blob in manifest.blobs:
                fetched = await http.get(f"/v2/acme/app/blobs/{blob.digest}")
                assert fetched.status_code == 200, fetched.text
                assert fetched.content == blob.data
                again = await http.get(f"/v2/acme/app/blobs/{blob.digest}")
                assert again.content == blob.data
            metrics = (await http.get("/metrics")).text
            assert "depot_edge_cache_hits_total" in metrics


async def test_push_through_the_edge(tenants: Tenants, edge: RunningEdge) -> None:
    manifest = new_image()
    with trio.fail_after(TIMEOUT):
        async with client(edge.url, basic(tenants.acme)) as http:
            await push_manifest(http, "acme/pushed", manifest, "v1")
        async with client(tenants.url, basic(tenants.acme)) as origin:
            assert (await origin.get("/v2/acme/pushed/manifests/v1")).content == manifest.payload
