"""edge/coord/host_lock.py: flock is per open file, so two holders in one process exclude
each other exactly as two worker processes do."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from core.digest import parse_digest
from edge.coord.host_lock import HostLocks

DIGEST = parse_digest("sha256:" + "ab" * 32)


async def test_a_second_holder_waits_and_is_told_it_waited(tmp_path: Path) -> None:
    locks = HostLocks(tmp_path)
    order: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with locks.hold(DIGEST) as waited:
                assert waited is False
                assert locks.path(DIGEST).read_text() == f"{os.getpid()}\n"

                async def second() -> None:
                    async with locks.hold(DIGEST) as second_waited:
                        order.append(f"second waited={second_waited}")

                nursery.start_soon(second)
                while locks.waits == 0:  # noqa: ASYNC110 (polls another holder's progress)
                    await trio.sleep(0.01)
                order.append("first released")
    assert order == ["first released", "second waited=True"]
    assert locks.waits == 1
    assert not locks.path(DIGEST).exists()  # removed by its last holder


async def test_a_cancelled_waiter_leaves_the_lock_free(tmp_path: Path) -> None:
    locks = HostLocks(tmp_path)
    with trio.fail_after(10):
        async with locks.hold(DIGEST):
            with trio.move_on_after(0.2):
                async with locks.hold(DIGEST):
                    raise AssertionError("held twice")
        async with locks.hold(DIGEST) as waited:
            assert waited is False
