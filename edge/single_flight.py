"""One call per key at a time: callers that arrive while it runs share its outcome.

For the small upstream requests a burst of clients would otherwise repeat (32 clients cold on
one tag: one HEAD and one manifest GET, not 32 of each). Blobs have their own, streaming
single flight (:mod:`edge.fill`).

The call runs in the first caller's task. Its result is every waiter's; a failure reaches
each waiter as a fresh exception of the same kind (one exception object must not be raised
in many tasks). If the first caller is cancelled (its client left) or fails with something
that is not a registry answer, the waiters do not inherit that: the next one calls again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from core.errors import RegistryError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Flight(Generic[V]):
    done: trio.Event = field(default_factory=trio.Event)
    result: V | None = None
    ok: bool = False
    error: BaseException | None = None


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, _Flight[V]] = {}

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, call)
            await flight.done.wait()
            if flight.ok:
                return flight.result  # type: ignore[return-value]
            shared = _shareable(flight.error)
            if shared is not None:
                raise shared from flight.error
            # The leader was cancelled or hit a bug: try again, maybe leading this time.

    async def _lead(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        flight: _Flight[V] = _Flight()
        self._flights[key] = flight
        try:
            flight.result = await call()
            flight.ok = True
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()


def _shareable(error: BaseException | None) -> Exception | None:
    """A fresh copy of an outcome every waiter may have; None for one they must not."""
    if isinstance(error, RegistryError):
        return type(error)(error.message, detail=error.detail, headers=error.headers)
    if isinstance(error, trio.TooSlowError):
        return trio.TooSlowError()
    return None
