"""Passing requests through to origin: uploads, manifest PUTs, deletes, tag lists, /token.

Bodies stream both ways without being buffered (a 1 GiB layer push through the edge holds
a chunk or two in memory). The client's ``Host`` and ``Authorization`` go along, so origin
resolves names and authorises exactly as if the client had come to it directly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import httpx

from core.errors import Unavailable
from core.web.response import RegistryResponse as Response

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
    }
)
_DROP_RESPONSE = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "date", "server", "content-length"}
)


def forward_headers(headers: Mapping[str, str], client_address: str | None) -> dict[str, str]:
    forwarded = {k: v for k, v in headers.items() if k.lower() not in _DROP_REQUEST}
    if client_address:
        previous = headers.get("X-Forwarded-For")
        forwarded["X-Forwarded-For"] = (
            f"{previous}, {client_address}" if previous else client_address
        )
    forwarded["Accept-Encoding"] = "identity"
    return forwarded


async def pass_through(
    client: httpx.AsyncClient,
    method: str,
    path_and_query: str,
    headers: dict[str, str],
    body: AsyncIterator[bytes] | None,
    content_length: int | None,
) -> Response:
    if content_length is not None:
        headers["Content-Length"] = str(content_length)
    request = client.build_request(method, path_and_query, headers=headers, content=body)
    try:
        upstream = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        log.warning("origin unreachable for %s %s: %s", method, path_and_query, exc)
        raise Unavailable("origin unavailable", headers={"Retry-After": "10"}) from exc
    response_headers = {
        k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE
    }
    length = upstream.headers.get("Content-Length")

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    if method == "HEAD":
        await upstream.aclose()
        response = Response(b"", status=upstream.status_code, headers=response_headers)
    else:
        response = Response(relay(), status=upstream.status_code, headers=response_headers)
    response.timeout = None
    if length is not None and length.isdigit():
        response.content_length = int(length)
    return response
