"""Serving an ASGI app with hypercorn on a socket we bind: shared by origin and edge.

Binding ourselves (not through hypercorn's config) lets port 0 report the real port before
serving and lets worker processes inherit one listening socket.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(listen: str) -> bool:
    try:
        host, _ = parse_listen(listen)
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(listen: str) -> socket.socket:
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def hypercorn_config(graceful_timeout_seconds: float) -> Config:
    config = Config()
    config.graceful_timeout = graceful_timeout_seconds
    # Short: hypercorn 0.18 keeps a socket the client closed until this timer ends (a
    # CLOSE-WAIT fd per connection), since its idle timer is not stopped on hang-up.
    config.keep_alive_timeout = 5
    config.h11_max_incomplete_size = 64 * 1024
    config.accesslog = None
    # A Logger (not "-") makes hypercorn log through our handlers instead of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve_app(
    app: Any,
    sock: socket.socket,
    *,
    graceful_timeout_seconds: float,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns, then drain in-flight requests."""
    await worker_serve(
        wrap_app(app, 0, "asgi"),
        hypercorn_config(graceful_timeout_seconds),
        sockets=Sockets([], [sock], []),
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )


ServeFn = Callable[..., Awaitable[None]]


async def serve_until_signal(serve: ServeFn, *, announce: Callable[[], None] | None = None) -> None:
    """Run ``serve(shutdown_trigger=..., task_status=...)``; the first SIGINT/SIGTERM starts
    a graceful drain. The receiver stays open until the drain ends, so a repeated signal
    cannot kill the process half-way."""
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    shutdown.set()

            async def run(task_status: trio.TaskStatus[list[str]]) -> None:
                await serve(shutdown_trigger=shutdown.wait, task_status=task_status)
                nursery.cancel_scope.cancel()  # drained: stop watching for signals

            nursery.start_soon(watch)
            await nursery.start(run)
            if announce is not None:
                announce()
