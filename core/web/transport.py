"""The HTTP server under our app: anycorn's trio worker, with the connection guarded.

Why anycorn (a hypercorn fork on AnyIO) and not hypercorn 0.18, measured on this machine
(bench/sendfile_bench.py; figures in the commit that chose it):

* hypercorn's trio worker dies of one malformed request body (its reader raises
  ``trio.BusyResourceError``, which ends ``trio.run``); anycorn's close paths survive the
  same sequences;
* anycorn implements the ASGI ``http.response.zerocopysend`` extension (sendfile for blob
  bodies), with h11 keeping the framing; hypercorn implements neither zero-copy extension.

What this module adds, per connection (:class:`GuardedTCPServer`):

* nothing raised by one connection ends the process: it is logged as one line and that
  connection closes;
* every send has a progress deadline (no byte accepted by the socket for
  ``send_idle_seconds`` closes the connection), so a client that stops reading pins no
  buffer; anycorn, like hypercorn, shields its writes and has no write timeout;
* file bodies are sent with ``os.sendfile`` from a worker thread (a page-cache miss must
  not stall the event loop; anycorn calls it on the loop);
* a lingering close when the server refuses input (h11's 400): what the client still sends
  is read and dropped for a short while, so the answer reaches a client still sending
  instead of a connection reset (the app's early answers are drained the same way in
  core/web/connection.py).

:func:`serve_connections` replaces anycorn's ``worker_serve`` for our one case (plain
sockets we bound, trio): lifespan, accept loop, graceful drain. The anycorn internals used
here are fenced by tests/unit/test_server_fences.py; anycorn is pinned in pyproject.toml.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from importlib.metadata import version
from typing import Any

import anyio
import anyio.abc
import anyio.streams.tls
import trio
from anycorn.config import Config
from anycorn.events import Closed, Event, RawData, SendFile
from anycorn.lifespan import Lifespan
from anycorn.tcp_server import TCPServer
from anycorn.typing import AppWrapper, ConnectionState
from anycorn.worker_context import WorkerContext

from core.web.socket_send import SendStalled, send_bytes, send_file
from core.web.tls import HANDSHAKE_TIMEOUT_SECONDS

log = logging.getLogger("depot.server")

#: The anycorn series whose internals this module was written against.
FENCED_ANYCORN = "0.20."
if not version("anycorn").startswith(FENCED_ANYCORN):
    raise ImportError(
        f"core/web/transport.py subclasses anycorn {FENCED_ANYCORN}x internals, found "
        f"anycorn {version('anycorn')}: run tests/unit/test_server_fences.py, then widen"
    )

DEFAULT_IDLE_TIMEOUT_SECONDS = 60.0

#: How long a client still sending after a refusal is read (and ignored) before close.
LINGER_SECONDS = 5.0
MAX_DRAIN_READ = 1 << 16

_SEND_FAILURES = (
    SendStalled,
    TimeoutError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.BusyResourceError,
)


class GuardedTCPServer(TCPServer):
    """One client connection (see the module docstring for what differs from anycorn's)."""

    def __init__(self, *args: Any, send_idle_seconds: float) -> None:
        super().__init__(*args)
        self._send_idle_seconds = send_idle_seconds
        self._reader: trio.lowlevel.Task | None = None
        self._failure_logged = False

    async def run(self) -> None:
        try:
            await super().run()
        except Exception as exc:  # one client must never end the process
            self._log_failure(exc)
            with suppress(Exception):
                await self.stream.aclose()

    def _log_failure(self, exc: BaseException) -> None:
        if self._failure_logged:
            return
        self._failure_logged = True
        try:
            peer = self.stream.extra(anyio.abc.SocketAttribute.remote_address)
        except Exception:  # the socket may be gone already
            peer = "?"
        log.warning("connection %s closed: %s: %s", peer, type(exc).__name__, exc)

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData | SendFile):
            async with self.send_lock:
                try:
                    with anyio.CancelScope(shield=True):
                        await self._send(event)
                except _SEND_FAILURES as exc:
                    if isinstance(exc, SendStalled | TimeoutError):
                        self._log_failure(exc)
                    # Close the socket too: the reader task must not wait on a client that
                    # is gone or stalled.
                    with suppress(*_SEND_FAILURES):
                        await self.stream.aclose()
                    await self.protocol.handle(Closed())
        else:
            await super().protocol_send(event)

    async def _send(self, event: RawData | SendFile) -> None:
        sock = self._sendfile_socket  # set by anycorn for plain TCP only
        if isinstance(event, RawData):
            if sock is not None:
                await send_bytes(sock, event.data, self._send_idle_seconds)
            else:
                with anyio.fail_after(self._send_idle_seconds):
                    await self.stream.send(event.data)
            return
        # anycorn queues SendFile only where it offered zerocopysend: plain-TCP HTTP/1.1.
        if sock is None:
            raise OSError("zero-copy send on a connection that cannot do it")
        sent = await send_file(sock, event.file, event.offset, event.count, self._send_idle_seconds)
        if sent < event.count:
            # h11 framed ``count`` bytes: a short file leaves the response unfinishable.
            raise OSError(f"file ended after {sent} of {event.count} bytes")

    async def _read_data(self) -> None:
        self._reader = trio.lowlevel.current_task()
        await super()._read_data()

    async def _close(self) -> None:
        try:
            with suppress(*_SEND_FAILURES, AttributeError, NotImplementedError, TypeError):
                await self.stream.send_eof()
            if trio.lowlevel.current_task() is self._reader:
                # h11 refused the input (a 400) while the client may still be sending:
                # closing with unread input makes the kernel reset the connection, and
                # the client may lose our answer. Drain (briefly) first. An early answer
                # from the app is drained in core/web/connection.py instead.
                with anyio.move_on_after(LINGER_SECONDS):
                    with suppress(*_SEND_FAILURES, anyio.EndOfStream):
                        while await self.stream.receive(MAX_DRAIN_READ):
                            pass
        finally:
            # Cancelled (a shutdown deadline) or not, the socket is closed.
            with anyio.CancelScope(shield=True):
                await super()._close()


