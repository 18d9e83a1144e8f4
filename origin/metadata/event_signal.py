"""A wake-up for long polls: set each time a write transaction that appended events commits
in this process (:class:`~origin.metadata.database.Database` calls :meth:`EventSignal.notify`).

Waiters take :meth:`EventSignal.current` *before* reading the log, then wait on it: an
append committed between their read and their wait has set the event they hold, so nothing
is missed. Appends by other processes on the same database set nothing here; waiters also
re-read the log at a modest interval for those.
"""

from __future__ import annotations

import trio


class EventSignal:
    def __init__(self) -> None:
        self._event = trio.Event()
        self.notified = 0  # times notified (for tests and metrics)

    def current(self) -> trio.Event:
        """The event the next :meth:`notify` sets."""
        return self._event

    def notify(self) -> None:
        """Wake every waiter holding the current event (call from trio's thread)."""
        self.notified += 1
        self._event.set()
        self._event = trio.Event()
