"""A response body read straight from its socket, past httpx, for bulk blob bytes.

Receiving a blob through httpx costs the event loop ~4 copies of every byte (h11's receive
buffer grows, is sliced and shifted for each ``Data`` event): a cold edge fill was bound at
~100-140 MB/s by that alone on 2 busy cores, while the origin could send 1 GB/s. Once httpx
has sent the request (auth, redirects, retries are all its) and parsed the response head, a
plain-TCP HTTP/1.1 body of known length can instead be received by ``recv_into`` into one
reused buffer in a worker thread, hashed and written there (every step releases the GIL).

What this needs from httpx/httpcore/h11, fenced (``tests/unit/test_socket_body.py`` fails,
naming the internal, when a release changes it):

* the socket: ``response.extensions["network_stream"].get_extra_info("socket")`` (public);
* the body bytes h11 already buffered with the head: ``h11.Connection.trailing_data``
  (public in h11), reached through httpx's and httpcore's private stream chain
  (``_stream`` / ``_httpcore_stream`` / ``_connection`` / ``_h11_state``).

When anything is missing (TLS, chunked encoding, another httpcore) :func:`take_socket_body`
returns None and the caller reads ``aiter_raw()`` as before. After a socket body the
connection is never reused: closing the response with h11 mid-body makes httpcore close it.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass
from typing import Any

import h11
import httpx

#: How deep the chain from ``response.stream`` to httpcore's HTTP/1.1 connection may be.
_CHAIN = ("_stream", "_httpcore_stream", "_connection")
_MAX_HOPS = 8


@dataclass(frozen=True, slots=True)
class SocketBody:
    """``length`` body bytes: ``leftover`` first (already received), then from the socket."""

    fd: int  # the socket's descriptor (trio's socket object has no blocking calls)
    leftover: bytes
    length: int


def _h11_connection(response: httpx.Response) -> h11.Connection | None:
    node: Any = response.stream
    for _ in range(_MAX_HOPS):
        state = getattr(node, "_h11_state", None)
        if isinstance(state, h11.Connection):
            return state
        node = next((getattr(node, name) for name in _CHAIN if hasattr(node, name)), None)
        if node is None:
            return None
    return None


def take_socket_body(response: httpx.Response, length: int) -> SocketBody | None:
    """The body of ``response`` (unread so far, ``length`` bytes by Content-Length) as a
    socket to read; None when it must be read through httpx instead."""
    if response.http_version not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    if "transfer-encoding" in response.headers:
        return None
    stream = response.extensions.get("network_stream")
    if stream is None or stream.get_extra_info("ssl_object") is not None:
        return None
    try:
        sock = stream.get_extra_info("socket")
    except (AssertionError, AttributeError):
        return None
    state = _h11_connection(response)
    fileno = getattr(sock, "fileno", None)
    if fileno is None or state is None:
        return None
    if state.their_state is not h11.SEND_BODY:
        return None
    leftover, _ = state.trailing_data
    if len(leftover) > length:
        return None  # more than the body: let h11 judge it
    return SocketBody(fileno(), bytes(leftover), length)


def receive_into(fd: int, view: memoryview, enough: int, wait_seconds: float) -> int:
    """In a worker thread: fill ``view`` from socket ``fd`` (non-blocking) until it is full, or
    holds ``enough`` bytes and the socket has no more for now, or nothing came for
    ``wait_seconds``; return how many bytes. Raises ``EOFError`` when the peer closed before
    sending any, ``OSError`` as ``readv`` does."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    filled = 0
    while filled < len(view):
        try:
            received = os.readv(fd, [view[filled:]])
        except (BlockingIOError, InterruptedError):
            if filled < enough and poller.poll(wait_seconds * 1000):
                continue
            break
        if received == 0:
            if filled:
                break  # report what came; the next call raises
            raise EOFError("connection closed mid-body")
        filled += received
    return filled
