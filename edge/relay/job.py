"""One relay job's state: its event log, who follows it, and how it ends.

Events are JSON objects numbered from 0 (``seq``) in the order they happened; every follower
reads the same log (the request that created the job, or one that reattached after a dropped
connection), from any point still kept. The log keeps the last :data:`KEPT_EVENTS` events:
progress events of a long job must not grow it without bound.

A job knows how many followers it has: when the last one leaves before the job ended, the
service's watchdog gives it a grace period to come back, then cancels the job.

The target credentials are not here: they live in the running job's task only.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Any

import trio

KEPT_EVENTS = 4096
#: How a job ended: the last event's ``event`` field.
DONE, FAILED, CANCELLED = "done", "error", "cancelled"
Event = dict[str, Any]


class RelayJob:
    def __init__(self, job_id: str, owner: str) -> None:
        """``owner``: a fingerprint of the credential that created the job; only the same
        credential may follow or cancel it."""
        self.id = job_id
        self.owner = owner
        self.outcome: str | None = None  # DONE, FAILED or CANCELLED once ended
        self.ended_at: float | None = None  # trio's clock
        self.cancel_reason: str | None = None
        self._log: collections.deque[Event] = collections.deque(maxlen=KEPT_EVENTS)
        self._next_seq = 0
        self._changed = trio.Event()
        self._followers = 0
        self._followers_changed = trio.Event()
        self._scope = trio.CancelScope()

    @property
    def scope(self) -> trio.CancelScope:
        """The job's work runs inside this scope; cancelling it cancels the job."""
        return self._scope

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    @property
    def followers(self) -> int:
        return self._followers

    def emit(self, kind: str, **fields: Any) -> None:
        if self.ended:
            return  # nothing follows the final event
        self._log.append({"seq": self._next_seq, "event": kind, **fields})
        self._next_seq += 1
        self._changed.set()
        self._changed = trio.Event()

    def end(self, outcome: str, **fields: Any) -> None:
        """Emit the final event (``outcome`` is its kind); later events are dropped."""
        if self.ended:
            return
        self.emit(outcome, **fields)
        self.outcome = outcome
        self.ended_at = trio.current_time()
        self._signal_followers()  # the watchdog stops

    def cancel(self, reason: str) -> None:
        if not self.ended and self.cancel_reason is None:
            self.cancel_reason = reason
            self._scope.cancel()

    # -- followers ---------------------------------------------------------------------------

    async def follow(self, after: int, heartbeat_seconds: float) -> AsyncIterator[Event | None]:
        """Events numbered above ``after`` as they come, until the final one; None after
        ``heartbeat_seconds`` without any (a client may send something on the connection)."""
        self._followers += 1
        self._signal_followers()
        try:
            following = after + 1
            while True:
                # Taken before reading the log: events emitted while a yield below is
                # suspended set this one, so none is missed.
                changed = self._changed
                for event in list(self._log):
                    if event["seq"] >= following:
                        following = event["seq"] + 1
                        yield event
                if self.ended and following >= self._next_seq:
                    return
                with trio.move_on_after(heartbeat_seconds) as idle:
                    await changed.wait()
                if idle.cancelled_caught:
                    yield None
        finally:
            self._followers -= 1
            self._signal_followers()

    async def wait_followers_changed(self) -> None:
        await self._followers_changed.wait()

    def _signal_followers(self) -> None:
        self._followers_changed.set()
        self._followers_changed = trio.Event()
