"""httpx clients for registry-to-registry traffic (edge → origin, relay → targets).

Every client made here: no proxy or netrc from the environment (``trust_env=False``), HTTP/1.1
only (HTTP/2 was 3-5x slower for bulk data and failed in-flight requests on GOAWAY),
``Accept-Encoding: identity`` (a hop that gzips would make ``aiter_raw()`` return compressed
bytes), a pool of ``max_connections`` per host, and per-operation timeouts: 5 s to connect,
30 s per read or write. Those bound one socket operation, never a whole transfer: callers bound
the total with ``trio.fail_after``.

Socket reads are 1 MiB, not httpcore's 64 KiB (measured: a download went from 534 to 994
MB/s). The read size is the private class attribute
``httpcore.AsyncHTTP11Connection.READ_NUM_BYTES``; it is raised once, for the whole process,
when this module is imported (every httpx client in the process then reads 1 MiB at a time,
which only changes how much one ``recv`` may return). ``pyproject.toml`` pins httpcore to the
range this was checked against, and ``tests/unit/test_http_client.py`` fails if the attribute
is renamed or no longer read.
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import httpcore
import httpx

from core.errors import Unavailable

log = logging.getLogger("depot.client")

#: Bytes httpcore asks the socket for per read.
READ_NUM_BYTES = 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 5.0
#: Per read (and per write, and per wait for a pooled connection): not a transfer bound.
IO_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_CONNECTIONS = 16
USER_AGENT = "depot-registry"
#: Methods retried once on a transport error: they change nothing on the server.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD"})


def _raise_read_size() -> None:
    current = getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", None)
    if not isinstance(current, int):
        raise RuntimeError(
            "httpcore.AsyncHTTP11Connection.READ_NUM_BYTES is gone: this httpcore is outside "
            "the range core/client/http.py was checked against"
        )
    if current < READ_NUM_BYTES:
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = READ_NUM_BYTES


_raise_read_size()


def x_token_auth(token: str) -> str:
    """``Authorization`` value for a registry token: Basic ``x-token:<token>``."""
    raw = base64.b64encode(f"x-token:{token}".encode()).decode("ascii")
    return f"Basic {raw}"


def open_http_client(
    base_url: str,
    *,
    auth_header: str | None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """A client for ``base_url`` sending ``auth_header`` (when given) as ``Authorization``.

    The caller closes it (``async with`` or ``aclose()``). ``transport`` replaces the network
    (e.g. ``httpx.MockTransport`` in tests); ``max_connections`` then does not apply.
    ``verify``: how an https server's certificate is checked (core/client/trust.py makes
    a context for a private CA); True is httpx's default bundle.
    """
    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    if auth_header is not None:
        headers["Authorization"] = auth_header
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(IO_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        http1=True,
        http2=False,
        trust_env=False,
        follow_redirects=False,
        transport=transport,
        verify=verify,
    )


async def send_with_retry(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    stream: bool = False,
    follow_redirects: bool = False,
) -> httpx.Response:
    """Send ``request``; a GET or HEAD that fails with ``httpx.TransportError`` (a stale
    keep-alive connection, a reset, a timeout) is sent once more. Other methods, and a second
    failure, raise. HTTP error statuses are answers, not failures: never retried here."""
    attempts = 2 if request.method.upper() in IDEMPOTENT_METHODS else 1
    for attempt in range(1, attempts + 1):
        try:
            return await client.send(request, stream=stream, follow_redirects=follow_redirects)
        except httpx.TransportError as exc:
            if attempt == attempts:
                raise
            log.debug(
                "retrying %s %s after %s", request.method, request.url.path, type(exc).__name__
            )
    raise AssertionError("unreachable")


async def request_with_retry(
    client: httpx.AsyncClient, method: str, url: str, *, stream: bool = False, **kwargs: Any
) -> httpx.Response:
    """``client.request`` with :func:`send_with_retry`'s one retry of idempotent methods.

    ``kwargs`` go to ``client.build_request`` (``params``, ``headers``, ``content``...). With
    ``stream=True`` the body is not read: the caller closes the response.
    """
    request = client.build_request(method.upper(), url, **kwargs)
    return await send_with_retry(client, request, stream=stream)


def closing_generator(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """httpx's body iterators are async generators (typed as iterators): close them
    explicitly with ``aclosing``, or an early exit leaves them unfinalised (ResourceWarning)."""
    assert isinstance(chunks, AsyncGenerator)
    return chunks


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The (decoded) body of a streamed response; ``Unavailable`` past ``limit`` bytes.

    httpx exceptions pass through: the caller reads inside its transport boundary.
    """
    parts: list[bytes] = []
    total = 0
    async with aclosing(closing_generator(response.aiter_bytes())) as chunks:
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                host = response.request.url.netloc.decode("ascii", "replace")
                raise Unavailable(f"{host} sent an answer larger than {limit} bytes")
            parts.append(chunk)
    return b"".join(parts)
