"""The event feed edges follow (``GET /api/v1/events``): long polls over the event log, and
the log's upkeep.

:meth:`EventFeed.poll` answers at once when events after the follower's position exist,
else waits for one: appends committed by this process wake it at once (the database's
:class:`~origin.metadata.event_signal.EventSignal`); those of other origin processes on the
same database are seen by :meth:`EventFeed.run`, which looks at the log's head every
``events_poll_interval_seconds`` and wakes the waiters when it moved.

:meth:`EventFeed.run` also keeps the log: every ``events_housekeeping_interval_seconds`` it
records the expiries of tokens and builds (a clock passing changes no row, so nothing else
would) and prunes the log to its retention window. Several origins may do so at once: a
duplicate expiry event is harmless, and pruning is idempotent.

A follower whose position is older than the log keeps (or newer than the log has: another
database) is answered :class:`~core.errors.Gone`: it must revalidate everything it holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from config.settings import OriginSettings
from core.errors import Gone
from origin.metadata.database import Database
from origin.metadata.events import Event, EventLog

log = logging.getLogger("depot.origin.events")

#: Events in one answer; a follower further behind asks again at once.
PAGE_SIZE = 500
#: The longest a poll may wait (a follower asking longer is cut to this).
MAX_WAIT_SECONDS = 60.0


class EventFeed:
    def __init__(
        self,
        database: Database,
        settings: OriginSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = EventLog(database)
        self._signal = database.events_committed
        self._settings = settings
        self._clock = clock
        self._closing = trio.Event()

    def close(self) -> None:
        """Answer every waiting poll now (the server is draining) and every later one at once."""
        self._closing.set()
        self._signal.notify()  # the waiters wake, see the flag and answer

    async def poll(self, after: int | None, wait: float) -> tuple[list[Event], int]:
        """Events after ``after``, oldest first, and the position to ask from next. Without
        ``after``: none, and the log's head (where a new follower starts). Waits up to
        ``wait`` seconds for the first one; Gone when ``after`` is outside the log."""
        bounds = await self.log.bounds()
        if after is None:
            return [], bounds.last
        if after < bounds.pruned_through or after > bounds.last:
            raise Gone(
                "the event log no longer holds this position: revalidate everything",
                detail={"after": after, "first": bounds.pruned_through, "last": bounds.last},
            )
        deadline = trio.current_time() + min(max(wait, 0.0), MAX_WAIT_SECONDS)
        while True:
            woken = self._signal.current()  # before reading: a commit after the read sets it
            found = await self.log.after(after, PAGE_SIZE)
            if found:
                return found, found[-1].seq
            if self._closing.is_set():
                return [], after
            with trio.move_on_at(deadline) as waited:
                await woken.wait()
            if waited.cancelled_caught:
                return [], after

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the log's head for other processes' appends, and keep the log (see the
        module's docstring). Failures are logged and retried at the next round."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            nursery.start_soon(self._keep)

    async def _watch(self) -> None:
        seen, failing = -1, False
        while True:
            try:
                head = (await self.log.bounds()).last
            except Exception:  # the database is down: the next round retries
                if not failing:  # once per outage, not twice a second
                    log.exception("reading the event log's head failed")
                failing = True
            else:
                if seen >= 0 and head != seen:
                    self._signal.notify()
                seen, failing = head, False
            await trio.sleep(self._settings.events_poll_interval_seconds)

    async def _keep(self) -> None:
        settings = self._settings
        while True:
            try:
                await self.housekeeping()
            except Exception:  # the next round retries
                log.exception("event log housekeeping failed")
            await trio.sleep(settings.events_housekeeping_interval_seconds)

    async def housekeeping(self) -> tuple[int, int]:
        """Record expiries, then prune: how many events each added and removed."""
        settings = self._settings
        now = self._clock()
        recorded = await self.log.record_expiries(now, settings.events_retention_seconds)
        pruned = await self.log.prune(
            older_than=now - settings.events_retention_seconds,
            keep_at_most=settings.events_retention_count,
        )
        if recorded or pruned:
            log.info("event log: %d expiries recorded, %d old events pruned", recorded, pruned)
        return recorded, pruned
