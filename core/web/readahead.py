"""A response body that reads ahead of the socket.

Reading a chunk (a worker-thread hop) and sending the previous one (the event loop) then
overlap instead of alternating. The producer runs in a nursery owned by the body's
``async with`` — entered and exited by the connection's task — so it never outlives the
response.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import trio
from quart.wrappers.response import ResponseBody

from core.errors import BodyAborted

log = logging.getLogger("depot.web")

ChunkSource = Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]]


class ReadAheadBody(ResponseBody):
    def __init__(self, source: ChunkSource, depth: int = 2) -> None:
        self._source = source
        self._depth = depth
        self._nursery_manager = trio.open_nursery()
        self._receive: trio.MemoryReceiveChannel[bytes] | None = None
        self._failure: BaseException | None = None

    async def __aenter__(self) -> ReadAheadBody:
        send, self._receive = trio.open_memory_channel[bytes](self._depth)
        nursery = await self._nursery_manager.__aenter__()
        nursery.start_soon(self._produce, send)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closing our end makes a producer blocked in send() return: sent in full or
        # abandoned mid-way, the producer stops and the nursery can close.
        if self._receive is not None:
            self._receive.close()
        await self._nursery_manager.__aexit__(exc_type, exc_value, tb)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        assert self._receive is not None
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._failure is not None:
                raise BodyAborted(str(self._failure)) from self._failure
            raise StopAsyncIteration from None

    async def _produce(self, send: trio.MemorySendChannel[bytes]) -> None:
        async with send:
            try:
                async with self._source() as chunks:
                    async for chunk in chunks:
                        await send.send(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the consumer went away
            except Exception as exc:
                log.warning("response body aborted: %s", exc)
                self._failure = exc
