"""Failed-credential rate limiting per client: a sliding window of failure times.

In-process; edges and origins of a region share the limit through Redis later (the
interface stays: ``retry_after`` before trying, ``record_failure`` after failing).

One :class:`CredentialFailures` per origin process is shared by every place that checks a
credential — ``/token``, Basic on ``/v2/``, ``/api/v1/`` — so guessing at one of them counts
at all of them: past the limit, a client's credentials are answered 429 ``TOOMANYREQUESTS``
with ``Retry-After`` (anonymous requests go on). The client is the peer's address, or, behind
trusted proxies (the edges), the address their ``X-Forwarded-For`` names.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from core.errors import TooManyRequests
from core.web.client_address import client_address, parse_networks

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
    ) -> None:
        self._limiter = FailureLimiter(allowed, window_seconds)
        self._trusted = parse_networks(trusted_proxies)
        self._clock = clock

    def client(self, remote_addr: str | None, forwarded_for: str | None) -> str:
        """Who is asking: the peer, or the client a trusted proxy names."""
        return client_address(remote_addr, forwarded_for, self._trusted)

    def check(self, client: str) -> None:
        """429 with Retry-After when ``client`` has failed too often lately."""
        retry = self._limiter.retry_after(client, self._clock())
        if retry is not None:
            raise TooManyRequests(
                "too many failed credentials", headers={"Retry-After": str(int(retry))}
            )

    def failed(self, client: str) -> None:
        self._limiter.record_failure(client, self._clock())
