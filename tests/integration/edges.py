"""Real edges on 127.0.0.1:0 in front of a real origin, inside the test's trio run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import trio

from config.settings import EdgeSettings
from core.web.serving import bind_socket, bound_url
from edge.server import serve
from tests.integration.tenants import BASE_DOMAIN, Tenants


@dataclass
class RunningEdge:
    url: str
    settings: EdgeSettings
    shutdown: trio.Event
    stopped: trio.Event


async def start_edge(
    nursery: trio.Nursery, tenants: Tenants, directory: Path, **overrides: object
) -> RunningEdge:
    token_file = directory / "edge.token"
    if not token_file.exists():
        _, token = await tenants.store.create_token("edge", now=time.time())
        directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        token_file.write_text(token)
    settings = EdgeSettings(
        upstream=tenants.url,
        cache_dir=directory / "cache",
        upstream_token_file=token_file,
        base_domain=BASE_DOMAIN,
        **overrides,  # type: ignore[arg-type]
    )
    sock = bind_socket("127.0.0.1:0")
    shutdown, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve(settings, sock, shutdown_trigger=shutdown.wait, task_status=task_status)
        finally:
            stopped.set()

    await nursery.start(run)
    return RunningEdge(bound_url(sock), settings, shutdown, stopped)
