"""Bounds on one kind of traffic: how many requests may be in flight in total, and how many
per client. The edge's pass-through has two (reads, writes), so a flood of one kind never
takes the other's capacity, and one client never takes everybody's.

Past the per-client bound a request is refused at once; past the total it waits briefly for
a slot, then is refused: 429 ``TOOMANYREQUESTS`` with ``Retry-After`` either way. A slot is
released exactly once, by whichever task ends the request (the response may be streamed by
another task than the one that took it: limits are held on behalf of the slot).
"""

from __future__ import annotations

import trio

from core.errors import TooManyRequests


class Lane:
    """One kind of pass-through traffic: a total limit and a limit per client."""

    def __init__(self, name: str, total: int, per_client: int) -> None:
        self.name = name
        self._total = trio.CapacityLimiter(total)
        self._per_client = per_client
        self._clients: dict[str, int] = {}

    def in_flight(self, client: str) -> int:
        return self._clients.get(client, 0)

    async def take(self, client: str, queue_seconds: float) -> Slot:
        if self._clients.get(client, 0) >= self._per_client:
            raise _busy(f"too many {self.name} in flight from this client")
        slot = Slot(self, client)
        self._clients[client] = self._clients.get(client, 0) + 1
        try:
            with trio.move_on_after(queue_seconds):
                await self._total.acquire_on_behalf_of(slot)
                slot.holds_total = True
                return slot
            raise _busy(f"too many {self.name} in flight to origin")
        except BaseException:
            slot.release()
            raise

    def _give_back(self, slot: Slot) -> None:
        if slot.holds_total:
            self._total.release_on_behalf_of(slot)
        left = self._clients.get(slot.client, 0) - 1
        if left > 0:
            self._clients[slot.client] = left
        else:
            self._clients.pop(slot.client, None)


class Slot:
    """A request's place in its lane; released exactly once."""

    def __init__(self, lane: Lane, client: str) -> None:
        self.lane, self.client = lane, client
        self.holds_total = False
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.lane._give_back(self)


def _busy(message: str) -> TooManyRequests:
    return TooManyRequests(message, headers={"Retry-After": "1"})
