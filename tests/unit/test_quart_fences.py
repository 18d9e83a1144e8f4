"""Fences around the quart-trio and Quart internals core/web/connection.py replaces or calls.

Each test names the dependency and the internal in its failure: when a release changes
one, this says what to re-check before widening the pins in pyproject.toml. The ASGI
exchanges here call the app directly (no server), so they run in milliseconds.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import pytest
import quart.asgi
import quart.utils
import quart_trio.asgi
import trio
import trio.testing
from quart.wrappers.response import ResponseBody
from quart_trio import QuartTrio
from quart_trio.wrappers.request import TrioBody, TrioRequest

from core.web import connection
from core.web.app import create_app
from core.web.connection import BoundedBody, RegistryHTTPConnection, RegistryRequest


def fence(dependency: str, internal: str, what: str) -> str:
    return (
        f"{dependency} {version(dependency)} changed {internal}: {what}. "
        "core/web/connection.py relies on it; re-check before widening the pin."
    )


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- the pins -------------------------------------------------------------------------------


@pytest.mark.parametrize("dependency", sorted(connection.FENCED_VERSIONS))
def test_installed_versions_are_the_fenced_ones(dependency: str) -> None:
    series = connection.FENCED_VERSIONS[dependency]
    assert version(dependency).startswith(tuple(s + "." for s in series)), (
        f"{dependency} {version(dependency)} is outside {series}, the releases whose "
        "internals core/web/connection.py was written against"
    )


# --- quart-trio: TrioASGIHTTPConnection --------------------------------------------------------


def test_trio_connection_runs_handle_messages_and_handle_request_in_one_nursery() -> None:
    call = quart_trio.asgi.TrioASGIHTTPConnection.__call__
    names = call.__code__.co_names
    assert {"handle_messages", "handle_request", "open_nursery"} <= set(names), fence(
        "quart-trio",
        "TrioASGIHTTPConnection.__call__",
        "it no longer starts handle_messages and handle_request in a nursery",
    )
    for method in ("handle_messages", "handle_request"):
        original = getattr(quart_trio.asgi.TrioASGIHTTPConnection, method)
        assert parameters(original)[:2] == ["self", "nursery"], fence(
            "quart-trio", f"TrioASGIHTTPConnection.{method}", "its signature changed"
        )
        ours = getattr(RegistryHTTPConnection, method)
        assert parameters(ours) == parameters(original), fence(
            "quart-trio", f"TrioASGIHTTPConnection.{method}", "our override no longer matches"
        )


def test_quart_builds_the_request_from_the_app_request_class() -> None:
    source = inspect.getsource(quart.asgi.ASGIHTTPConnection._create_request_from_scope)
    assert "self.app.request_class(" in source, fence(
        "quart",
        "ASGIHTTPConnection._create_request_from_scope",
        "the request is no longer built from app.request_class (our BoundedBody is lost)",
    )
    assert RegistryRequest.body_class is BoundedBody


def test_handle_exception_reraises_outside_debug() -> None:
    assert parameters(quart.asgi._handle_exception) == ["app", "error"], fence(
        "quart", "asgi._handle_exception", "its signature changed"
    )

    async def reraised() -> None:
        with pytest.raises(ValueError, match="boom"):
            await quart.asgi._handle_exception(QuartTrio("fence"), ValueError("boom"))

    trio.run(reraised)


def test_encode_headers_returns_a_list_we_can_extend() -> None:
    encoded = quart.utils.encode_headers({"X-A": "1"})  # type: ignore[arg-type]
    assert isinstance(encoded, list), fence(
        "quart", "utils.encode_headers", "no longer a list (we append Connection: close)"
    )
    assert encoded == [(b"x-a", b"1")], fence("quart", "utils.encode_headers", "new format")


def test_response_bodies_are_async_context_managers() -> None:
    for method in ("__aenter__", "__aexit__"):
        assert hasattr(ResponseBody, method), fence(
            "quart", f"wrappers.response.ResponseBody.{method}", "gone (ReadAheadBody uses it)"
        )


# --- quart-trio: TrioBody fields and behaviour ---------------------------------------------------


def test_trio_body_fields() -> None:
    assert parameters(TrioBody.__init__) == [
        "self",
        "expected_content_length",
        "max_content_length",
    ], fence("quart-trio", "TrioBody.__init__", "its signature changed")
    body = TrioBody(None, None)
    for field in ("_data", "_must_raise", "_complete", "_has_data"):
        assert hasattr(body, field), fence("quart-trio", f"TrioBody.{field}", "gone")
    assert isinstance(body._data, bytearray), fence("quart-trio", "TrioBody._data", "not bytes")
    assert TrioRequest.body_class is TrioBody


def test_must_raise_fails_an_awaited_body_and_drops_later_appends() -> None:
    async def check() -> None:
        body = TrioBody(None, None)
        body.append(b"abc")
        body._must_raise = RuntimeError("stop")
        body.append(b"ignored")
        assert bytes(body._data) == b"abc", fence(
            "quart", "Body.append", "appends after _must_raise is set"
        )
        body.set_complete()
        with pytest.raises(RuntimeError, match="stop"):
            await body

    trio.run(check)


def test_a_failure_set_while_waiting_ends_iteration_unless_we_raise_it() -> None:
    """The case BoundedBody.__anext__ exists for: Quart checks ``_must_raise`` only before
    waiting, so a failure set while the handler waits looks like the body's end."""

    async def first_read(body: TrioBody) -> str:
        result = "data"
        async with trio.open_nursery() as nursery:

            async def fail_soon() -> None:
                await trio.testing.wait_all_tasks_blocked()
                body._must_raise = RuntimeError("timed out")
                body.set_complete()

            nursery.start_soon(fail_soon)
            try:
                await body.__anext__()
            except StopAsyncIteration:
                result = "end"
            except RuntimeError:
                result = "error"
        return result

    async def check() -> None:
        assert await first_read(TrioBody(None, None)) == "end", fence(
            "quart", "Body.__anext__", "now raises _must_raise after waiting (simplify ours)"
        )
        assert await first_read(BoundedBody(None, None)) == "error"

    trio.run(check)


# --- the whole connection, through the ASGI interface ------------------------------------------


async def _exchange(
    app: QuartTrio, method: str, path: str, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    incoming = list(messages)

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "asgi": {"spec_version": "2.1", "version": "3.0"},
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"x")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "extensions": {},
    }
    call: Callable[..., Awaitable[None]] = app
    with trio.fail_after(600):
        await call(scope, receive, send)
    return sent


async def test_our_connection_class_serves_the_app() -> None:
    app = create_app("fence")
    assert app.asgi_http_class is RegistryHTTPConnection

    @app.route("/echo", methods=["PUT"])
    async def echo() -> bytes:
        from quart import request

        return await request.get_data()

    sent = await _exchange(
        app,
        "PUT",
        "/echo",
        [
            {"type": "http.request", "body": b"hello ", "more_body": True},
            {"type": "http.request", "body": b"world", "more_body": False},
        ],
    )
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200, fence(
        "quart-trio", "TrioASGIHTTPConnection", "our connection no longer answers"
    )
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body == b"hello world"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_stalled_body_fails_the_handler_with_408(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    app = create_app("fence")
    connection.set_body_idle_timeout(app, 60)

    @app.route("/slow", methods=["PUT"])
    async def slow() -> bytes:
        from quart import request

        return await request.get_data()

    sent = await _exchange(
        app, "PUT", "/slow", [{"type": "http.request", "body": b"part", "more_body": True}]
    )
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"REQUEST_TIMEOUT" in body
