"""Real origin servers on 127.0.0.1:0 inside the test's trio run."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from config.settings import OriginSettings
from core.web.serving import bind_socket
from origin.server import serve


@dataclass
class RunningOrigin:
    url: str
    settings: OriginSettings
    shutdown: trio.Event


async def start_origin(
    nursery: trio.Nursery,
    data_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
    **overrides: object,
) -> RunningOrigin:
    """``clock``: what the origin reads the time from (a fake one lets a test move time)."""
    settings = OriginSettings(data_dir=data_dir, **overrides)  # type: ignore[arg-type]
    sock = bind_socket("127.0.0.1:0")
    shutdown = trio.Event()
    urls = await nursery.start(
        partial(serve, settings, sock, shutdown_trigger=shutdown.wait, clock=clock)
    )
    return RunningOrigin(urls[0], settings, shutdown)


@pytest.fixture
async def origin(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RunningOrigin]:
    """An origin with auth off: the OCI API suite tests the protocol, not tenancy."""
    running = await start_origin(nursery, tmp_path / "data", auth=False)
    yield running
    running.shutdown.set()


@pytest.fixture
async def client(origin: RunningOrigin) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=origin.url,
        trust_env=False,
        timeout=30,
        headers={"Accept-Encoding": "identity"},
    ) as http:
        yield http
