"""Real clients pulling through the edge as a registry mirror, each the way it is configured
in the field. CNCF Distribution with a Bearer token service plays docker.io (anonymous pulls,
as on Docker Hub) and ghcr.io; origin (orgs ``acme`` and ``other``) and the edge, mirroring
docker.io for anyone and ghcr.io for this system's orgs, run in the test's process on
127.0.0.1 (their command line is tests/unit/test_edge_cli.py's). This machine has no
internet: an image that arrives can only have come through the edge.

- Docker Engine with ``--registry-mirror http://EDGE`` (no ``ns``; the edge's default mirror):
  ``docker pull alpine:3`` (a one-part name: ``library/alpine``) and a 2-platform index, the
  engine picking this machine's platform.
- containerd with a ``hosts.toml`` for docker.io and one for ghcr.io pointing at the edge
  (``ctr images pull --hosts-dir``: every request carries ``?ns=``): pulled and unpacked;
  ghcr.io is mirrored for authenticated callers only, so ``ctr --user x-token:<pull token>``
  goes through the edge's Bearer challenge and ``/token``, and without it the pull fails.
- podman with a ``registries.conf`` mirror whose location carries the upstream as a path
  prefix (``EDGE/docker.io``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from tests.docker_engine import docker_engine
from tests.integration.edges import start_edge
from tests.integration.mirrors import PUSHER, Upstream, running_upstream
from tests.integration.tenants import start_tenants
from tests.interop.conftest import AuthOrigin, Registry
from tests.interop.oci_layout import ImageIndex, LayoutWriter
from tests.interop.test_auth_clients import (  # noqa: F401 (podman: a fixture)
    Podman,
    containerd_process,
    host_platform,
    podman,
    refused,
    succeeded,
)

if TYPE_CHECKING:
    from tests.interop.conftest import Skopeo

pytestmark = pytest.mark.interop

LAYER_SIZES = (16 * 1024, 200 * 1024)


@dataclass(frozen=True)
class Mirrored:
    """An edge mirroring ``hub`` (docker.io, anonymous access) and ``ghcr`` (ghcr.io,
    authenticated), in front of ``origin``; the images pushed upstream."""

    edge: Registry
    origin: AuthOrigin
    hub: Upstream
    ghcr: Upstream
    alpine: ImageIndex  # library/alpine:3 on docker.io, 2 platforms
    tool: ImageIndex  # owner/tool:1 on ghcr.io

    @property
    def host(self) -> str:
        return self.edge.host

    def log_tail(self, lines: int = 40) -> str:
        return self.edge.log_tail(lines)

    @property
    def registry(self) -> Registry:
        return self.edge


async def push(skopeo: Skopeo, layout: Path, name: str, upstream: Upstream, target: str) -> None:
    creds = f"{PUSHER.username}:{PUSHER.password}"
    destination = f"docker://{upstream.direct.removeprefix('http://')}/{target}"
    await skopeo.run(
        "copy", "--all", "--dest-tls-verify=false", "--dest-creds", creds,
        f"oci:{layout}:{name}", destination,
    )  # fmt: skip


@pytest.fixture
async def mirrored(
    nursery: trio.Nursery, tmp_path: Path, skopeo: Skopeo
) -> AsyncIterator[Mirrored]:
    tenants = await start_tenants(nursery, tmp_path / "origin")
    async with (
        running_upstream(nursery, tmp_path, "docker.io") as hub,
        running_upstream(nursery, tmp_path, "ghcr.io") as ghcr,
    ):
        layout = LayoutWriter(tmp_path / "images")
        platforms = (host_platform(), ("linux", "s390x"))
        alpine = layout.index(platforms, LAYER_SIZES)
        layout.tag(alpine, "alpine")
        tool = layout.index(platforms, LAYER_SIZES)
        layout.tag(tool, "tool")
        await push(skopeo, layout.root, "alpine", hub, "library/alpine:3")
        await push(skopeo, layout.root, "tool", ghcr, "owner/tool:1")

        log = tmp_path / "edge.log"
        log.write_text("(origin and edge run in the test's process: see its captured log)\n")
        edge = await start_edge(
            nursery,
            tenants,
            tmp_path / "edge",
            mirrors=(hub.mirror("anonymous"), ghcr.mirror("authenticated")),
        )
        host = edge.url.removeprefix("http://")
        origin = AuthOrigin(
            Registry("origin", tenants.url, log), Path(), "acme", tenants.acme, tenants.acme_pull
        )
        try:
            yield Mirrored(Registry("edge", host, log), origin, hub, ghcr, alpine, tool)
        finally:
            edge.shutdown.set()
            tenants.origin.shutdown.set()
            tenants.store.close()


def mine(index: ImageIndex) -> tuple[str, str]:
    """(manifest digest, config digest) of this machine's platform in ``index``."""
    child = next(c for c in index.children if c.platform == host_platform())
    return child.manifest_digest, child.config_digest


