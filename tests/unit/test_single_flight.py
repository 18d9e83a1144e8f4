"""edge/single_flight.py: one call per key at a time, its outcome shared."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from core.errors import Unavailable
from edge.single_flight import SingleFlight

TIMEOUT = 5


async def test_callers_share_one_call_per_key() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls: list[str] = []
    release = trio.Event()

    async def call(key: str) -> int:
        calls.append(key)
        await release.wait()
        return len(calls)

    results: list[int] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for key in ("a", "a", "a", "b"):
                nursery.start_soon(lambda k=key: _append(results, flights.run(k, lambda: call(k))))
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(calls) == ["a", "b"]
            release.set()
        assert sorted(results) == [2, 2, 2, 2]
        assert await flights.run("a", lambda: call("a")) == 3  # a later caller calls again


async def _append(results: list[int], running: object) -> None:
    results.append(await running)  # type: ignore[misc]


async def test_a_registry_failure_reaches_every_waiter_as_a_fresh_exception() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = trio.Event()

    async def failing() -> int:
        await release.wait()
        raise Unavailable("upstream down", headers={"Retry-After": "3"})

    raised: list[BaseException] = []

    async def caller() -> None:
        try:
            await flights.run("k", failing)
        except Unavailable as exc:
            raised.append(exc)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert len(raised) == 3 and len({id(exc) for exc in raised}) == 3
    assert all(exc.headers == {"Retry-After": "3"} for exc in raised)


async def test_a_cancelled_leader_leaves_the_call_to_a_waiter() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep_forever()
        return "second"

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            leader = trio.CancelScope()

            async def lead() -> None:
                with leader:
                    await flights.run("k", call)

            nursery.start_soon(lead)
            await trio.testing.wait_all_tasks_blocked()
            waiter: list[str] = []

            async def wait() -> None:
                waiter.append(await flights.run("k", call))

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            leader.cancel()
        assert waiter == ["second"] and calls == 2


async def test_a_bug_is_not_inherited() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    with pytest.raises(ZeroDivisionError):
        await flights.run("k", _divide)
    assert await flights.run("k", _fine) == "fine"


async def _divide() -> str:
    return str(1 // 0)


async def _fine() -> str:
    return "fine"
