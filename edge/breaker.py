"""A circuit breaker for one upstream: after a few consecutive failures, stop asking it for a
short, growing interval.

Without it, a hung origin makes every request that needs it wait its full deadline (10 s for
a stale tag that could have been served at once, 30 s for ``tags/list`` and ``/token``). With
it, the edge learns from the first few failures: while the circuit is open, callers do not ask
(they serve stale, answer from memory, or fail fast with ``Retry-After``); when the interval
has passed, exactly one caller is let through as a probe (in the background where something
stale could be served meanwhile); its success closes the circuit, its failure opens it again
for twice as long, up to a ceiling.

A pure state machine: no I/O, time from ``clock`` (trio's clock by default, so tests drive it
with ``MockClock``). Callers say what happened with :meth:`succeeded` and :meth:`failed`;
only failures that mean "the upstream is not answering" count (timeouts, refused connections,
5xx, 429) — a 404 is an answer.

States::

    CLOSED --(threshold consecutive failures)--> OPEN --(interval passed, one caller)--> PROBING
    PROBING --(success)--> CLOSED      PROBING --(failure)--> OPEN (interval doubled)
    PROBING --(no answer within the ceiling)--> another caller may probe
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from core.errors import Unavailable

FAILURE_THRESHOLD = 3
BASE_INTERVAL_SECONDS = 1.0
MAX_INTERVAL_SECONDS = 30.0


class CircuitOpen(Unavailable):
    """503: the circuit is open, so the upstream was not asked (``Retry-After``: until the
    next probe may go)."""


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    PROBING = "probing"


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = FAILURE_THRESHOLD,
        base_interval_seconds: float = BASE_INTERVAL_SECONDS,
        max_interval_seconds: float = MAX_INTERVAL_SECONDS,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if threshold < 1 or base_interval_seconds <= 0 or max_interval_seconds <= 0:
            raise ValueError("a breaker needs a positive threshold and intervals")
        self._threshold = threshold
        self._base = base_interval_seconds
        self._max = max(max_interval_seconds, base_interval_seconds)
        self._clock = clock
        self._failures = 0  # consecutive, while closed
        self._interval = 0.0  # of the current (or last) opening
        self._retry_at = -math.inf  # open: when the next probe may go
        self._probe_since: float | None = None  # probing: when the probe was let through
        self.openings = 0  # how many times the circuit opened (for metrics and tests)

    @property
    def state(self) -> State:
        if self._probe_since is not None:
            return State.PROBING
        return State.OPEN if self._interval else State.CLOSED

    def allow(self) -> bool:
        """May the caller ask the upstream now? While open, False until the interval has
        passed; then True for one caller, the probe (it must report how it went)."""
        state = self.state
        if state is State.CLOSED:
            return True
        now = self._clock()
        if state is State.PROBING:
            assert self._probe_since is not None
            if now - self._probe_since < self._max:
                return False  # a probe is out; a lost one is replaced after the ceiling
        elif now < self._retry_at:
            return False
        self._probe_since = now
        return True

    def retry_after(self) -> int:
        """Whole seconds (at least 1) a client could wait before the upstream is asked."""
        return max(1, math.ceil(self._retry_at - self._clock()))

    def succeeded(self) -> None:
        self._failures = 0
        self._interval = 0.0
        self._retry_at = -math.inf
        self._probe_since = None

    def failed(self) -> None:
        state = self.state
        if state is State.CLOSED:
            self._failures += 1
            if self._failures < self._threshold:
                return
            self._open(self._base)
        elif state is State.PROBING:
            self._open(min(self._interval * 2, self._max))
        # Open: a request that started before the circuit opened; nothing new learned.

    def abandon(self) -> None:
        """A caller let through gave up without an answer (cancelled): if it was the probe,
        the next caller may probe at once."""
        if self.state is State.PROBING:
            self._probe_since = None
            self._retry_at = self._clock()

    def unavailable(self) -> CircuitOpen:
        """What a caller refused by the open circuit answers."""
        return CircuitOpen(
            "origin is not answering; not asking again yet",
            headers={"Retry-After": str(self.retry_after())},
        )

    @contextmanager
    def record(self, failures: tuple[type[BaseException], ...]) -> Iterator[None]:
        """Record how the block's request to the upstream went: an exception in
        ``failures`` is a failure; leaving normally, or with any other exception (an answer
        such as a 404), a success; a cancellation is no answer (:meth:`abandon`)."""
        try:
            yield
        except failures:
            self.failed()
            raise
        except Exception:
            self.succeeded()
            raise
        except BaseException:
            self.abandon()
            raise
        self.succeeded()

    @contextmanager
    def attempt(self, failures: tuple[type[BaseException], ...]) -> Iterator[None]:
        """:meth:`record` for a caller that has nothing else to offer: refused at once
        (:meth:`unavailable`) while the circuit is open."""
        if not self.allow():
            raise self.unavailable()
        with self.record(failures):
            yield

    def _open(self, interval: float) -> None:
        self._failures = 0
        self._interval = interval
        self._retry_at = self._clock() + interval
        self._probe_since = None
        self.openings += 1
