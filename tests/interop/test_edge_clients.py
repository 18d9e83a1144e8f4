"""Real clients through an edge: origin (auth on) and ``depot-registry edge serve`` as real
processes, the edge holding an edge token made with the CLI; clients use the origin's org and
pull tokens on the edge exactly as they would on origin (``x-token:<token>``).

- skopeo pushes an image and a 2-platform index to origin, then pulls both through the edge
  (``--all`` for the index) with identical digests; a second pull comes from the edge's cache
  (no more bytes from origin); a push through the edge lands on origin.
- containerd (``ctr images pull --user``) pulls and unpacks through the edge.
- podman logs in to the edge with ``x-token`` and a pull token, and pulls.

Failure messages quote the client's stderr and the tails of the edge's and origin's logs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.interop.oci_layout import OCI_MANIFEST, Image, LayoutWriter, read_blob, read_layout
from tests.interop.test_auth_clients import (  # noqa: F401 (podman: a fixture)
    AUTH_ERROR,
    Podman,
    containerd_process,
    describe,
    host_platform,
    podman,
    succeeded,
)

if TYPE_CHECKING:
    from tests.interop.conftest import AuthEdge, Skopeo

pytestmark = pytest.mark.interop

#: Small layers keep the file fast; more than one so every client handles a layer chain.
LAYER_SIZES = (16 * 1024, 256 * 1024, 1024 * 1024)
FROM_UPSTREAM = re.compile(rb"^depot_edge_bytes_from_upstream ([0-9.e+]+)$", re.MULTILINE)


async def bytes_from_upstream(edge: AuthEdge) -> float:
    """The edge's ``depot_edge_bytes_from_upstream`` gauge (blob bytes its fills fetched)."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        response = await http.get(f"http://{edge.host}/metrics")
    assert response.status_code == 200, response.text[:500]
    match = FROM_UPSTREAM.search(response.content)
    assert match is not None, response.text[:2000]
    return float(match[1])


async def origin_has(edge: AuthEdge, repository: str, image: Image, tag: str) -> set[str]:
    """The tag and blob digests of ``image`` found directly on origin (pull token, Basic)."""
    origin = edge.origin
    found: set[str] = set()
    paths = {tag: f"manifests/{tag}", **{d: f"blobs/{d}" for d in image.blob_digests()}}
    async with httpx.AsyncClient(
        base_url=f"http://{origin.host}",
        auth=("x-token", origin.pull_token),
        trust_env=False,
        timeout=10,
    ) as http:
        for key, path in paths.items():
            response = await http.head(f"/v2/{repository}/{path}", headers={"Accept": OCI_MANIFEST})
            assert response.status_code in (200, 404), (response, origin.log_tail())
            if response.status_code == 200:
                found.add(key)
    return found


def creds(token: str) -> str:
    return f"x-token:{token}"


async def push_to_origin(
    skopeo: Skopeo, edge: AuthEdge, source: str, repository: str, *flags: str
) -> None:
    """Copy ``source`` to origin (not the edge) with the org token."""
    result = await skopeo.attempt(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds(edge.origin.org_token),
        *flags,
        source,
        edge.origin.ref(repository, "v1"),
    )
    succeeded(result, edge)


async def pull_through_edge(skopeo: Skopeo, edge: AuthEdge, repository: str, out: Path) -> None:
    result = await skopeo.attempt(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        creds(edge.origin.pull_token),
        "--all",
        edge.ref(repository, "v1"),
        f"oci:{out}:v1",
    )
    succeeded(result, edge)


# -- skopeo -----------------------------------------------------------------------------------


