"""Failed-credential rate limiting per client: a sliding window of failure times.

In-process; edges and origins of a region share the limit through Redis later (the
interface stays: ``retry_after`` before trying, ``record_failure`` after failing).
"""

from __future__ import annotations

from collections import OrderedDict, deque

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
