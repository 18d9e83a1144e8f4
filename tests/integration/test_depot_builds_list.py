"""``depot builds list`` marks expired builds, and ``depot pull`` refuses them by name: an
origin on a fake clock (a week passes at once), ``depot`` as a real process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from depot.image_source import DOCKER_ARCHIVE
from tests.integration.tenants import Tenants, start_tenants
from tests.integration.test_builds import WEEK, FakeClock
from tests.integration.test_depot_cli import Depot, make_source

DAY = 86400


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
async def tenants(
    nursery: trio.Nursery, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "data", clock=clock)
    yield running
    running.origin.shutdown.set()
    running.store.close()


async def test_expired_builds_are_marked_and_not_pulled(
    tenants: Tenants, clock: FakeClock, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    depot = Depot(home, tenants.url, tenants.acme)
    path, _, _ = make_source(DOCKER_ARCHIVE, tmp_path)
    project = tenants.project
    old = (await depot.run("save", path, "--project", project, "--save-tag", "old")).stdout
    clock.advance(WEEK - DAY)
    new = (await depot.run("save", path, "--project", project, "--save-tag", "new")).stdout
    old_id, new_id = old.decode().strip(), new.decode().strip()
    clock.advance(2 * DAY)  # the first is a day past its week, the second has 5 days left

    table = (await depot.run("builds", "list", "--project", project)).stdout.decode()
    lines = {line.split()[0]: line for line in table.splitlines()}
    assert "STATE" in lines["BUILD"], table
    assert "EXPIRED" in lines[old_id] and "(expired)" in lines[old_id], table
    assert "ready" in lines[new_id] and "expired" not in lines[new_id].lower(), table

    out = tmp_path / "out"
    for reference in (old_id, "old"):
        refused = await depot.run(
            "pull", reference, "--project", project, "--output", f"oci:{out}", check=False
        )
        assert refused.returncode == 1
        assert b"expired" in refused.stderr, refused.stderr
    await depot.run("pull", "new", "--project", project, "--output", f"oci:{out}", "-q")
    assert (out / "index.json").exists()
