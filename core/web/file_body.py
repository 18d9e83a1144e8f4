"""A response body backed by an open file: sent by the kernel where the server can.

A :data:`core.web.blobs.BodyOpener` may yield :class:`FileChunks` instead of any other
chunk iterator. Where the server offers the ASGI ``http.response.zerocopysend`` extension
(plain-TCP HTTP/1.1), the connection layer (core/web/connection.py) hands the descriptor to
the server and the bytes go from page cache to socket (``sendfile``) without entering
Python. Elsewhere (TLS, HTTP/2) it is iterated like any body: 1 MiB ``os.pread`` calls in a
worker thread.

It does not own the descriptor: the opener that yields it keeps the file open until its
context exits. The origin's filesystem driver opens the blob file; the edge can hand over
the descriptor of a cached blob the same way (``os.pread`` never moves the file position,
so one descriptor may serve several ranges).
"""

from __future__ import annotations

import os

import trio

from core.errors import BodyAborted

#: Streamed reads: 1 MiB is what makes throughput (PITFALLS.md) and bounds memory per
#: connection (the read-ahead holds two of these).
READ_SIZE = 1 << 20


class FileChunks:
    """``count`` bytes of the open file ``fd`` from ``offset``."""

    def __init__(
        self, fd: int, offset: int, count: int, limiter: trio.CapacityLimiter | None = None
    ) -> None:
        if offset < 0 or count < 0:
            raise ValueError(f"bad file window {offset}+{count}")
        self.fd = fd
        self.offset = offset
        self.count = count
        self._position = offset
        self._limiter = limiter

    def fileno(self) -> int:
        """What the zero-copy extension's ``file`` must have."""
        return self.fd

    def __aiter__(self) -> FileChunks:
        return self

    async def __anext__(self) -> bytes:
        remaining = self.offset + self.count - self._position
        if remaining <= 0:
            raise StopAsyncIteration
        try:
            data = await trio.to_thread.run_sync(
                os.pread, self.fd, min(READ_SIZE, remaining), self._position, limiter=self._limiter
            )
        except OSError as exc:
            raise BodyAborted(f"file read failed: {exc.strerror or exc}") from exc
        if not data:
            raise BodyAborted(f"file ended {remaining} bytes early")
        self._position += len(data)
        return data
