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

A file still being written (the edge's spool while a fill runs) is a subclass whose
:meth:`FileChunks.ready` waits until the bytes asked for are in the file: both the zero-copy
sender and the streamed reads ask it before each window.
"""

from __future__ import annotations

import os

import trio

from core.errors import BodyAborted

#: Streamed reads: 1 MiB is what makes throughput (PITFALLS.md) and bounds memory per
#: connection (the read-ahead holds two of these; 4 MiB reads held ~25 MiB per edge download
#: and glibc kept it: 760 MiB idle after the edge benchmark).
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

    async def ready(self, offset: int, count: int) -> int:
        """How many of the ``count`` bytes from ``offset`` (``count`` > 0) may be sent now:
        at least one; waits until there is one. A file being written overrides it (and
        raises when its writer failed)."""
        return count

    def __aiter__(self) -> FileChunks:
        return self

    async def __anext__(self) -> bytes:
        remaining = self.offset + self.count - self._position
        if remaining <= 0:
            raise StopAsyncIteration
        size = await self.ready(self._position, min(READ_SIZE, remaining))
        try:
            data = await trio.to_thread.run_sync(
                os.pread, self.fd, size, self._position, limiter=self._limiter
            )
        except OSError as exc:
            raise BodyAborted(f"file read failed: {exc.strerror or exc}") from exc
        if not data:
            raise BodyAborted(f"file ended {remaining} bytes early")
        self._position += len(data)
        return data
