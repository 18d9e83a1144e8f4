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
