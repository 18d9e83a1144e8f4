"""quart-trio's ASGI connection with the fixes our measurements asked for.

* Request bodies get backpressure: we stop calling ``receive()`` while more than
  ``HIGH_WATER`` bytes wait unread, so TCP flow control throttles a fast uploader instead
  of Quart buffering the whole upload in memory.
* The post-response ``http.disconnect`` no longer cancels the request nursery (that killed
  hypercorn's keep-alive idle timer and made graceful shutdown wait its full timeout); a
  disconnect mid-response still cancels the handler.
* HEAD never runs a body: handlers return empty bodies with an explicit content length.
"""

from __future__ import annotations

from typing import Any, cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.asgi import _handle_exception
from quart.utils import encode_headers
from quart.wrappers import Response
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.wrappers import Response as WerkzeugResponse

HIGH_WATER = 1 << 20


class BoundedBody(TrioBody):
    """A request body that tells the receiver when it may read more from the socket."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None):
        super().__init__(expected_content_length, max_content_length)
        self._drained = trio.Event()
        self._drained.set()

    _released = False

    def append(self, data: bytes) -> None:
        super().append(data)
        if len(self._data) >= HIGH_WATER and self._drained.is_set() and not self._released:
            self._drained = trio.Event()

    def release(self) -> None:
        """Stop applying backpressure (the response is done; unread input is discarded)."""
        self._released = True
        self._data.clear()
        self._drained.set()

    async def __anext__(self) -> bytes:
        try:
            return await super().__anext__()
        finally:
            self._drained.set()

    async def wait_drained(self) -> None:
        await self._drained.wait()


class RegistryRequest(TrioRequest):
    body_class = BoundedBody


class RegistryHTTPConnection(TrioASGIHTTPConnection):
    _response_complete = False
    _body: BoundedBody | None = None

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, receive: ASGIReceiveCallable
    ) -> None:
        body = self._body = cast(BoundedBody, request.body)
        while True:
            message = await receive()
            if message["type"] == "http.request":
                if not self._response_complete:
                    body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                else:
                    await body.wait_drained()
            elif message["type"] == "http.disconnect":
                if not self._response_complete:
                    nursery.cancel_scope.cancel()
                return

    async def handle_request(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, send: ASGISendCallable
    ) -> None:
        try:
            response = await self.app.handle_request(request)
        except Exception as error:
            response = await _handle_exception(self.app, error)
        # No whole-response timeout: it silently truncates long downloads. Blob bodies
        # carry their own progress deadlines.
        await self._send_response(send, response)
        nursery.cancel_scope.cancel()

    async def _send_response(self, send: ASGISendCallable, response: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": encode_headers(response.headers),
            }
        )
        if self.scope["method"] != "HEAD":
            if isinstance(response, WerkzeugResponse):
                for data in response.response:
                    await self._send_body(send, data)
            elif isinstance(response, Response):
                async with response.response as body:
                    async for data in body:
                        await self._send_body(send, data)
        # The disconnect hypercorn reports from inside this final send is the normal end
        # of the exchange, not the client going away.
        self._response_complete = True
        if self._body is not None:
            self._body.release()  # a body the handler never read must not block hypercorn
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _send_body(send: ASGISendCallable, data: bytes | str) -> None:
        body = data.encode() if isinstance(data, str) else data
        if body:
            await send({"type": "http.response.body", "body": body, "more_body": True})
