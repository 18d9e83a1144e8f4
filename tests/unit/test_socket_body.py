"""core/client/socket_body.py: the httpx/httpcore/h11 internals it reaches (fenced here: a
release that changes them fails these tests, naming the internal) and the body it yields.

A raw HTTP/1.1 server on 127.0.0.1:0 in this trio run answers with a known body; the test
reads it the way an edge fill does (leftover, then the socket in a worker thread).
"""

from __future__ import annotations

import hashlib
import os
from functools import partial

import h11
import httpx
import pytest
import trio

from core.client.socket_body import _h11_connection, receive_into, take_socket_body

TIMEOUT = 10
BODY = os.urandom(3 * 1024 * 1024 + 5)


async def _serve(chunked: bool, stream: trio.SocketStream) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(BODY)
    head = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n"
    if chunked:
        body = b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
    else:
        body = BODY
    await stream.send_all(head + body)
    await stream.aclose()


async def _server(nursery: trio.Nursery, chunked: bool = False) -> str:
    listeners = await nursery.start(
        partial(trio.serve_tcp, partial(_serve, chunked), 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}/blob"


def test_the_internals_it_reaches_still_exist() -> None:
    # If this fails, an httpx/httpcore/h11 release moved what socket_body.py reads: re-check
    # it (and the pins in pyproject.toml) before relaxing anything here.
    assert "trailing_data" in dir(h11.Connection), "h11.Connection.trailing_data"
    import httpcore

    assert "_h11_state" in httpcore.AsyncHTTP11Connection.__init__.__code__.co_names, (
        "httpcore.AsyncHTTP11Connection._h11_state"
    )


async def test_a_plain_body_is_handed_over_whole(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        url = await _server(nursery)
        async with httpx.AsyncClient() as client, client.stream("GET", url) as response:
            assert _h11_connection(response) is not None, "httpx → httpcore stream chain"
            body = take_socket_body(response, len(BODY))
            assert body is not None
            hasher = hashlib.sha256(body.leftover)
            received = len(body.leftover)
            buffer = memoryview(bytearray(1 << 20))
            while received < len(BODY):
                view = buffer[: min(len(buffer), len(BODY) - received)]
                got = await trio.to_thread.run_sync(receive_into, body.fd, view, 1, 0.2)
                hasher.update(view[:got])
                received += got
            assert received == len(BODY)
            assert hasher.digest() == hashlib.sha256(BODY).digest()
            # The peer closed after the body: a further read says so.
            with pytest.raises(EOFError):
                await trio.to_thread.run_sync(receive_into, body.fd, buffer, 1, 5.0)


async def test_a_chunked_body_stays_with_httpx(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        url = await _server(nursery, chunked=True)
        async with httpx.AsyncClient() as client, client.stream("GET", url) as response:
            assert take_socket_body(response, len(BODY)) is None
            assert await response.aread() == BODY
