"""The real Docker engine through an edge: ``docker login`` with ``x-token`` and a pull token,
``docker pull`` of an image and of a 2-platform index (the engine picks this machine's
platform), and ``docker push`` through the edge with the org token (passed through to origin);
a wrong token is refused at login.

The engine is Debian's ``dockerd``, started by the test with private roots (see
``tests/docker_engine.py``); the registry is plain HTTP on 127.0.0.1, which Docker allows
without flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.docker_engine import DockerEngine, docker_engine
from tests.interop.oci_layout import LayoutWriter
from tests.interop.test_auth_clients import host_platform, wrong
from tests.interop.test_edge_clients import (
    LAYER_SIZES,
    bytes_from_upstream,
    origin_has,
    push_to_origin,
)

if TYPE_CHECKING:
    from tests.interop.conftest import AuthEdge, Skopeo

pytestmark = pytest.mark.interop


async def inspect(engine: DockerEngine, reference: str) -> dict[str, Any]:
    result = await engine.docker("image", "inspect", reference)
    found: dict[str, Any] = json.loads(result.stdout)[0]
    return found


async def test_docker_logs_in_pulls_and_pushes_through_the_edge(
    tmp_path: Path, skopeo: Skopeo, auth_edge: AuthEdge
) -> None:
    edge = auth_edge
    layout = LayoutWriter(tmp_path / "source")
    image = layout.image(layer_sizes=LAYER_SIZES, platform=host_platform())
    layout.tag(image, "image")
    index = layout.index(layer_sizes=LAYER_SIZES)
    layout.tag(index, "index")
    await push_to_origin(skopeo, edge, f"oci:{layout.root}:image", "acme/app")
    await push_to_origin(skopeo, edge, f"oci:{layout.root}:index", "acme/multi", "--all")

    async with docker_engine() as engine:
        bad = await engine.docker(
            "login", "--username", "x-token", "--password-stdin", edge.host,
            stdin=wrong(edge.origin.pull_token).encode(), check=False,
        )  # fmt: skip
        assert bad.returncode != 0, bad
        assert b"unauthorized" in bad.stderr.lower() or b"401" in bad.stderr, bad.stderr

        login = await engine.docker(
            "login", "--username", "x-token", "--password-stdin", edge.host,
            stdin=edge.origin.pull_token.encode(),
        )  # fmt: skip
        assert b"Login Succeeded" in login.stdout, login
        saved = json.loads((engine.config_dir / "config.json").read_text())
        assert edge.host in saved["auths"]

        await engine.docker("pull", f"{edge.host}/acme/app:v1")
        inspected = await inspect(engine, f"{edge.host}/acme/app:v1")
        assert inspected["Id"] == image.config_digest, inspected
        assert f"{edge.host}/acme/app@{image.manifest_digest}" in inspected["RepoDigests"]

        await engine.docker("pull", f"{edge.host}/acme/multi:v1")
        inspected = await inspect(engine, f"{edge.host}/acme/multi:v1")
        mine = next(c for c in index.children if c.platform == host_platform())
        assert inspected["Id"] == mine.config_digest, inspected
        assert f"{edge.host}/acme/multi@{index.index_digest}" in inspected["RepoDigests"]
        assert await bytes_from_upstream(edge) > 0, edge.log_tail()

        # The pull token may not push; the org token may, through the edge to origin.
        await engine.docker("tag", f"{edge.host}/acme/app:v1", f"{edge.host}/acme/copy:v1")
        refused = await engine.docker("push", f"{edge.host}/acme/copy:v1", check=False)
        assert refused.returncode != 0, refused
        assert await origin_has(edge, "acme/copy", image, "v1") == set()
        await engine.docker(
            "login", "--username", "x-token", "--password-stdin", edge.host,
            stdin=edge.origin.org_token.encode(),
        )  # fmt: skip
        await engine.docker("push", f"{edge.host}/acme/copy:v1")
        # Docker re-compresses layers when it pushes: the tag and the config arrive as is.
        assert {"v1", image.config_digest} <= await origin_has(edge, "acme/copy", image, "v1")
