"""A TCP proxy on 127.0.0.1:0 that can drop every connection passing through it at once.

Bytes are relayed unchanged both ways, so any HTTP client and server work through it;
:meth:`CuttingProxy.cut` closes every open connection (both sides), as a network failure
would in the middle of a request body. New connections are accepted as before.
"""

from __future__ import annotations

from functools import partial

import trio


class CuttingProxy:
    def __init__(self, target: str) -> None:
        """``target``: ``HOST:PORT`` to relay to."""
        host, _, port = target.rpartition(":")
        self._host, self._port = host, int(port)
        self._connections: set[trio.CancelScope] = set()
        self.cuts = 0
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._relay, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def cut(self) -> None:
        """Drop every connection now open."""
        self.cuts += 1
        for scope in self._connections:
            scope.cancel()

    async def _relay(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                server = await trio.open_tcp_stream(self._host, self._port)
                async with server, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, server, nursery.cancel_scope)
                    nursery.start_soon(_pump, server, client, nursery.cancel_scope)
            finally:
                self._connections.discard(scope)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(1024 * 1024):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        done.cancel()


class HoldingProxy:
    """A TCP proxy on 127.0.0.1:0 that counts the bytes clients send through it and can hold
    them at a request boundary.

    :meth:`hold_after` arms it: once ``upstream_bytes`` has reached the given count, the next
    request that starts on any connection (a client sending after the server answered, or on
    a new connection) is held, and :attr:`held` is set; a request already being sent goes
    through whole. :meth:`release` lets every held request go on, to whatever the server is by
    then (a dead one: the connection is closed). Meant for HTTP/1.1 clients, which send a
    request only after the answer to the one before.
    """

    def __init__(self, target: str) -> None:
        """``target``: ``HOST:PORT`` to relay to."""
        host, _, port = target.rpartition(":")
        self._host, self._port = host, int(port)
        self.upstream_bytes = 0
        self.connections = 0
        self.held = trio.Event()
        self._hold_from: int | None = None
        self._released = trio.Event()
        self.url = ""

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._relay, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def hold_after(self, upstream_bytes: int) -> None:
        self._hold_from = upstream_bytes
        self.held = trio.Event()
        self._released = trio.Event()

    def release(self) -> None:
        self._hold_from = None
        self._released.set()

    async def _relay(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(self._host, self._port)
        except OSError:
            return  # the server is down: the client sees its connection closed
        answered = [True]  # whether the server spoke since the client last sent
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(self._up, client, server, answered, nursery.cancel_scope)
            nursery.start_soon(_down, server, client, answered, nursery.cancel_scope)

    async def _up(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        answered: list[bool],
        done: trio.CancelScope,
    ) -> None:
        try:
            while data := await source.receive_some(1024 * 1024):
                threshold = self._hold_from
                if answered[0] and threshold is not None and self.upstream_bytes >= threshold:
                    self.held.set()
                    await self._released.wait()
                answered[0] = False
                await sink.send_all(data)
                self.upstream_bytes += len(data)  # what reached the server
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            done.cancel()


async def _down(
    source: trio.SocketStream, sink: trio.SocketStream, answered: list[bool], done: trio.CancelScope
) -> None:
    try:
        while data := await source.receive_some(1024 * 1024):
            answered[0] = True
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        done.cancel()
    done.cancel()  # the server closed: so does the client's side
