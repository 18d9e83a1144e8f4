"""Passing requests through to origin: uploads, manifest PUTs, deletes, tag lists, /token.

Bodies stream both ways without being buffered (a 1 GiB layer push through the edge holds
a chunk or two in memory). The client's ``Host`` and ``Authorization`` go along, so origin
resolves names and authorises exactly as if the client had come to it directly; the path
goes as the client wrote it (still percent-encoded: ``%00`` is origin's to refuse) and header
values as the bytes that arrived (hypercorn decodes them as latin-1; httpx would encode them
as ASCII and fail on the first byte over 127).

Every request here holds a connection to origin for as long as it runs, and a client
controls how long that is (an upload whose body never comes). So the pass-through has
bounds of its own, none of which a write can take from a read:

- reads (GET/HEAD: ``/token``, tag lists, the catalog, referrers) and writes (everything
  else) have separate connection pools and separate limits of requests in flight;
- each client (by address) may have only so many of each in flight;

past a bound the answer is 429 ``TOOMANYREQUESTS`` with ``Retry-After`` (after a short wait
for a slot when only the total is reached). A read waits at most the upstream deadline for
origin's answer, and reads tell the circuit breaker how origin is doing; while the circuit
is open they are answered at once (``/token`` from memory when it can be: see
:mod:`edge.token_memory`).

One read is different: a long poll of origin's event feed (``GET /api/v1/events?wait=S``,
an edge below this one following the feed through it). It waits at origin by design, so its
deadline is the read deadline plus its ``wait``, and it has no part in the circuit breaker
(as the edge's own feed client has none): a poll that origin answers late is no sign that
origin is down, and three of them must not open the circuit for every pull of a shield.
A shield that follows the feed itself passes an answer on only once it has acted on it
(``feed_barrier``, up to :data:`FEED_BARRIER_SECONDS`): an edge below that dropped a moved
tag or a deleted manifest and asked its shield again before the shield had acted would be
answered from the shield's stale copy and keep it for its whole freshness window.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TypeGuard

import httpx
import trio
from quart import Request

from core.client.http import open_http_client
from core.errors import BadRequest, TooLarge, Unavailable
from core.web.client_address import Network, client_address, parse_networks
from core.web.response import RegistryResponse as Response
from edge.breaker import CircuitBreaker
from edge.lanes import Lane, Slot
from edge.token_memory import TokenMemory, question_key

log = logging.getLogger("depot.edge")

# Hop-by-hop and framing headers are the two connections' own business.
_DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "content-length",
        "accept-encoding",
        "remote-addr",
        "x-forwarded-for",
    }
)
_DROP_RESPONSE = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "date", "server", "content-length"}
)
READ_METHODS = frozenset({"GET", "HEAD"})
#: Origin answers meaning "not now" rather than "no": they count against the circuit, and
#: ``/token`` is then answered from memory.
UNREACHABLE_STATUSES = frozenset({502, 503, 504})
#: Origin's event feed: long polls, see the module's docstring.
FEED_PATH = "/api/v1/events"
#: The longest wait a feed poll is given on top of the read deadline (origin caps it so too).
FEED_MAX_WAIT_SECONDS = 60.0
#: The longest a feed answer waits for this edge's own follower to have acted on it (when
#: the follower cannot keep up, the edges below act anyway: the freshness windows remain).
FEED_BARRIER_SECONDS = 5.0
#: A ``/token`` form body (OAuth2 password grant) is read whole, up to this.
MAX_TOKEN_FORM_BYTES = 64 * 1024
#: A ``/token`` answer is read whole (to remember it), up to this.
MAX_TOKEN_ANSWER_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    reads: int = 128  # reads in flight to origin, all clients
    writes: int = 128  # writes in flight to origin, all clients
    per_client: int = 32  # reads (and, separately, writes) in flight per client
    queue_seconds: float = 2.0  # wait for a slot when only the total is reached
    read_deadline_seconds: float = 10.0  # origin's answer (headers) to a read
    retry_after_seconds: int = 10  # on 503 when origin cannot be reached


def forward_headers(
    headers: Iterable[tuple[str, str]], client_address: str | None
) -> list[tuple[bytes, bytes]]:
    """The client's end-to-end headers as the bytes that arrived, plus ``X-Forwarded-For``
    with the client's address appended."""
    forwarded: list[tuple[bytes, bytes]] = []
    previous: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "x-forwarded-for":
            previous.append(value)
        elif lower not in _DROP_REQUEST:
            forwarded.append((name.encode("latin-1"), value.encode("latin-1")))
    hops = [*previous, client_address] if client_address else previous
    if hops:
        forwarded.append((b"X-Forwarded-For", ", ".join(hops).encode("latin-1")))
    forwarded.append((b"Accept-Encoding", b"identity"))
    return forwarded


