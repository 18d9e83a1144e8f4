"""Writing response bytes to a plain TCP socket with a progress deadline.

The server's own sends shield the socket write from cancellation and have no deadline, so
a client that stops reading held its connection (and every buffer behind it) forever.
Here a send fails with :class:`SendStalled` once the socket has accepted no byte for
``idle_seconds``; a slow reader that keeps making progress is never cut.

File bodies go out with ``os.sendfile`` (the kernel copies page cache to socket). The call
runs in a worker thread: on a page-cache miss it waits for the disk, and that must not
stall the event loop (every other connection of the process). The socket stays
non-blocking, so a call returns as soon as the socket buffer is full; the thread hop
(~85 µs) is paid per socket-buffer's worth of bytes (megabytes), not per chunk.

The caller holds the connection's send lock: these functions write to the socket
directly, past the stream's own conflicting-send check.
"""

from __future__ import annotations

import os
import socket

import trio


class SendStalled(Exception):
    """The peer accepted no byte for the whole idle period."""


#: One sendfile call moves at most this much; the socket buffer usually limits it first.
SENDFILE_MAX = 1 << 30

#: Threads for sendfile calls, per process: enough for many concurrent downloads.
_SENDFILE_LIMITER = trio.CapacityLimiter(32)


async def _wait_writable(sock: socket.socket, idle_seconds: float) -> None:
    with trio.move_on_after(idle_seconds) as scope:
        await trio.lowlevel.wait_writable(sock)
    if scope.cancelled_caught:
        raise SendStalled(f"no byte accepted for {idle_seconds:g} s")


async def send_bytes(sock: socket.socket, data: bytes, idle_seconds: float) -> None:
    """Write all of ``data``; SendStalled when no byte is accepted for ``idle_seconds``."""
    with memoryview(data) as view:
        sent = 0
        while sent < len(view):
            try:
                sent += sock.send(view[sent:])
            except (BlockingIOError, InterruptedError):
                await _wait_writable(sock, idle_seconds)
    await trio.lowlevel.checkpoint()


def _sendfile_some(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    try:
        return os.sendfile(sock_fd, file_fd, offset, count)
    except (BlockingIOError, InterruptedError):
        return -1  # the socket buffer is full


async def send_file(
    sock: socket.socket, file_fd: int, offset: int, count: int, idle_seconds: float
) -> int:
    """Send ``count`` bytes of ``file_fd`` from ``offset``; return how many were sent
    (fewer only if the file is shorter). SendStalled as :func:`send_bytes`."""
    sock_fd = sock.fileno()
    total = 0
    while total < count:
        size = min(SENDFILE_MAX, count - total)
        sent = await trio.to_thread.run_sync(
            _sendfile_some, sock_fd, file_fd, offset + total, size, limiter=_SENDFILE_LIMITER
        )
        if sent < 0:
            await _wait_writable(sock, idle_seconds)
        elif sent == 0:
            break  # end of file: the caller declared more than there is
        else:
            total += sent
    return total
