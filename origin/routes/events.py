"""``GET /api/v1/events?after=<seq>&wait=<seconds>``: origin's event feed, for edges.

A long poll (see :class:`origin.events.feed.EventFeed`): ``{"events": [{"seq", "kind",
"at", ...}], "last": <seq>}``, answered as soon as an event after ``after`` exists or when
``wait`` seconds (at most 60; default 0) have passed with none. Without ``after``: no events
and the log's head, where a new follower starts. ``after`` older than the log keeps, or
newer than it has: 410 ``GONE`` (the follower revalidates everything it holds).

Only an edge's credential reads it (:class:`core.auth.access.EventFeed`): Basic
``x-token:<dpe_…>`` or Bearer with that token; anything else 401/403. A malformed ``after``
or ``wait`` is 400 ``INVALID_REQUEST``.

The failed-credential limit counts wrong credentials here as everywhere (429 past it), but a
valid one is served even from an address over its limit: an edge's address is where every
login it forwards comes from (unless origin trusts it as a proxy), and its feed must not go
dark because clients behind it mistyped their tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from quart import Quart, request

from core.auth.access import READ, EventFeed, decide
from core.auth.credentials import parse_authorization
from core.auth.principal import Principal
from core.errors import BadRequest, Denied
from core.web.response import RegistryResponse as Response
from origin.auth import management
from origin.auth.ratelimit import CredentialFailures
from origin.auth.store import TenancyStore
from origin.events.feed import EventFeed as Feed
from origin.routes.api import ManagementApi

#: Sequence numbers are 64-bit on PostgreSQL.
MAX_SEQ = 2**63 - 1


def install_event_routes(
    app: Quart,
    tenancy: TenancyStore,
    feed: Feed,
    clock: Callable[[], float],
    *,
    failures: CredentialFailures | None = None,
) -> None:
    api = _EventsApi(tenancy, feed, clock, failures)
    app.add_url_rule("/api/v1/events", "api_events", api.events, methods=["GET"])


class _EventsApi(ManagementApi):
    def __init__(
        self,
        tenancy: TenancyStore,
        feed: Feed,
        clock: Callable[[], float],
        failures: CredentialFailures | None,
    ) -> None:
        super().__init__(tenancy, clock, allow_insecure_loopback=False, failures=failures)
        self._feed = feed

    async def events(self) -> Response:
        principal = await self._valid_first()
        if READ not in decide(principal, {READ}, EventFeed()).granted:
            raise Denied("only an edge's credential reads the event feed")
        after = parse_after(request.args.get("after"))
        wait = parse_wait(request.args.get("wait"))
        found, last = await self._feed.poll(after, wait)
        document = {"events": [event.document() for event in found], "last": last}
        response = Response(json.dumps(document), content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _valid_first(self) -> Principal:
        credentials = parse_authorization(request.headers.get("Authorization"))
        principal = None
        if credentials is not None and credentials.scheme in ("bearer", "basic"):
            if credentials.secret:
                principal = await self._tenancy.authenticate(credentials.secret, self._clock())
        if principal is None and credentials is not None and self._failures is not None:
            client = self._failures.client(
                request.remote_addr, request.headers.get("X-Forwarded-For")
            )
            await self._failures.failed(client)
            await self._failures.check(client)
        return management.require_principal(principal)


def parse_after(text: str | None) -> int | None:
    """``after``: absent, or a decimal sequence number (0 before the first event)."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_SEQ:
        raise BadRequest("after is a sequence number", detail={"after": text[:40]})
    return int(text)


def parse_wait(text: str | None) -> float:
    """``wait``: seconds, 0 to 60 (absent: 0)."""
    if text is None:
        return 0.0
    try:
        seconds = float(text) if len(text) <= 20 else math.nan
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 <= seconds <= 60:
        raise BadRequest("wait is a number of seconds from 0 to 60", detail={"wait": text[:40]})
    return seconds
