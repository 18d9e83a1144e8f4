"""quart-trio's ASGI connection with the fixes our measurements asked for.

* Request bodies get backpressure: we stop calling ``receive()`` while more than
  ``HIGH_WATER`` bytes wait unread, so TCP flow control throttles a fast uploader instead
  of Quart buffering the whole upload in memory.
* A request body that sends no byte for the body idle timeout (``serve_app`` sets it; see
  :func:`set_body_idle_timeout`) fails the handler's read with 408 (``RequestTimeout``),
  and the connection closes after that answer: every route gets it, pass-through included.
* The post-response ``http.disconnect`` no longer cancels the request nursery (that killed
  the server's keep-alive idle timer and made graceful shutdown wait its full timeout); a
  disconnect mid-response still cancels the handler.
* HEAD never runs a body: handlers return empty bodies with an explicit content length.
* A file-backed body (:class:`core.web.file_body.FileChunks`) goes out through the ASGI
  ``http.response.zerocopysend`` extension when the server offers it (plain-TCP HTTP/1.1:
  sendfile), and is streamed otherwise (TLS, HTTP/2).
* A body that fails mid-response (a fill that lost its upstream, a short file) is logged as
  one line and the connection is cut (the client sees a short body), not a traceback.

These replace quart-trio and Quart internals (``TrioASGIHTTPConnection.handle_messages``,
``handle_request``, ``quart.asgi._handle_exception``, ``TrioBody``'s fields):
tests/unit/test_quart_fences.py fails, naming the dependency, when a release changes them,
and the versions are checked here at import.
"""

from __future__ import annotations

import logging
import math
from importlib.metadata import version
from typing import Any, cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.asgi import _handle_exception
from quart.utils import encode_headers
from quart.wrappers import Response
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.wrappers import Response as WerkzeugResponse

from core.errors import RequestTimeout
from core.web.file_body import FileChunks

log = logging.getLogger("depot.web")

HIGH_WATER = 1 << 20

#: After an early answer, how long the rest of the request body is read and dropped.
LINGER_SECONDS = 5.0

#: app.config key read by every connection; serve_app sets it from the settings.
BODY_IDLE_TIMEOUT_KEY = "DEPOT_BODY_IDLE_TIMEOUT_SECONDS"
DEFAULT_BODY_IDLE_TIMEOUT_SECONDS = 60.0

ZERO_COPY = "http.response.zerocopysend"
#: File bodies go to the server in windows this large: between two, the handler's task
#: reaches a checkpoint (a shutdown deadline or a disconnect takes effect).
ZERO_COPY_WINDOW = 16 << 20

#: The quart-trio and Quart releases whose internals this module was written against.
FENCED_VERSIONS = {"quart-trio": ("0.12",), "quart": ("0.20", "0.21", "0.22")}


def _check_versions() -> None:
    for name, series in FENCED_VERSIONS.items():
        found = version(name)
        if not found.startswith(tuple(s + "." for s in series)):
            raise ImportError(
                f"core/web/connection.py replaces {name} internals tested on {series}, "
                f"found {name} {found}: run tests/unit/test_quart_fences.py, then widen"
            )


_check_versions()


def set_body_idle_timeout(app: Any, seconds: float) -> None:
    app.config[BODY_IDLE_TIMEOUT_KEY] = seconds


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

    def fail(self, error: Exception) -> None:
        """Make the handler's current and next reads raise ``error`` (Quart's own path for
        errors found outside the handler: ``_must_raise``, checked by every read)."""
        self._must_raise = error
        self.set_complete()

    async def __anext__(self) -> bytes:
        try:
            return await super().__anext__()
        except StopAsyncIteration:
            # Quart checks ``_must_raise`` only before waiting: a failure set while the
            # handler waited would otherwise end the body early, as if complete.
            if self._must_raise is not None:
                raise self._must_raise from None
            raise
        finally:
            self._drained.set()

    async def wait_drained(self) -> None:
        await self._drained.wait()


class RegistryRequest(TrioRequest):
    body_class = BoundedBody


