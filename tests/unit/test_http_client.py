"""core/client/http.py: the 1 MiB socket reads patched into httpcore, client defaults, and the
one retry of idempotent requests."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpcore
import httpx
import pytest
import trio

from core.client import http as client_http
from core.client.http import (
    READ_NUM_BYTES,
    open_http_client,
    request_with_retry,
    x_token_auth,
)

TIMEOUT = 10


class _RecordingStream(httpcore.AsyncNetworkStream):
    """A network stream that answers one canned response and records each read size."""

    def __init__(self, response: bytes) -> None:
        self._pending = response
        self.reads: list[int] = []

    # httpcore's AsyncNetworkStream interface takes timeout=.
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        self.reads.append(max_bytes)
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        pass

    async def aclose(self) -> None:
        pass


def test_httpcore_still_has_the_read_size_attribute_we_raise() -> None:
    # If this fails, httpcore renamed its private read size: re-check core/client/http.py
    # and the httpcore pin in pyproject.toml before relaxing anything here.
    assert isinstance(httpcore.AsyncHTTP11Connection.__dict__.get("READ_NUM_BYTES"), int)
    assert READ_NUM_BYTES == 1024 * 1024
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == READ_NUM_BYTES
    client_http._raise_read_size()  # idempotent
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == READ_NUM_BYTES


async def test_http11_connections_read_the_socket_1_mib_at_a_time() -> None:
    body = b"x" * (3 * 1024 * 1024)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    stream = _RecordingStream(head + body)
    connection = httpcore.AsyncHTTP11Connection(
        origin=httpcore.Origin(b"http", b"example.test", 80), stream=stream
    )
    with trio.fail_after(TIMEOUT):
        response = await connection.handle_async_request(
            httpcore.Request("GET", "http://example.test/blob", headers=[(b"Host", b"x")])
        )
        received = b"".join([chunk async for chunk in response.aiter_stream()])
        await response.aclose()
        await connection.aclose()
    assert received == body
    assert stream.reads and set(stream.reads) == {READ_NUM_BYTES}


async def test_client_defaults() -> None:
    async with open_http_client("http://origin.test", auth_header=x_token_auth("dpe_abc")) as c:
        assert c.trust_env is False
        assert c.headers["Accept-Encoding"] == "identity"
        assert c.timeout == httpx.Timeout(30.0, connect=5.0)
        credentials = c.headers["Authorization"].removeprefix("Basic ")
        assert base64.b64decode(credentials) == b"x-token:dpe_abc"
        assert str(c.base_url) == "http://origin.test"
    async with open_http_client("http://origin.test", auth_header=None) as anonymous:
        assert "Authorization" not in anonymous.headers


def _flaky(failures: int, calls: list[str]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) <= failures:
            raise httpx.ConnectError("connection reset", request=request)
        return httpx.Response(200, content=b"ok")

    return handler


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return open_http_client(
        "http://origin.test", auth_header=None, transport=httpx.MockTransport(handler)
    )


@pytest.mark.parametrize("method", ["GET", "HEAD", "get"])
async def test_idempotent_requests_are_retried_once(method: str) -> None:
    calls: list[str] = []
    async with _client(_flaky(1, calls)) as client:
        response = await request_with_retry(client, method, "/v2/")
    assert response.status_code == 200
    assert calls == [method.upper()] * 2


async def test_a_second_transport_error_is_raised() -> None:
    calls: list[str] = []
    async with _client(_flaky(2, calls)) as client:
        with pytest.raises(httpx.ConnectError):
            await request_with_retry(client, "GET", "/v2/")
    assert len(calls) == 2


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_other_methods_are_never_retried(method: str) -> None:
    calls: list[str] = []
    async with _client(_flaky(1, calls)) as client:
        with pytest.raises(httpx.ConnectError):
            await request_with_retry(client, method, "/v2/x", content=b"body")
    assert calls == [method]


async def test_error_statuses_are_answers_not_retried() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503)

    async with _client(handler) as client:
        response = await request_with_retry(client, "GET", "/v2/")
    assert response.status_code == 503
    assert calls == ["GET"]


async def test_streamed_requests_are_retried_too() -> None:
    calls: list[str] = []
    async with _client(_flaky(1, calls)) as client:
        response = await request_with_retry(client, "GET", "/blob", stream=True)
        try:
            assert await response.aread() == b"ok"
        finally:
            await response.aclose()
    assert calls == ["GET", "GET"]
