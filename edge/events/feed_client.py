"""Origin's event feed over HTTP, as the edge's follower reads it (``GET /api/v1/events``,
see ``origin/routes/events.py``), with the edge's own credential.

Its own connection (a long poll holds one for up to ``wait`` seconds; it must not take a
slot of the control plane's or the pulls' pools) and no part in the circuit breaker: a long
poll that waits is no failure, and the follower has its own backoff.

An httpx boundary: every failure leaves as :class:`core.errors.Unavailable`, a position the
log no longer holds as :class:`FeedGone`, anything origin answers unexpectedly (a refused
credential included) as ``Unavailable`` too.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from core.client.failures import transport_boundary
from core.client.http import open_http_client, x_token_auth
from core.errors import Unavailable

#: On top of the poll's wait: how long origin may take to answer it.
ANSWER_MARGIN_SECONDS = 15.0
MAX_FEED_BYTES = 16 * 1024 * 1024
_PATH = "/api/v1/events"


class FeedGone(Exception):
    """Origin's log no longer holds the position asked for: revalidate everything."""


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[dict[str, Any]]
    last: int


class FeedClient:
    def __init__(self, http: httpx.AsyncClient, edge_token: str) -> None:
        self._http = http
        self._auth = x_token_auth(edge_token)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, origin_url: str, edge_token: str, *, verify: ssl.SSLContext | bool = True
    ) -> AsyncIterator[FeedClient]:
        """``verify``: how an https origin's certificate is checked (the edge's
        ``--upstream-ca``, core/client/trust.py)."""
        async with open_http_client(
            origin_url, auth_header=None, max_connections=1, verify=verify
        ) as http:
            yield cls(http, edge_token)

    async def poll(self, after: int | None, wait: float) -> Batch:
        """Events after ``after`` (None: just the log's head), waiting up to ``wait``
        seconds at origin for one."""
        params: dict[str, str] = {"wait": f"{wait:g}"}
        if after is not None:
            params["after"] = str(after)
        timeout = httpx.Timeout(wait + ANSWER_MARGIN_SECONDS, connect=5.0)
        try:
            with (
                trio.fail_after(wait + 2 * ANSWER_MARGIN_SECONDS),
                transport_boundary("origin", _PATH),
            ):
                response = await self._http.get(
                    _PATH, params=params, headers={"Authorization": self._auth}, timeout=timeout
                )
                body = response.content[:MAX_FEED_BYTES]
        except trio.TooSlowError as exc:
            raise Unavailable("origin's event feed did not answer in time") from exc
        if response.status_code == 410:
            raise FeedGone()
        if response.status_code != 200:
            raise Unavailable("origin's event feed failed", detail={"status": response.status_code})
        return parse_batch(body)


def parse_batch(body: bytes) -> Batch:
    """A feed answer; ``Unavailable`` when it is not one (origin sent something else)."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise Unavailable("origin's event feed sent malformed JSON") from exc
    events = document.get("events") if isinstance(document, dict) else None
    last = document.get("last") if isinstance(document, dict) else None
    if not isinstance(events, list) or isinstance(last, bool) or not isinstance(last, int):
        raise Unavailable("origin's event feed sent no events and position")
    valid = [e for e in events if isinstance(e, dict) and isinstance(e.get("seq"), int)]
    return Batch(valid, last)