class RegistryHTTPConnection(TrioASGIHTTPConnection):
    _response_complete = False
    _body: BoundedBody | None = None
    _body_timed_out = False

    def __init__(self, app: Any, scope: Any) -> None:
        super().__init__(app, scope)
        self._request_done = trio.Event()  # the whole request body arrived, or the client left

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, receive: ASGIReceiveCallable
    ) -> None:
        body = self._body = cast(BoundedBody, request.body)
        idle = float(self.app.config.get(BODY_IDLE_TIMEOUT_KEY, DEFAULT_BODY_IDLE_TIMEOUT_SECONDS))
        complete = False
        while True:
            # Only a client that owes body bytes is timed: not while we hold back (the
            # handler has not read what it got), nor after the body or the response.
            timed = not (complete or self._response_complete or self._body_timed_out)
            message: Any = None
            with trio.move_on_after(idle if timed else math.inf):
                message = await receive()
            if message is None:
                self._body_timed_out = True
                body.fail(RequestTimeout(detail={"idle_seconds": idle}))
                continue
            if message["type"] == "http.request":
                if not self._response_complete:
                    body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    complete = True
                    self._request_done.set()
                    body.set_complete()
                else:
                    await body.wait_drained()
            elif message["type"] == "http.disconnect":
                self._request_done.set()
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
        # No whole-response timeout: it silently truncates long downloads. Sends have a
        # progress deadline in the server instead (core/web/transport.py).
        await self._send_response(send, response)
        nursery.cancel_scope.cancel()

    async def _send_response(self, send: ASGISendCallable, response: Any) -> None:
        headers = encode_headers(response.headers)
        if self._body_timed_out:
            # The rest of the body may still come: this connection cannot carry another
            # request.
            headers.append((b"connection", b"close"))
        status = response.status_code
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if self.scope["method"] != "HEAD":
            try:
                await self._send_body(send, response)
            except Exception as exc:
                # Headers are out: all we can do is cut the connection (the client sees a
                # short body). Returning without the final message makes the server do it.
                log.warning(
                    "%s %s: response body aborted: %s",
                    self.scope["method"],
                    self.scope["path"],
                    exc,
                )
                return
        # The disconnect the server reports from inside this final send is the normal end
        # of the exchange, not the client going away.
        self._response_complete = True
        if self._body is not None:
            self._body.release()  # a body the handler never read must not block the server
            if not self._body_timed_out:  # a stalled body: nothing is coming to drain
                await self._drain_request()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drain_request(self) -> None:
        """An early answer (a 413 before the upload ended, a 401 to a PUT): the client has it
        (it is framed by Content-Length) but may still be sending. Closing with unread input
        makes the kernel reset the connection, and the client may lose the answer; so we
        read and drop the rest for up to LINGER_SECONDS before ending the response."""
        with trio.move_on_after(LINGER_SECONDS):
            await self._request_done.wait()

    async def _send_body(self, send: ASGISendCallable, response: Any) -> None:
        if isinstance(response, WerkzeugResponse):
            for data in response.response:
                await _send_chunk(send, data)
        elif isinstance(response, Response):
            async with response.response as body:
                file = getattr(body, "file", None)
                if isinstance(file, FileChunks) and ZERO_COPY in self.scope.get("extensions", {}):
                    await _send_file(send, file)
                else:
                    async for data in body:
                        await _send_chunk(send, data)


async def _send_chunk(send: ASGISendCallable, data: bytes | str) -> None:
    body = data.encode() if isinstance(data, str) else data
    if body:
        await send({"type": "http.response.body", "body": body, "more_body": True})


async def _send_file(send: ASGISendCallable, file: FileChunks) -> None:
    offset, end = file.offset, file.offset + file.count
    while offset < end:
        count = await file.ready(offset, min(ZERO_COPY_WINDOW, end - offset))
        message = {
            "type": ZERO_COPY,
            "file": file,
            "offset": offset,
            "count": count,
            "more_body": True,
        }
        await send(message)  # type: ignore[arg-type]
        offset += count
