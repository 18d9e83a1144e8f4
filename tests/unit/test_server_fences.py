"""Fences around the anycorn internals core/web/transport.py subclasses or calls.

transport.py subclasses anycorn's TCPServer (its ``protocol_send``, ``_read_data`` and
``_close``; the ``_sendfile_socket`` it sets) and replaces ``worker_serve`` with a loop of
ours built from its Lifespan, WorkerContext and ConnectionState. Each failure names anycorn
and the internal; the behaviour they produce is tested against real sockets in
tests/integration/test_serving.py and tests/hostile/.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import anycorn.run
from anycorn.config import Config
from anycorn.events import Closed, RawData, SendFile
from anycorn.lifespan import Lifespan
from anycorn.protocol.http_stream import HTTPStream
from anycorn.tcp_server import TCPServer
from anycorn.worker_context import WorkerContext

from core.web.serving import server_config
from core.web.transport import FENCED_ANYCORN


def fence(internal: str, what: str) -> str:
    return (
        f"anycorn {version('anycorn')} changed {internal}: {what}. "
        "core/web/transport.py relies on it; re-check before widening the pin."
    )


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_pinned_release() -> None:
    assert version("anycorn").startswith(FENCED_ANYCORN), fence("the release", "outside 0.20")


def test_tcp_server_shape() -> None:
    assert parameters(TCPServer.__init__) == [
        "self",
        "app",
        "config",
        "context",
        "state",
        "stream",
    ], fence("TCPServer.__init__", "its signature changed")
    for method, expected in (
        ("run", ["self"]),
        ("protocol_send", ["self", "event"]),
        ("_read_data", ["self"]),
        ("_close", ["self"]),
    ):
        assert parameters(getattr(TCPServer, method)) == expected, fence(
            f"TCPServer.{method}", "its signature changed (we override it)"
        )
    run = inspect.getsource(TCPServer.run)
    assert "self._sendfile_socket = socket" in run, fence(
        "TCPServer.run", "no longer sets _sendfile_socket for plain TCP"
    )
    assert "await self._read_data()" in run and "await self._close()" in run, fence(
        "TCPServer.run", "no longer reads through _read_data and closes through _close"
    )
    send = inspect.getsource(TCPServer.protocol_send)
    for event in ("RawData", "SendFile", "Closed"):
        assert event in send, fence("TCPServer.protocol_send", f"no longer handles {event}")


def test_events() -> None:
    assert RawData(data=b"x").data == b"x"
    sendfile = SendFile(file=3, offset=4, count=5)
    assert (sendfile.file, sendfile.offset, sendfile.count) == (3, 4, 5), fence(
        "events.SendFile", "its fields changed"
    )
    assert Closed() is not None


def test_zero_copy_is_offered_for_plain_http_1_1_only() -> None:
    source = inspect.getsource(HTTPStream.handle)
    assert 'extensions["http.response.zerocopysend"] = {}' in source, fence(
        "HTTPStream.handle", "no longer offers http.response.zerocopysend"
    )
    assert "self.zero_copy_send" in source, fence(
        "HTTPStream.handle", "offers zero copy without asking the connection"
    )


def test_worker_serve_is_what_serve_connections_replaces() -> None:
    source = inspect.getsource(anycorn.run.worker_serve)
    for part in ("Lifespan(", "WorkerContext(", "tcp_server_handler(", "context.terminated"):
        assert part in source, fence(
            "run.worker_serve", f"no longer uses {part}: compare serve_connections with it"
        )
    assert parameters(Lifespan.__init__) == ["self", "app", "config", "state"], fence(
        "Lifespan.__init__", "its signature changed"
    )
    for method in ("handle_lifespan", "wait_for_startup", "wait_for_shutdown"):
        assert hasattr(Lifespan, method), fence(f"Lifespan.{method}", "gone")
    assert parameters(WorkerContext.__init__) == ["self", "max_requests"], fence(
        "WorkerContext.__init__", "its signature changed"
    )
    assert hasattr(WorkerContext(None), "terminated"), fence("WorkerContext.terminated", "gone")


def test_config_fields_we_set() -> None:
    config = server_config(7)
    assert isinstance(config, Config)
    defaults = Config()
    for field in (
        "worker_class",
        "graceful_timeout",
        "keep_alive_timeout",
        "h11_max_incomplete_size",
        "accesslog",
        "errorlog",
        "read_timeout",
    ):
        assert hasattr(defaults, field), fence(f"Config.{field}", "gone")
    assert config.worker_class == "trio" and config.graceful_timeout == 7
    # A read timeout would cut long downloads (the client sends nothing meanwhile).
    assert config.read_timeout is None, fence("Config.read_timeout", "now set by default")