async def test_docker_engine_pulls_through_its_registry_mirror(mirrored: Mirrored) -> None:
    async with docker_engine(extra_args=["--registry-mirror", f"http://{mirrored.host}"]) as engine:
        await engine.docker("pull", "alpine:3")
        inspected = json.loads((await engine.docker("image", "inspect", "alpine:3")).stdout)[0]
        _, config = mine(mirrored.alpine)
        assert inspected["Id"] == config, inspected
        assert f"alpine@{mirrored.alpine.index_digest}" in inspected["RepoDigests"], inspected
    # Docker sent no ns: the edge took library/alpine for its default mirror, docker.io.
    assert mirrored.hub.gets(config) == 1
    assert ("GET", f"/v2/library/alpine/blobs/{config}") in mirrored.hub.proxy.requests


async def test_containerd_pulls_through_hosts_toml(tmp_path: Path, mirrored: Mirrored) -> None:
    hosts = tmp_path / "certs.d"
    for registry in ("docker.io", "ghcr.io"):
        (hosts / registry).mkdir(parents=True)
        (hosts / registry / "hosts.toml").write_text(
            f'server = "https://{registry}"\n\n'
            f'[host."http://{mirrored.host}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
    async with containerd_process(tmp_path / "containerd.log") as containerd:
        logs = [containerd.log]
        pull = "images", "pull", "--hosts-dir", str(hosts)
        result = await containerd.ctr("test", *pull, "docker.io/library/alpine:3")
        succeeded(result, mirrored, logs)
        await assert_unpacked(containerd, "docker.io/library/alpine:3", mirrored, logs)

        # ghcr.io is mirrored for this system's orgs only: a pull token opens it.
        refused(await containerd.ctr("anon", *pull, "ghcr.io/owner/tool:1"), mirrored.origin, logs)
        user = f"x-token:{mirrored.origin.pull_token}"
        result = await containerd.ctr("test", *pull, "--user", user, "ghcr.io/owner/tool:1")
        succeeded(result, mirrored, logs)
        await assert_unpacked(containerd, "ghcr.io/owner/tool:1", mirrored, logs)
    # ``owner/tool`` without ``ns`` would have gone to the default mirror (docker.io, which
    # has no such image): containerd's ?ns=ghcr.io chose the upstream.
    _, config = mine(mirrored.tool)
    assert mirrored.ghcr.gets(config) == 1


async def assert_unpacked(
    containerd: object, reference: str, mirrored: Mirrored, logs: list[Path]
) -> None:
    checked = succeeded(await containerd.ctr("test", "images", "check"), mirrored, logs).decode()  # type: ignore[attr-defined]
    row = next((line for line in checked.splitlines() if line.startswith(reference)), "")
    assert "complete (" in row and row.split()[-1] == "true", f"not unpacked:\n{checked}"


async def test_podman_pulls_through_a_prefixed_mirror(
    mirrored: Mirrored,
    podman: Podman,  # noqa: F811 (the fixture imported above)
) -> None:
    (podman.workdir / "auth.json").write_text("{}")
    (podman.workdir / "registries.conf").write_text(
        "[[registry]]\n"
        'prefix = "docker.io"\n'
        'location = "docker.io"\n'
        "[[registry.mirror]]\n"
        f'location = "{mirrored.host}/docker.io"\n'
        "insecure = true\n"
    )
    result = await podman.run("pull", "docker.io/library/alpine:3")
    succeeded(result, mirrored)
    inspected = json.loads(succeeded(await podman.run("image", "inspect", "alpine:3"), mirrored))
    _, config = mine(mirrored.alpine)
    assert inspected[0]["Id"] == config.removeprefix("sha256:"), inspected
    assert mirrored.hub.gets(config) == 1
