"""Serving an ASGI app on a socket we bind: shared by origin and edge.

Binding ourselves (not through the server's config) lets port 0 report the real port before
serving and lets worker processes inherit one listening socket. The HTTP server is anycorn
(a hypercorn fork on AnyIO, run on trio); why, and what we add to it, is in
core/web/transport.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from anycorn.config import Config
from anycorn.utils import wrap_app

from core.web.client_address import parse_networks
from core.web.connection import set_body_idle_timeout
from core.web.forwarded import ForwardedScheme
from core.web.transport import DEFAULT_IDLE_TIMEOUT_SECONDS, serve_connections


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


def bound_url(sock: socket.socket, *, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


#: glibc's mallopt parameter number for M_MMAP_THRESHOLD.
_M_MMAP_THRESHOLD = -3
#: Allocations from this size up get their own mapping, returned to the system when freed.
MMAP_THRESHOLD_BYTES = 256 * 1024


def keep_large_buffers_mapped() -> bool:
    """Make glibc serve body-sized buffers (1 MiB reads) from their own mappings.

    By default glibc raises its mmap threshold the first time such a buffer is freed, and
    later ones come from the heap arenas, which keep freed memory: 200 streamed 2 MiB blob
    GETs left an edge 27 MiB above its base for good, 6 MiB with a fixed threshold
    (tests/hostile measure it). Returns False where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def server_config(graceful_timeout_seconds: float) -> Config:
    config = Config()
    config.worker_class = "trio"
    config.graceful_timeout = graceful_timeout_seconds
    # Short: a socket whose client went quiet between requests is closed after this.
    config.keep_alive_timeout = 5
    config.h11_max_incomplete_size = 64 * 1024
    config.accesslog = None
    # A Logger (not "-") makes the server log through our handlers instead of its own.
    config.errorlog = logging.getLogger("depot.server")
    return config


async def serve_app(
    app: Any,
    sock: socket.socket,
    *,
    graceful_timeout_seconds: float,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    body_idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS,
    send_idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS,
    tls: ssl.SSLContext | None = None,
    trusted_proxies: str = "",
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns, then drain in-flight requests for up to
    ``graceful_timeout_seconds``.

    A request body that sends no byte for ``body_idle_timeout_seconds`` gets a 408 (see
    core/web/connection.py); a response the client accepts no byte of for
    ``send_idle_timeout_seconds`` is cut and its connection closed (core/web/transport.py).
    With ``tls`` (core/web/tls.py) every connection is TLS; the announced URL is https.
    ``trusted_proxies``: their ``X-Forwarded-Proto`` is the request's scheme (a TLS-terminating
    load balancer in front: core/web/forwarded.py).
    """
    keep_large_buffers_mapped()
    set_body_idle_timeout(app, body_idle_timeout_seconds)
    trusted = parse_networks(trusted_proxies)
    asgi = ForwardedScheme(app, trusted) if trusted else app
    await serve_connections(
        wrap_app(asgi, 0, "asgi"),
        server_config(graceful_timeout_seconds),
        sock,
        bound_url(sock, tls=tls is not None),
        send_idle_timeout_seconds=send_idle_timeout_seconds,
        tls=tls,
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
