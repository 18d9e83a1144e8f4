"""Failed-credential rate limiting per client: a sliding window of failure times.

Per process, or, with ``redis_url`` configured, shared by every origin using that Redis
(``shared_failures.py``): a client guessing at several origins behind a load balancer meets
one limit. When Redis fails, each process falls back to its own limit (logged once per
outage); failures are always recorded locally too, so the fallback starts with history.

One :class:`CredentialFailures` per origin process is shared by every place that checks a
credential — ``/token``, Basic on ``/v2/``, ``/api/v1/`` — so guessing at one of them counts
at all of them: past the limit, a client's credentials are answered 429 ``TOOMANYREQUESTS``
with ``Retry-After`` (anonymous requests go on). The client is the peer's address, or, behind
trusted proxies (the edges), the address their ``X-Forwarded-For`` names.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from core.errors import TooManyRequests
from core.web.client_address import client_address, parse_networks
from origin.auth.shared_failures import RedisFailureLog, SharedLimitUnavailable

log = logging.getLogger(__name__)

_MAX_CLIENTS = 65_536  # bounded memory under an address-spraying attack


class FailureLimiter:
    def __init__(self, allowed: int, window_seconds: float) -> None:
        self._allowed = allowed
        self._window = window_seconds
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, now: float) -> float | None:
        """Seconds the client must wait before trying again, or None when it may try."""
        times = self._recent(client, now)
        if len(times) < self._allowed:
            return None
        return max(1.0, times[0] + self._window - now)

    def record_failure(self, client: str, now: float) -> None:
        times = self._recent(client, now)
        times.append(now)
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > _MAX_CLIENTS:
            self._failures.popitem(last=False)

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times


class CredentialFailures:
    """The failed-credential limit of one origin process, as its endpoints use it."""

    def __init__(
        self,
        allowed: int,
        window_seconds: float,
        *,
        trusted_proxies: str = "",
        clock: Callable[[], float] = time.time,
        shared: RedisFailureLog | None = None,
    ) -> None:
        self._limiter = FailureLimiter(allowed, window_seconds)
        self._allowed = allowed
        self._window = window_seconds
        self._trusted = parse_networks(trusted_proxies)
        self._clock = clock
        self._shared = shared
        self._degraded = False

    def client(self, remote_addr: str | None, forwarded_for: str | None) -> str:
        """Who is asking: the peer, or the client a trusted proxy names."""
        return client_address(remote_addr, forwarded_for, self._trusted)

    async def check(self, client: str) -> None:
        """429 with Retry-After when ``client`` has failed too often lately."""
        now = self._clock()
        retry = None
        if self._shared is not None:
            try:
                count, oldest = await self._shared.recent(client, now)
            except SharedLimitUnavailable as exc:
                self._fell_back(exc)
                retry = self._limiter.retry_after(client, now)
            else:
                self._recovered()
                if count >= self._allowed and oldest is not None:
                    retry = max(1.0, oldest + self._window - now)
        else:
            retry = self._limiter.retry_after(client, now)
        if retry is not None:
            raise TooManyRequests(
                "too many failed credentials", headers={"Retry-After": str(int(retry))}
            )

    async def failed(self, client: str) -> None:
        now = self._clock()
        self._limiter.record_failure(client, now)
        if self._shared is None:
            return
        try:
            await self._shared.record(client, now)
        except SharedLimitUnavailable as exc:
            self._fell_back(exc)

    def _fell_back(self, exc: Exception) -> None:
        if not self._degraded:
            log.warning("Redis unavailable (%s): failed credentials limited per process", exc)
        self._degraded = True

    def _recovered(self) -> None:
        if self._degraded:
            log.info("Redis answers again: failed credentials limited across origins")
        self._degraded = False