class HandshakeLoggingTLSListener(anyio.streams.tls.TLSListener):
    """anyio's TLS listener, logging a failed handshake as one line instead of a traceback:
    a plain-HTTP client or a port scanner on the TLS port is routine, not a server error."""

    @staticmethod
    async def handle_handshake_error(exc: BaseException, stream: anyio.abc.AnyByteStream) -> None:
        try:
            peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
        except Exception:  # the socket may be gone already
            peer = "?"
        await anyio.aclose_forcefully(stream)
        if isinstance(exc, anyio.get_cancelled_exc_class()) or not isinstance(exc, Exception):
            raise exc
        reason = getattr(exc, "reason", None) or type(exc).__name__
        log.info("TLS handshake with %s failed: %s", peer, reason)


async def serve_connections(
    app: AppWrapper,
    config: Config,
    sock: socket.socket,
    url: str,
    *,
    send_idle_timeout_seconds: float,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    tls: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening ``sock`` (reachable at ``url``) until
    ``shutdown_trigger`` returns; then stop accepting, close idle keep-alive connections
    and give in-flight requests ``config.graceful_timeout`` seconds.

    With ``tls`` each accepted connection does its handshake in its own task (bounded by
    ``HANDSHAKE_TIMEOUT_SECONDS``; a failed one is closed and logged as one line) before
    anycorn sees it; ALPN picks HTTP/2 or HTTP/1.1. anycorn sets no sendfile socket on a
    TLS stream, so the zero-copy extension is not offered there and bodies are streamed."""
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(app, config, lifespan_state)
    context = WorkerContext(None)

    async def handle(stream: Any) -> None:  # a SocketStream, or a TLSStream over one
        connection = GuardedTCPServer(
            app,
            config,
            context,
            ConnectionState(lifespan_state.copy()),
            stream,
            send_idle_seconds=send_idle_timeout_seconds,
        )
        await connection.run()

    async with config.log, anyio.create_task_group() as lifespan_group:
        await lifespan_group.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with anyio.create_task_group() as connections:
            listener: anyio.abc.Listener[Any] = await anyio.abc.SocketListener.from_socket(sock)
            if tls is not None:
                listener = HandshakeLoggingTLSListener(
                    listener,
                    tls,
                    standard_compatible=True,
                    handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS,
                )
            async with listener, anyio.create_task_group() as accepting:
                accepting.start_soon(listener.serve, handle, connections)
                task_status.started([url])
                if shutdown_trigger is None:
                    await trio.sleep_forever()
                else:
                    await shutdown_trigger()
                accepting.cancel_scope.cancel()
            # Idle keep-alive connections close at once; busy ones finish or are cut.
            await context.terminated.set()
            connections.cancel_scope.deadline = anyio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_group.cancel_scope.cancel()