async def test_skopeo_pulls_image_and_index_through_edge_and_pushes(
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
    assert await bytes_from_upstream(edge) == 0

    pull = "inspect", "--raw", "--tls-verify=false", "--creds", creds(edge.origin.pull_token)
    raw = succeeded(await skopeo.attempt(*pull, edge.ref("acme/app", "v1")), edge)
    assert raw == image.manifest
    raw = succeeded(await skopeo.attempt(*pull, edge.ref("acme/multi", "v1")), edge)
    assert raw == index.index

    out = tmp_path / "image-out"
    await pull_through_edge(skopeo, edge, "acme/app", out)
    ref = read_layout(out, "v1")
    assert (ref.digest, ref.content) == (image.manifest_digest, image.manifest)
    for digest in image.blob_digests():
        read_blob(out, digest)  # present, and its bytes hash to its digest

    out = tmp_path / "index-out"
    await pull_through_edge(skopeo, edge, "acme/multi", out)
    ref = read_layout(out, "v1")
    assert (ref.digest, ref.content) == (index.index_digest, index.index)
    for child in index.children:
        assert read_blob(out, child.manifest_digest) == child.manifest
        for digest in child.blob_digests():
            read_blob(out, digest)

    # Everything came through the edge's fills, once; a second pull is served from its cache.
    filled = await bytes_from_upstream(edge)
    assert filled > 0, edge.log_tail()
    await pull_through_edge(skopeo, edge, "acme/multi", tmp_path / "index-again")
    assert read_layout(tmp_path / "index-again", "v1").digest == index.index_digest
    assert await bytes_from_upstream(edge) == filled, edge.log_tail()

    # A push through the edge is passed to origin and lands there.
    pushed = LayoutWriter(tmp_path / "pushed")
    fresh = pushed.image(layer_sizes=LAYER_SIZES, platform=host_platform())
    pushed.tag(fresh, "latest")
    result = await skopeo.attempt(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds(edge.origin.org_token),
        f"oci:{pushed.root}:latest",
        edge.ref("acme/pushed", "v1"),
    )
    succeeded(result, edge)
    assert await origin_has(edge, "acme/pushed", fresh, "v1") == {"v1", *fresh.blob_digests()}
    raw = succeeded(await skopeo.attempt(*pull, edge.ref("acme/pushed", "v1")), edge)
    assert raw == fresh.manifest

    # The pull token may not push through the edge either.
    refused = await skopeo.attempt(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds(edge.origin.pull_token),
        f"oci:{pushed.root}:latest",
        edge.ref("acme/refused", "v1"),
    )
    assert refused.returncode > 0, describe(refused, edge)
    assert AUTH_ERROR.search(refused.stderr.decode(errors="replace")), describe(refused, edge)
    assert await origin_has(edge, "acme/refused", fresh, "v1") == set()


# -- containerd -------------------------------------------------------------------------------


async def test_containerd_pulls_and_unpacks_through_edge(
    tmp_path: Path, skopeo: Skopeo, auth_edge: AuthEdge
) -> None:
    edge = auth_edge
    layout = LayoutWriter(tmp_path / "source")
    image = layout.image(layer_sizes=LAYER_SIZES, platform=host_platform())
    layout.tag(image, "latest")
    await push_to_origin(skopeo, edge, f"oci:{layout.root}:latest", "acme/app")
    reference = f"{edge.host}/acme/app:v1"

    async with containerd_process(tmp_path / "containerd.log") as containerd:
        logs = [containerd.log]
        user = creds(edge.origin.pull_token)
        result = await containerd.ctr(
            "test", "images", "pull", "--plain-http", "--user", user, reference
        )
        succeeded(result, edge, logs)

        listed = succeeded(await containerd.ctr("test", "images", "ls"), edge, logs).decode()
        row = next((line for line in listed.splitlines() if line.startswith(reference)), "")
        assert image.manifest_digest in row, listed
        checked = succeeded(await containerd.ctr("test", "images", "check"), edge, logs).decode()
        row = next((line for line in checked.splitlines() if line.startswith(reference)), "")
        layers = len(image.layer_digests)
        assert f"complete ({layers + 1}/{layers + 1})" in row, checked  # config + layers
        assert row.split()[-1] == "true", f"not unpacked:\n{checked}"
        snapshots = succeeded(await containerd.ctr("test", "snapshots", "ls"), edge, logs)
        committed = [line for line in snapshots.decode().splitlines() if "Committed" in line]
        assert len(committed) == layers, snapshots.decode()
    assert await bytes_from_upstream(edge) > 0, edge.log_tail()


# -- podman -----------------------------------------------------------------------------------


async def test_podman_logs_in_to_edge_and_pulls(
    tmp_path: Path,
    skopeo: Skopeo,
    auth_edge: AuthEdge,
    podman: Podman,  # noqa: F811 (the fixture imported above)
) -> None:
    edge = auth_edge
    layout = LayoutWriter(tmp_path / "source")
    image = layout.image(layer_sizes=LAYER_SIZES, platform=host_platform())
    layout.tag(image, "latest")
    await push_to_origin(skopeo, edge, f"oci:{layout.root}:latest", "acme/app")

    authfile = podman.workdir / "auth.json"
    registry = ("--tls-verify=false", "--authfile", str(authfile))
    login = await podman.run(
        "login",
        *registry,
        *("--username", "x-token", "--password", edge.origin.pull_token),
        edge.host,
    )
    assert b"Login Succeeded" in succeeded(login, edge), describe(login, edge)
    assert edge.host in json.loads(authfile.read_text())["auths"]

    pulled = await podman.run("pull", *registry, f"{edge.host}/acme/app:v1")
    succeeded(pulled, edge)
    inspected = await podman.run("image", "inspect", f"{edge.host}/acme/app:v1")
    details = json.loads(succeeded(inspected, edge))[0]
    assert details["Id"] == image.config_digest.removeprefix("sha256:"), details
    assert details["Digest"] == image.manifest_digest, details
    assert await bytes_from_upstream(edge) > 0, edge.log_tail()
