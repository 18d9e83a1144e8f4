"""Relay jobs (edge/relay/job.py, edge/relay/service.py) in virtual time: the event log and its
followers, heartbeats, and the watchdog that cancels a job nobody follows any more."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from config.settings import EdgeSettings
from core.digest import parse_digest
from core.manifest import parse_manifest
from core.reference import parse_repository_name
from edge.relay.job import CANCELLED, DONE, KEPT_EVENTS, RelayJob
from edge.relay.plan import SourceManifest
from edge.relay.service import RelayRequest, RelayService
from tests.integration.oci import new_image

HEARTBEAT = 10.0


async def collect(job: RelayJob, after: int = -1, *, slow: bool = False) -> list[Any]:
    found: list[Any] = []
    async for event in job.follow(after, HEARTBEAT):
        found.append(event if event is None else (event["seq"], event["event"]))
        if slow:
            await trio.sleep(0.1)  # the job goes on while this follower is busy
    return found


async def test_followers_read_the_log_to_its_end(autojump_clock: trio.testing.MockClock) -> None:
    job = RelayJob("j", "owner")
    job.emit("accepted")
    job.emit("plan")
    async with trio.open_nursery() as nursery:
        results: dict[str, list[Any]] = {}

        async def follow(name: str, after: int, slow: bool) -> None:
            results[name] = await collect(job, after, slow=slow)

        nursery.start_soon(follow, "all", -1, False)
        nursery.start_soon(follow, "later", 0, False)
        nursery.start_soon(follow, "slow", -1, True)
        await trio.sleep(0.05)  # the slow follower is busy with event 0
        job.emit("blob")
        await trio.sleep(0.1)  # now with event 1
        job.end(DONE, digest="sha256:x")
        job.emit("blob")  # after the end: dropped
    expected = [(0, "accepted"), (1, "plan"), (2, "blob"), (3, "done")]
    assert results["all"] == expected
    assert results["later"] == expected[1:]
    # Events emitted while the slow follower was busy reached it without waiting for a
    # heartbeat (a None here would mean a lost wake-up).
    assert results["slow"] == expected
    assert job.ended and job.outcome == DONE and job.followers == 0


async def test_a_quiet_job_sends_heartbeats(autojump_clock: trio.testing.MockClock) -> None:
    job = RelayJob("j", "owner")
    job.emit("accepted")
    found: list[Any] = []
    with trio.move_on_after(HEARTBEAT * 2.5):
        async for event in job.follow(-1, HEARTBEAT):
            found.append(event if event is None else event["event"])
    assert found == ["accepted", None, None]


async def test_the_log_keeps_the_latest_events() -> None:
    job = RelayJob("j", "owner")
    for _ in range(KEPT_EVENTS + 100):
        job.emit("bytes")
    job.end(DONE)
    found = await collect(job)
    assert len(found) == KEPT_EVENTS
    assert found[0][0] == 101 and found[-1] == (KEPT_EVENTS + 100, "done")


class BlockingReader:
    """A build reader whose plan never comes: the job waits until it is cancelled."""

    async def plan(self, repository: Any, root: Any) -> Any:
        await trio.sleep_forever()


def request() -> RelayRequest:
    image = new_image()
    root = SourceManifest(
        parse_digest(image.digest),
        image.media_type,
        image.payload,
        parse_manifest(image.payload, image.media_type),
    )
    return RelayRequest(parse_repository_name("acme/p"), "p:b", root, (), {})


@pytest.mark.parametrize("grace", [1.0, 30.0])
async def test_the_watchdog_cancels_a_job_nobody_follows(
    autojump_clock: trio.testing.MockClock, grace: float
) -> None:
    settings = EdgeSettings(relay_grace_seconds=grace)
    async with trio.open_nursery() as nursery:
        service = RelayService(nursery, BlockingReader(), settings)  # type: ignore[arg-type]
        job = service.start(request(), "owner")
        followed: list[Any] = []

        async def follow(task_status: trio.TaskStatus[None]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)  # type: ignore[arg-type]
                followed.extend(await collect(job))

        scope: trio.CancelScope = await nursery.start(follow)
        await trio.sleep(grace * 10)  # followed: the job runs on
        assert not job.ended and service.running() == 1
        started = trio.current_time()
        scope.cancel()  # the client went away
        while not job.ended:
            await job.wait_followers_changed()  # also signalled when the job ends
        assert job.outcome == CANCELLED
        assert grace <= trio.current_time() - started <= grace * 1.2
        assert service.running() == 0
        last = await collect(job, after=-1)
        assert last[-1] == (last[-1][0], "cancelled")