class _Relay:
    """Origin's response body for the client. Closing it closes origin's response and frees
    the request's slot; so does losing it (a response Quart never sent, because the client
    left first, is never iterated nor closed)."""

    def __init__(self, upstream: httpx.Response, slot: Slot) -> None:
        self._chunks = upstream.aiter_raw()
        self._upstream = upstream
        token = trio.lowlevel.current_trio_token()
        self._abandoned = weakref.finalize(self, _abandon, upstream, slot, token)
        self._abandoned.atexit = False
        self._slot = slot

    def __aiter__(self) -> _Relay:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        if not self._abandoned.detach():
            return
        try:
            with trio.CancelScope(shield=True):
                await self._upstream.aclose()
        finally:
            self._slot.release()


async def _relayed(relay: _Relay) -> AsyncGenerator[bytes, None]:
    """``relay`` as the async generator quart-trio wants (a generator never started runs no
    ``finally``: then the relay's own finalizer frees what it holds)."""
    try:
        async for chunk in relay:
            yield chunk
    finally:
        await relay.aclose()


def _abandon(upstream: httpx.Response, slot: Slot, token: trio.lowlevel.TrioToken) -> None:
    slot.release()
    try:
        token.run_sync_soon(trio.lowlevel.spawn_system_task, _close_quietly, upstream)
    except trio.RunFinishedError:
        pass


async def _close_quietly(upstream: httpx.Response) -> None:
    try:
        await upstream.aclose()
    except Exception:  # a system task must not fail: that would end the process
        log.debug("closing an abandoned pass-through response failed", exc_info=True)


