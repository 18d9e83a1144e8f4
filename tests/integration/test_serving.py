"""The serving layer on real sockets: zero-copy file bodies and their streamed fallback,
malformed input, and the send progress deadline (core/web/serving.py, transport.py,
connection.py)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from quart import request

from core.web.app import create_app
from core.web.blobs import BlobInfo, FileChunks, blob_response
from core.web.response import RegistryResponse
from core.web.serving import bind_socket, bound_url, serve_app

MIB = 1 << 20
ZERO_COPY = "http.response.zerocopysend"


class _Chunks:
    """A body that is not a file: 1 MiB chunks of ``data``."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if self._position >= len(self._data):
            raise StopAsyncIteration
        chunk = self._data[self._position : self._position + MIB]
        self._position += len(chunk)
        return chunk


@asynccontextmanager
async def serving(file: Path, data: bytes, **limits: float) -> AsyncIterator[str]:
    """A bare app whose ``/file`` is ``file`` as a file-backed blob body, ``/stream`` the
    same bytes as a plain chunk stream."""
    app = create_app("serving")
    size = len(data)  # what ``file`` holds when the test starts

    @asynccontextmanager
    async def opener(offset: int, length: int) -> AsyncIterator[FileChunks]:
        fd = os.open(file, os.O_RDONLY)
        try:
            yield FileChunks(fd, offset, length)
        finally:
            os.close(fd)

    @app.route("/file", methods=["GET", "HEAD"])
    async def whole() -> RegistryResponse:
        info = BlobInfo("sha256:" + "0" * 64, size)
        return blob_response(request.method, request.headers.get("Range"), info, opener)

    @asynccontextmanager
    async def streamed(offset: int, length: int) -> AsyncIterator[_Chunks]:
        yield _Chunks(data[offset : offset + length])

    @app.route("/stream", methods=["GET"])
    async def stream() -> RegistryResponse:
        info = BlobInfo("sha256:" + "0" * 64, size)
        return blob_response(request.method, request.headers.get("Range"), info, streamed)

    @app.route("/extensions")
    async def extensions() -> dict[str, bool]:
        return {"zero_copy": ZERO_COPY in request.scope.get("extensions", {})}

    sock = bind_socket("127.0.0.1:0")
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        serve = partial(
            serve_app,
            app,
            sock,
            graceful_timeout_seconds=1,
            shutdown_trigger=shutdown.wait,
            **limits,
        )
        await nursery.start(serve)
        try:
            yield bound_url(sock)
        finally:
            shutdown.set()


def client(url: str, *, h2c: bool = False) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        trust_env=False,
        timeout=30,
        http1=not h2c,
        http2=h2c,
        headers={"Accept-Encoding": "identity"},
    )


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(40 * MIB + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("h2c", [False, True], ids=["http1.1-sendfile", "h2c-streamed"])
async def test_file_bodies_whole_and_ranged(data_file: tuple[Path, bytes], h2c: bool) -> None:
    path, data = data_file
    with trio.fail_after(60):
        async with serving(path, data) as url, client(url, h2c=h2c) as http:
            offered = (await http.get("/extensions")).json()["zero_copy"]
            assert offered is not h2c  # plain-TCP HTTP/1.1 only
            whole = await http.get("/file")
            assert whole.status_code == 200 and whole.content == data
            for header, expected in (
                ("bytes=0-0", data[:1]),
                (f"bytes={17 * MIB + 5}-{33 * MIB}", data[17 * MIB + 5 : 33 * MIB + 1]),
                ("bytes=-10", data[-10:]),
                (f"bytes={len(data) - 1}-", data[-1:]),
            ):
                ranged = await http.get("/file", headers={"Range": header})
                assert ranged.status_code == 206, header
                assert ranged.content == expected, header
            head = await http.head("/file")
            assert head.headers["Content-Length"] == str(len(data)) and head.content == b""


async def test_a_file_shorter_than_its_window_cuts_the_connection(
    data_file: tuple[Path, bytes],
) -> None:
    path, data = data_file
    with trio.fail_after(60):
        async with serving(path, data) as url, client(url) as http:
            os.truncate(path, 20 * MIB)  # shorter than the size the response announced
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/file")
            # One cut connection, not a dead server.
            assert (await http.get("/extensions")).status_code == 200


async def test_malformed_bodies_leave_the_server_serving(data_file: tuple[Path, bytes]) -> None:
    attacks = [
        b"GET /extensions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGARBAGE\r\n\r\n",
    ]
    path, data = data_file
    with trio.fail_after(60):
        async with serving(path, data) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            for _ in range(30):
                for attack in attacks:
                    stream = await trio.open_tcp_stream(host, int(port))
                    async with stream:
                        await stream.send_all(attack)
                        try:
                            while await stream.receive_some(MIB):
                                pass
                        except trio.BrokenResourceError:
                            pass
            async with client(url) as http:
                assert (await http.get("/extensions")).status_code == 200


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.stalled = trio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if "SendStalled" in record.getMessage():
            self.stalled.set()


@pytest.mark.parametrize("path", ["/file", "/stream"])
async def test_a_reader_that_stops_is_cut_after_the_send_deadline(
    data_file: tuple[Path, bytes], path: str
) -> None:
    """``/file`` goes out by sendfile, ``/stream`` through the server's byte sends."""
    file, data = data_file
    records = _Records()
    logger = logging.getLogger("depot.server")
    logger.addHandler(records)
    try:
        with trio.fail_after(60):
            async with serving(file, data, send_idle_timeout_seconds=0.5) as url:
                host, port = url.removeprefix("http://").rsplit(":", 1)
                sock = trio.socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await sock.connect((host, int(port)))
                await sock.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await records.stalled.wait()  # the server gave up on this reader ...
                received = 0
                with sock:
                    try:
                        while chunk := await sock.recv(MIB):
                            received += len(chunk)
                    except ConnectionResetError:
                        pass
                # ... and the connection ends before the body does.
                assert received < len(data)
                assert sum("SendStalled" in m for m in records.messages) == 1
    finally:
        logger.removeHandler(records)
