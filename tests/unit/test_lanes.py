"""The pass-through's bounds: per client at once, in total after a short wait (MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from core.errors import TooManyRequests
from edge.lanes import Lane


async def test_a_client_past_its_share_is_refused_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lane = Lane("writes", total=10, per_client=2)
    held = [await lane.take("a", queue_seconds=5) for _ in range(2)]
    start = trio.current_time()
    with pytest.raises(TooManyRequests) as refused:
        await lane.take("a", queue_seconds=5)
    assert trio.current_time() == start  # no wait
    assert refused.value.headers["Retry-After"] == "1"
    assert lane.in_flight("a") == 2
    other = await lane.take("b", queue_seconds=5)  # another client is not affected
    held[0].release()
    held[0].release()  # released once, however often asked
    assert lane.in_flight("a") == 1
    await lane.take("a", queue_seconds=5)
    other.release()
    assert lane.in_flight("b") == 0


async def test_past_the_total_a_request_waits_briefly_then_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lane = Lane("reads", total=2, per_client=5)
    first, _ = await lane.take("a", queue_seconds=1), await lane.take("b", queue_seconds=1)
    with pytest.raises(TooManyRequests):
        await lane.take("c", queue_seconds=1)
    assert lane.in_flight("c") == 0  # a refused request holds nothing

    async def free_soon() -> None:
        await trio.sleep(0.5)
        first.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(free_soon)
        waited = await lane.take("c", queue_seconds=1)  # the slot freed within the wait
    assert lane.in_flight("c") == 1
    waited.release()