class PassThrough:
    def __init__(
        self,
        reads: httpx.AsyncClient,
        writes: httpx.AsyncClient,
        *,
        limits: Limits,
        breaker: CircuitBreaker,
        memory: TokenMemory | None = None,
        trusted_proxies: tuple[Network, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``reads`` and ``writes`` are clients of origin with pools of their own (sized to
        the limits: see :meth:`open`); ``clock`` gives POSIX seconds (token lifetimes)."""
        self._reads, self._writes = reads, writes
        self._limits = limits
        self._breaker = breaker
        self._memory = memory if memory is not None else TokenMemory()
        self._trusted = trusted_proxies
        self._clock = clock
        self._read_lane = Lane("reads", limits.reads, limits.per_client)
        self._write_lane = Lane("writes", limits.writes, limits.per_client)
        #: Returns once this edge's own follower has acted on the log up to a position (set
        #: by the server when the edge follows origin's feed; see the module's docstring).
        self.feed_barrier: Callable[[int], Awaitable[None]] | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        origin_url: str,
        *,
        limits: Limits,
        breaker: CircuitBreaker,
        trusted_proxies: str = "",
        clock: Callable[[], float] = time.time,
        verify: ssl.SSLContext | bool = True,
    ) -> AsyncIterator[PassThrough]:
        async with AsyncExitStack() as stack:
            reads = await stack.enter_async_context(
                open_http_client(
                    origin_url, auth_header=None, max_connections=limits.reads, verify=verify
                )
            )
            writes = await stack.enter_async_context(
                open_http_client(
                    origin_url, auth_header=None, max_connections=limits.writes, verify=verify
                )
            )
            yield cls(
                reads,
                writes,
                limits=limits,
                breaker=breaker,
                trusted_proxies=parse_networks(trusted_proxies),
                clock=clock,
            )

    @property
    def memory(self) -> TokenMemory:
        """The remembered ``/token`` answers (the event follower makes it forget)."""
        return self._memory

    def client_of(self, request: Request) -> str:
        """The client's address (behind trusted proxies: the one they name)."""
        return client_address(
            request.remote_addr, request.headers.get("X-Forwarded-For"), self._trusted
        )

    def in_flight(self, client: str) -> tuple[int, int]:
        """Reads and writes ``client`` has in flight (for tests and metrics)."""
        return self._read_lane.in_flight(client), self._write_lane.in_flight(client)

    async def forward(self, request: Request) -> Response:
        """Pass ``request`` to origin; origin's answer, its body streamed."""
        method = request.method.upper()
        has_body = method in ("POST", "PUT", "PATCH")
        body = request.body if has_body else None
        length = request.content_length if has_body else None
        return await self._send(request, body, length)

    async def token(self, request: Request) -> Response:
        """``/token``: forwarded; a success is remembered and, while origin cannot be
        reached, the same question is answered from memory (else 503 with Retry-After)."""
        form = b""
        if request.method.upper() == "POST":
            form = await _read_form(request)
        key = question_key(
            request.method,
            request.headers.get("Authorization"),
            request.host,
            request.args.items(multi=True),
            form,
        )
        try:
            response = await self._send(request, form, len(form) if form else None, whole=True)
        except Unavailable:
            remembered = self._memory.recall(key, self._clock())
            if remembered is None:
                raise
            log.info("origin unreachable: /token answered from memory")
            return Response(remembered, content_type="application/json")
        if response.status_code in UNREACHABLE_STATUSES:
            remembered = self._memory.recall(key, self._clock())
            if remembered is not None:
                log.info("origin answered %d: /token answered from memory", response.status_code)
                return Response(remembered, content_type="application/json")
        elif response.status_code == 200:
            self._memory.remember(key, await response.get_data(as_text=False), self._clock())
        return response

    async def _send(
        self,
        request: Request,
        body: AsyncIterator[bytes] | bytes | None,
        content_length: int | None,
        *,
        whole: bool = False,
    ) -> Response:
        method = request.method.upper()
        read = method in READ_METHODS or whole
        client = self.client_of(request)
        headers = forward_headers(request.headers.items(), request.remote_addr)
        if content_length is not None:
            headers.append((b"Content-Length", str(content_length).encode()))
        try:
            outgoing = (self._reads if read else self._writes).build_request(
                method, _raw_target(request), headers=headers, content=body
            )
        except httpx.InvalidURL as exc:
            raise BadRequest("invalid request target") from exc
        lane = self._read_lane if read else self._write_lane
        slot = await lane.take(client, self._limits.queue_seconds)
        feed = read and request.path == FEED_PATH
        try:
            if feed:
                upstream = await self._long_poll(outgoing, feed_wait(request.args.get("wait")))
            else:
                if read and not self._breaker.allow():
                    raise self._breaker.unavailable()
                upstream = await self._exchange(outgoing, read)
        except BaseException:
            slot.release()
            raise
        if feed and method == "GET":
            return await self._relay_feed(upstream, slot)
        return await _respond(method, upstream, slot, whole)

    async def _relay_feed(self, upstream: httpx.Response, slot: Slot) -> Response:
        """A feed answer, read whole and passed on once this edge acted on it."""
        response = await _respond("GET", upstream, slot, True)
        if upstream.status_code != 200 or self.feed_barrier is None:
            return response
        last = feed_last(await response.get_data(as_text=False))
        if last is not None:
            with trio.move_on_after(FEED_BARRIER_SECONDS) as waited:
                await self.feed_barrier(last)
            if waited.cancelled_caught:
                log.info("feed answer up to %d passed on before this edge acted on it", last)
        return response

    async def _exchange(self, outgoing: httpx.Request, read: bool) -> httpx.Response:
        """Send; a read waits at most the read deadline and tells the breaker how it went."""
        client = self._reads if read else self._writes
        try:
            if not read:
                return await client.send(outgoing, stream=True)
            with trio.fail_after(self._limits.read_deadline_seconds):
                upstream = await client.send(outgoing, stream=True)
        except (trio.TooSlowError, httpx.HTTPError) as exc:
            if read:
                self._breaker.failed()
            log.warning("origin unreachable for %s %s: %r", outgoing.method, outgoing.url.path, exc)
            retry = str(self._limits.retry_after_seconds)
            raise Unavailable("origin unavailable", headers={"Retry-After": retry}) from exc
        except BaseException:
            if read:
                self._breaker.abandon()
            raise
        if upstream.status_code in UNREACHABLE_STATUSES:
            self._breaker.failed()
        else:
            self._breaker.succeeded()
        return upstream

    async def _long_poll(self, outgoing: httpx.Request, wait: float) -> httpx.Response:
        """Send a feed poll: the read deadline plus its wait, and never the breaker's."""
        try:
            with trio.fail_after(self._limits.read_deadline_seconds + wait):
                return await self._reads.send(outgoing, stream=True)
        except (trio.TooSlowError, httpx.HTTPError) as exc:
            log.warning("origin's event feed unreachable: %r", exc)
            retry = str(self._limits.retry_after_seconds)
            raise Unavailable("origin unavailable", headers={"Retry-After": retry}) from exc


def feed_last(body: bytes) -> int | None:
    """The position a feed answer brings its reader to (``last``), or None."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    last = document.get("last") if isinstance(document, dict) else None
    return last if isinstance(last, int) and not isinstance(last, bool) else None


def feed_wait(value: str | None) -> float:
    """A feed poll's ``wait`` argument as seconds within [0, FEED_MAX_WAIT_SECONDS] (what
    is not a number waits 0: origin refuses or answers it at once)."""
    try:
        wait = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    if wait != wait:  # NaN
        return 0.0
    return min(max(wait, 0.0), FEED_MAX_WAIT_SECONDS)


async def _respond(method: str, upstream: httpx.Response, slot: Slot, whole: bool) -> Response:
    """Origin's answer for the client; the body relayed (or, with ``whole``, read first)."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
    length = upstream.headers.get("Content-Length")
    if method == "HEAD" or whole:
        try:
            content = b"" if method == "HEAD" else await _read_whole(upstream)
        finally:
            try:
                with trio.CancelScope(shield=True):
                    await upstream.aclose()
            finally:
                slot.release()
        response = Response(content, status=upstream.status_code, headers=headers)
        if method == "HEAD" and _is_length(length):
            response.content_length = int(length)
        return response
    response = Response(
        _relayed(_Relay(upstream, slot)), status=upstream.status_code, headers=headers
    )
    response.timeout = None
    if _is_length(length):
        response.content_length = int(length)
    return response


def _is_length(text: str | None) -> TypeGuard[str]:
    return text is not None and text.isascii() and text.isdigit() and len(text) <= 19


async def _read_whole(upstream: httpx.Response) -> bytes:
    parts, total = [], 0
    try:
        async for chunk in upstream.aiter_raw():
            total += len(chunk)
            if total > MAX_TOKEN_ANSWER_BYTES:
                raise Unavailable("origin's answer is too large")
            parts.append(chunk)
    except httpx.HTTPError as exc:
        raise Unavailable("origin's answer was cut short") from exc
    return b"".join(parts)


async def _read_form(request: Request) -> bytes:
    parts, total = [], 0
    async for chunk in request.body:
        total += len(chunk)
        if total > MAX_TOKEN_FORM_BYTES:
            raise TooLarge(f"a token request body is at most {MAX_TOKEN_FORM_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _raw_target(request: Request) -> str:
    """The path (still percent-encoded) and query, as the client sent them."""
    raw_path = request.scope.get("raw_path") or request.path.encode("utf-8")
    target = bytes(raw_path).decode("latin-1")
    query = bytes(request.scope.get("query_string") or b"").decode("latin-1")
    return f"{target}?{query}" if query else target
