"""The edge's follower of origin's event feed: a service of the edge's root nursery
(``edge/server.py``) that long-polls ``/api/v1/events`` from its last position and acts on
each event at once (:class:`~edge.events.actions.EventActions`).

- Its position and what it learned about credentials are saved after each batch
  (:mod:`edge.events.position`): a restarted edge resumes where it stopped and misses
  nothing. Without a saved position (first start), or when origin answers that its log no
  longer holds the position (410), it takes origin's head as its new position and
  revalidates everything it holds, then follows from that head.
- Origin unreachable, or answering anything unexpected: the edge keeps serving (the freshness
  windows are the backstop) and the follower retries with backoff, from 0.5 s doubling to
  30 s. It takes no part in the circuit breaker on origin: a long poll that waits is not a
  failure, and its own backoff keeps it from hammering a failing origin.

Counters for ``/metrics`` are on :class:`FollowerStats`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from core.errors import Unavailable
from edge.events.actions import EventActions
from edge.events.feed_client import Batch, FeedGone
from edge.events.position import Position, load_position, save_position
from edge.events.revocations import Revocations

log = logging.getLogger("depot.edge.events")

RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
#: How long the edge's start waits for origin's head (first start only).
FIRST_CONTACT_SECONDS = 2.0


class Feed(Protocol):
    """What the follower needs of origin (:class:`edge.events.feed_client.FeedClient`)."""

    async def poll(self, after: int | None, wait: float) -> Batch: ...


@dataclass
class FollowerStats:
    last: int = -1  # the position acted on (-1: none yet)
    applied: int = 0  # events acted on
    revalidations: int = 0  # times everything was revalidated
    failures: int = 0  # polls that failed
    lag_seconds: float = 0.0  # for the last event: acted on (edge clock) - appended (origin's)
    connected: bool = False  # the last poll was answered


class Follower:
    def __init__(
        self,
        feed: Feed,
        actions: EventActions,
        revocations: Revocations,
        state: Path,
        *,
        wait_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._feed = feed
        self._actions = actions
        self._revocations = revocations
        self._state = state
        self._wait = wait_seconds
        self._clock = clock
        self.stats = FollowerStats()
        self._last: int | None = None
        #: Set each time a batch was acted on (tests wait on it; replaced after each set).
        self.progressed = trio.Event()

    async def reached(self, position: int) -> None:
        """Return once this edge has acted on origin's log up to ``position``."""
        while self.stats.last < position:
            await self.progressed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        saved = await trio.to_thread.run_sync(load_position, self._state)
        self._revocations.restore(saved.revocations)
        self._last = saved.last
        if saved.last is not None:
            self.stats.last = saved.last
            log.info("following origin's events from %d", saved.last)
        # Catch up (or revalidate) before the edge serves, when origin answers promptly: no
        # stale answer is served for what origin already said, and what the first requests
        # cache is not distrusted a moment later.
        with trio.move_on_after(FIRST_CONTACT_SECONDS):
            try:
                await self._catch_up()
            except Unavailable as exc:
                log.info("origin's event feed not reached at start: %s", exc.message)
        task_status.started()
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                await self._step()
            except FeedGone:
                log.warning("origin's event log no longer holds position %s", self._last)
                self._last = None  # start over: revalidate everything
                continue
            except Unavailable as exc:
                self.stats.failures += 1
                self.stats.connected = False
                log.warning("origin's event feed: %s; retrying in %.1f s", exc.message, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = RETRY_MIN_SECONDS

    async def _catch_up(self) -> None:
        """Act on what the log holds now, without waiting for more."""
        while True:
            try:
                if await self._step(wait=0) == 0:
                    return
            except FeedGone:
                self._last = None

    async def _step(self, wait: float | None = None) -> int:
        """One poll (``wait``: the follower's own unless given), acted on: how many
        events it brought."""
        if self._last is None:
            head = await self._feed.poll(None, 0)
            self.stats.connected = True
            # Everything changed up to the head may have been missed: distrust it all, then
            # follow from the head (what changes after it arrives as events).
            await self._actions.revalidate_all()
            self.stats.revalidations += 1
            await self._advance(head.last)
            return 0
        batch = await self._feed.poll(self._last, self._wait if wait is None else wait)
        self.stats.connected = True
        for event in batch.events:
            if await self._actions.apply(event):
                self.stats.applied += 1
            at = event.get("at")
            if isinstance(at, int | float):
                self.stats.lag_seconds = max(0.0, self._clock() - float(at))
        if batch.events or batch.last != self._last:
            await self._advance(batch.last)
        return len(batch.events)

    async def _advance(self, last: int) -> None:
        self._last = last
        self.stats.last = last
        self._revocations.expire(self._clock())
        await save_position(self._state, Position(last, self._revocations.snapshot()))
        self.progressed.set()
        self.progressed = trio.Event()
