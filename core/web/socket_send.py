"""Writing response bytes to a plain TCP socket with a progress deadline.

The server's own sends shield the socket write from cancellation and have no deadline, so
a client that stops reading held its connection (and every buffer behind it) forever.
Here a send fails with :class:`SendStalled` once the socket has accepted no byte for
``idle_seconds``; a slow reader that keeps making progress is never cut.

File bodies go out with ``os.sendfile`` (the kernel copies page cache to socket). The
calls run in a worker thread: on a page-cache miss one waits for the disk, and that must
not stall the event loop (every other connection of the process). The thread keeps
sending while the socket drains and gives itself back when the socket stays full for a
moment, so a slow reader does not hold a thread and a fast one is not slowed by a return
to the event loop per socket buffer.

The caller holds the connection's send lock: these functions write to the socket
directly, past the stream's own conflicting-send check.
"""

from __future__ import annotations

import os
import select
import socket

import trio


class SendStalled(Exception):
    """The peer accepted no byte for the whole idle period."""


#: One sendfile call moves at most this much; the socket buffer usually limits it first.
SENDFILE_MAX = 1 << 30

#: How long a sendfile thread waits for a full socket to drain before it returns to the
#: event loop (which then waits without holding a thread).
BURST_WAIT_SECONDS = 0.05

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


def _sendfile_burst(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """In a worker thread: sendfile until ``count`` bytes are sent, the file ends, or the
    socket stays full for BURST_WAIT_SECONDS. Returns the bytes sent, -1 for none because
    the socket is full. A fast reader is served without a return to the event loop per
    socket buffer; a slow one gives the thread back within BURST_WAIT_SECONDS."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    total = 0
    while total < count:
        try:
            sent = os.sendfile(sock_fd, file_fd, offset + total, count - total)
        except (BlockingIOError, InterruptedError):
            if poller.poll(BURST_WAIT_SECONDS * 1000):
                continue
            return total or -1
        if sent == 0:
            break  # end of file
        total += sent
    return total


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
            _sendfile_burst, sock_fd, file_fd, offset + total, size, limiter=_SENDFILE_LIMITER
        )
        if sent < 0:
            await _wait_writable(sock, idle_seconds)
        elif sent == 0:
            break  # end of file: the caller declared more than there is
        else:
            total += sent
    return total
