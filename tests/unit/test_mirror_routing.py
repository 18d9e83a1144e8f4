"""Which upstream answers a request (edge/mirror/routing.py): every addressing form, and
everything that must stay origin's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pytest

from core.auth.request import RequestView
from core.endpoints import parse_endpoint
from core.web.v2 import V2Routes
from edge.mirror.org_directory import OrgDirectory
from edge.mirror.routing import Router
from edge.mirror.site import MirrorSite

ORIGIN = cast(V2Routes, "origin")


@dataclass(frozen=True)
class Site:
    label: str

    def routes_for(self, authority: object, path: str | None) -> Any:
        return (self.label, path)


class Orgs:
    """acme and other are orgs; acme registered ghcr.io."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def is_org(self, slug: str) -> bool:
        self.asked.append(slug)
        return slug in ("acme", "other")

    async def site(self, slug: str, name: str) -> MirrorSite | None:
        self.asked.append(f"{slug}/{name}")
        found = Site("acme/ghcr.io") if (slug, name) == ("acme", "ghcr.io") else None
        return cast(MirrorSite | None, found)


def router(orgs: Orgs, default: str | None = "docker.io") -> Router:
    mirrors = {"docker.io": Site("docker.io"), "ghcr.io": Site("ghcr.io")}
    return Router(
        ORIGIN,
        cast(Any, None),
        cast(Any, mirrors),
        cast(OrgDirectory, orgs),
        default=default,
        base_domain="registry.example",
    )


def view(path: str, ns: str | None = None, host: str = "edge.example:5000") -> RequestView:
    query = {"ns": ns} if ns is not None else {}
    return RequestView("GET", host, "http", None, parse_endpoint(path), query)


M = "/manifests/1"


@pytest.mark.parametrize(
    ("path", "ns", "host", "chosen"),
    [
        # containerd's hosts.toml: ?ns= names the upstream; the name is as is
        (f"/v2/library/alpine{M}", "docker.io", None, ("docker.io", "library/alpine")),
        (f"/v2/alpine{M}", "Docker.IO", None, ("docker.io", "alpine")),
        (f"/v2/acme/app{M}", "docker.io", None, ("docker.io", "acme/app")),
        (f"/v2/owner/tool{M}", "ghcr.io", None, ("ghcr.io", "owner/tool")),
        ("/v2/", "docker.io", None, ("docker.io", None)),
        # podman's prefix and explicit names
        (f"/v2/docker.io/library/alpine{M}", None, None, ("docker.io", "library/alpine")),
        (f"/v2/docker.io/alpine{M}", "ghcr.io", None, ("docker.io", "alpine")),
        (f"/v2/ghcr.io/owner/tool{M}", None, None, ("ghcr.io", "owner/tool")),
        # an org's own upstream, path style or on its subdomain
        (f"/v2/acme/ghcr.io/owner/tool{M}", None, None, ("acme/ghcr.io", "owner/tool")),
        (f"/v2/acme/ghcr.io/owner/tool{M}", "ghcr.io", None, ("acme/ghcr.io", "owner/tool")),
        (f"/v2/ghcr.io/owner/tool{M}", None, "acme.registry.example", ("ghcr.io", "owner/tool")),
        (f"/v2/quay.io/owner/tool{M}", None, "acme.registry.example", "origin"),
        # Docker Engine's registry-mirrors: names that are not an org's
        (f"/v2/library/alpine{M}", None, None, ("docker.io", "library/alpine")),
        (f"/v2/someone/tool{M}", None, None, ("docker.io", "someone/tool")),
        (f"/v2/some_one/tool{M}", None, None, ("docker.io", "some_one/tool")),
        # origin's, as before
        (f"/v2/acme/app{M}", None, None, "origin"),
        (f"/v2/other/ghcr.io/owner/tool{M}", None, None, "origin"),  # other registered none
        (f"/v2/acme/quay.io/owner/tool{M}", None, None, "origin"),
        (f"/v2/p1x2{M}", None, None, "origin"),  # a legacy project id
        (f"/v2/app{M}", None, "acme.registry.example", "origin"),
        (f"/v2/library/alpine{M}", "registry.example", None, "origin"),  # an ns not mirrored
        (f"/v2/library/alpine{M}", "quay.io", None, "origin"),
        ("/v2/", None, None, "origin"),
        ("/v2/_catalog", "docker.io", None, "origin"),
        (f"/v2/docker.io{M}", None, None, "origin"),  # a mirror's name alone names nothing there
    ],
)
async def test_routes(path: str, ns: str | None, host: str | None, chosen: object) -> None:
    kwargs = {"host": host} if host else {}
    assert await router(Orgs()).choose(view(path, ns, **kwargs)) == chosen


async def test_no_default_mirror_asks_origin_nothing() -> None:
    orgs = Orgs()
    assert await router(orgs, default=None).choose(view(f"/v2/library/alpine{M}")) == "origin"
    assert await router(orgs, default=None).choose(view(f"/v2/acme/app/sub{M}")) == "origin"
    assert orgs.asked == []
