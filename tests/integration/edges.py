"""Real edges on 127.0.0.1:0 in front of a real origin, inside the test's trio run."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from config.settings import EdgeSettings
from core.web.serving import bind_socket
from edge.server import serve
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import BASE_DOMAIN, Tenants, start_tenants


@dataclass
class RunningEdge:
    url: str
    settings: EdgeSettings
    shutdown: trio.Event
    stopped: trio.Event

    async def stop(self) -> None:
        """Drain and stop; returns once the edge has closed its cache."""
        self.shutdown.set()
        await self.stopped.wait()


async def start_edge(
    nursery: trio.Nursery,
    tenants: Tenants | None,
    directory: Path,
    *,
    token: str | None = None,
    **overrides: object,
) -> RunningEdge:
    """Start an edge whose upstream is ``tenants``' origin, unless ``upstream=`` says
    otherwise (e.g. a :class:`tests.integration.origin_proxy.OriginProxy`). Its credential is
    ``token`` or a fresh edge token of ``tenants``; ``overrides`` are EdgeSettings fields."""
    token_file = directory / "edge.token"
    if not token_file.exists():
        if token is None:
            assert tenants is not None, "an edge token or the tenants to create one"
            _, token = await tenants.store.create_token("edge", now=time.time())
        directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        token_file.write_text(token)
    fields: dict[str, Any] = {
        "upstream": tenants.url if tenants is not None else "",
        "cache_dir": directory / "cache",
        "upstream_token_file": token_file,
        "base_domain": BASE_DOMAIN,
        **overrides,
    }
    settings = EdgeSettings(**fields)
    sock = bind_socket("127.0.0.1:0")
    shutdown, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve(settings, sock, shutdown_trigger=shutdown.wait, task_status=task_status)
        finally:
            stopped.set()

    urls = await nursery.start(run)
    return RunningEdge(urls[0], settings, shutdown, stopped)


def edge_client(url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A plain client of an edge (or origin): no environment, no compression."""
    return httpx.AsyncClient(
        base_url=url,
        trust_env=False,
        timeout=30,
        headers={"Accept-Encoding": "identity", **(headers or {})},
    )


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return 0.0


async def metrics(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


# -- the edge suite's rig: origin (with tenants) ← fault-injecting proxy ← edges -----------------

EdgeFactory = Callable[..., Awaitable[RunningEdge]]


@pytest.fixture(name="tenants")
async def tenants_fixture(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "origin")
    yield running
    running.origin.shutdown.set()
    running.store.close()


@pytest.fixture(name="proxy")
async def proxy_fixture(nursery: trio.Nursery, tenants: Tenants) -> AsyncIterator[OriginProxy]:
    proxy = OriginProxy(tenants.url)
    await proxy.start(nursery)
    yield proxy
    with trio.CancelScope(shield=True):
        await proxy.stop()


@pytest.fixture(name="edges")
async def edges_fixture(
    nursery: trio.Nursery, tenants: Tenants, proxy: OriginProxy, tmp_path: Path
) -> AsyncIterator[EdgeFactory]:
    """``await edges(**settings)``: a new edge whose upstream is ``proxy``."""
    started: list[RunningEdge] = []

    async def start(name: str = "edge", **overrides: object) -> RunningEdge:
        # No event follower unless asked for: its long polls would be among the requests
        # these tests count, hold and fail at the proxy (tests/integration/test_events_edge.py
        # follows events).
        settings: dict[str, Any] = {
            "upstream": proxy.url,
            "graceful_timeout_seconds": 2,
            "events": False,
        }
        settings.update(overrides)
        edge = await start_edge(nursery, tenants, tmp_path / name, **settings)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.shutdown.set()


@dataclass
class Fetched:
    """A streamed GET, hashed as it arrived (big bodies are never held in memory)."""

    status: int
    headers: httpx.Headers
    size: int  # body bytes received
    sha256: str
    error: Exception | None  # how the body ended, when it did not end cleanly

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


async def fetch(
    client: httpx.AsyncClient,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    on_headers: Callable[[httpx.Response], None] | None = None,
) -> Fetched:
    """GET ``path``, hashing the body; a transport error mid-body is returned, not raised."""
    hasher = hashlib.sha256()
    size = 0
    error: Exception | None = None
    async with client.stream("GET", path, headers=headers) as response:
        if on_headers is not None:
            on_headers(response)
        try:
            async for chunk in response.aiter_raw():
                hasher.update(chunk)
                size += len(chunk)
        except httpx.TransportError as exc:
            error = exc
    return Fetched(response.status_code, response.headers, size, hasher.hexdigest(), error)


def upstream_gets(proxy: OriginProxy, digest: str) -> int:
    """Blob GETs of ``digest`` the origin saw (through the proxy), any repository."""
    return sum(
        1 for method, path in proxy.requests if method == "GET" and path.endswith(f"/{digest}")
    )
