"""The edge's circuit breaker as a state machine, on trio's MockClock (pytest-trio's
``autojump_clock``: time jumps whenever every task sleeps)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from core.errors import Unavailable
from edge.breaker import CircuitBreaker, State


def breaker(**overrides: float) -> CircuitBreaker:
    settings = {"threshold": 3, "base_interval_seconds": 1.0, "max_interval_seconds": 8.0}
    settings.update(overrides)
    return CircuitBreaker(**settings)  # type: ignore[arg-type]


async def test_opens_after_consecutive_failures_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    circuit = breaker()
    for _ in range(2):
        circuit.failed()
    circuit.succeeded()  # the count is of consecutive failures
    for _ in range(2):
        circuit.failed()
        assert circuit.allow() and circuit.state is State.CLOSED
    circuit.failed()
    assert circuit.state is State.OPEN and circuit.openings == 1
    assert not circuit.allow()
    assert circuit.retry_after() == 1


async def test_one_probe_after_the_interval_then_closed_on_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    circuit = breaker()
    for _ in range(3):
        circuit.failed()
    await trio.sleep(0.5)
    assert not circuit.allow()
    await trio.sleep(0.5)
    assert circuit.allow()  # the probe
    assert circuit.state is State.PROBING
    assert not circuit.allow()  # only one
    circuit.succeeded()
    assert circuit.state is State.CLOSED and circuit.allow()
    circuit.failed()  # counting starts afresh
    assert circuit.state is State.CLOSED


async def test_a_failed_probe_doubles_the_interval_up_to_the_ceiling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    circuit = breaker()
    for _ in range(3):
        circuit.failed()
    for interval in [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]:
        await trio.sleep(interval - 0.25)
        assert not circuit.allow()
        await trio.sleep(0.25)
        assert circuit.allow()
        circuit.failed()
    assert circuit.openings == 7  # the first opening, then one per failed probe
    assert circuit.retry_after() == 8


async def test_a_lost_probe_is_replaced_after_the_ceiling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    circuit = breaker()
    for _ in range(3):
        circuit.failed()
    await trio.sleep(1)
    assert circuit.allow()  # a probe that never reports (its task was cancelled)
    await trio.sleep(7.9)
    assert not circuit.allow()
    await trio.sleep(0.1)
    assert circuit.allow()


async def test_failures_while_open_change_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    circuit = breaker()
    for _ in range(3):
        circuit.failed()
    circuit.failed()  # a request that began before the circuit opened
    await trio.sleep(1)
    assert circuit.allow()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(base_interval_seconds=0)


async def test_attempts_record_answers_failures_and_cancellations(
    autojump_clock: trio.testing.MockClock,
) -> None:
    circuit = breaker(threshold=1)
    with pytest.raises(KeyError), circuit.attempt((TimeoutError,)):
        raise KeyError("an answer, such as a 404")
    assert circuit.state is State.CLOSED
    with pytest.raises(TimeoutError), circuit.attempt((TimeoutError,)):
        raise TimeoutError
    assert circuit.state is State.OPEN
    with pytest.raises(Unavailable) as refused, circuit.attempt((TimeoutError,)):
        raise AssertionError("not asked while open")
    assert refused.value.headers["Retry-After"] == "1"
    await trio.sleep(1)
    with trio.move_on_after(5), circuit.attempt((TimeoutError,)):
        await trio.sleep_forever()  # the probe is cancelled: no answer
    assert circuit.allow()  # so the next caller probes at once
    with circuit.record((TimeoutError,)):
        pass
    assert circuit.state is State.CLOSED
