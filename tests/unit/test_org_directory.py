"""What the edge knows of orgs and their upstreams (edge/mirror/org_directory.py), in virtual
time: one origin request per org and refresh period, answers kept when origin fails (asked
again a few seconds later), one site per (org, upstream, credential)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest
import trio
import trio.testing

from core.errors import Unavailable
from edge.mirror.org_directory import RETRY_SECONDS, OrgDirectory
from edge.mirror.site import MirrorSite, SiteSpec
from edge.origin_control import RegisteredUpstream

REFRESH = 60.0
GHCR = RegisteredUpstream("ghcr.io", "https://ghcr.io", "bot", "pw1")


@dataclass
class FakeSite:
    spec: SiteSpec
    closed: bool = False

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Origin:
    orgs: dict[str, list[RegisteredUpstream]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    down: bool = False
    hold: trio.Event | None = None

    async def org_upstreams(self, org: str) -> list[RegisteredUpstream] | None:
        self.asked.append(org)
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            raise Unavailable("origin down")
        return self.orgs.get(org)


def directory(origin: Origin, made: list[FakeSite]) -> OrgDirectory:
    def make(spec: SiteSpec) -> MirrorSite:
        made.append(FakeSite(spec))
        return cast(MirrorSite, made[-1])

    return OrgDirectory(origin, make, refresh_seconds=REFRESH)


async def test_orgs_are_asked_once_per_refresh(autojump_clock: trio.testing.MockClock) -> None:
    origin = Origin({"acme": [GHCR]})
    made: list[FakeSite] = []
    orgs = directory(origin, made)
    assert await orgs.is_org("acme") and not await orgs.is_org("library")
    site = await orgs.site("acme", "ghcr.io")
    assert await orgs.site("acme", "quay.io") is None
    assert origin.asked == ["acme", "library"]
    spec = cast(FakeSite, site).spec
    assert (spec.label, spec.resource.org, spec.resource.anonymous) == (
        "acme/ghcr.io",
        "acme",
        False,
    )
    assert spec.credentials is not None and spec.credentials.password == "pw1"
    assert spec.namespace.startswith("org:acme:ghcr.io:")

    await trio.sleep(REFRESH)
    origin.orgs["library"] = []  # an org created meanwhile
    assert await orgs.is_org("library")
    assert await orgs.site("acme", "ghcr.io") is site  # same registration: same site
    assert origin.asked == ["acme", "library", "library", "acme"]
    assert len(made) == 1


async def test_concurrent_lookups_share_one_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origin = Origin({"acme": [GHCR]}, hold=trio.Event())
    orgs = directory(origin, [])
    found: list[bool] = []
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(lambda: _record(found, orgs.is_org("acme")))
        await trio.testing.wait_all_tasks_blocked()
        assert origin.hold is not None
        origin.hold.set()
    assert found == [True] * 10 and origin.asked == ["acme"]


async def _record(found: list[bool], asking: object) -> None:
    found.append(await asking)  # type: ignore[misc]


async def test_a_failing_origin_keeps_the_last_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origin = Origin({"acme": [GHCR]})
    orgs = directory(origin, [])
    site = await orgs.site("acme", "ghcr.io")
    origin.down = True
    with pytest.raises(Unavailable):
        await orgs.is_org("never-seen")
    await trio.sleep(REFRESH)
    asked = len(origin.asked)
    assert await orgs.site("acme", "ghcr.io") is site
    assert await orgs.site("acme", "ghcr.io") is site  # not asked again at once
    assert len(origin.asked) == asked + 1
    await trio.sleep(RETRY_SECONDS)
    origin.down = False
    assert await orgs.site("acme", "ghcr.io") is site
    assert len(origin.asked) == asked + 2


async def test_a_changed_registration_gets_a_new_site(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origin = Origin({"acme": [GHCR]})
    made: list[FakeSite] = []
    orgs = directory(origin, made)
    first = await orgs.site("acme", "ghcr.io")
    origin.orgs["acme"] = [RegisteredUpstream("ghcr.io", "https://ghcr.io", "bot", "pw2")]
    await trio.sleep(REFRESH)
    second = await orgs.site("acme", "ghcr.io")
    assert second is not first and len(made) == 2
    assert made[0].spec.namespace == made[1].spec.namespace  # same registry and user
    origin.orgs["acme"] = [RegisteredUpstream("ghcr.io", "https://other.example", "bot", "pw2")]
    origin.orgs["acme"].append(RegisteredUpstream("no-dot", "https://x.example", "", ""))
    await trio.sleep(REFRESH)
    third = await orgs.site("acme", "ghcr.io")
    assert made[2].spec.namespace != made[1].spec.namespace  # another registry
    assert await orgs.site("acme", "no-dot") is None  # not an upstream name: skipped
    assert not any(site.closed for site in made)  # a request may still use a replaced one
    await orgs.aclose()
    assert all(site.closed for site in made) and third is not second
