"""The edge as a registry mirror, against real registries: CNCF Distribution with a Bearer
token service plays docker.io (anonymous pulls allowed, as on Docker Hub) and ghcr.io, behind
fault proxies; a real origin with two orgs sits beside them.

- Every address reaches the same image: ``?ns=docker.io`` (containerd), no ``ns`` for a name
  that is not an org's (Docker Engine's ``registry-mirrors``), the ``docker.io/`` prefix
  (podman) with Docker Hub's ``library/`` rule, explicit ``ghcr.io/...``; origin's names stay
  origin's. A 2-platform index and its children by digest; tag lists; pushes refused with a
  405 that says why; once warm, nothing more reaches the upstream.
- Access: an authenticated mirror takes any org's token (Basic, or a bearer token from the
  edge's ``/token``) and challenges anonymous callers; an anonymous mirror takes anyone.
- Per-upstream metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.integration.edges import edge_client, metric, metrics, start_edge
from tests.integration.mirrors import Upstream, running_upstream
from tests.integration.oci import (
    OCI_INDEX,
    assert_error,
    config_blob,
    guarded,
    image_manifest,
    index_manifest,
    new_image,
    push_manifest,
    random_blob,
)
from tests.integration.tenants import Tenants, basic, bearer_for, start_tenants

TIMEOUT = 60
KIB = 1024


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "origin")
    yield running
    running.origin.shutdown.set()
    running.store.close()


@pytest.fixture
async def hub(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Upstream]:
    async with running_upstream(nursery, tmp_path, "docker.io") as upstream:
        yield upstream


@pytest.fixture
async def ghcr(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Upstream]:
    async with running_upstream(nursery, tmp_path, "ghcr.io") as upstream:
        yield upstream


async def test_every_address_reaches_the_mirror(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, hub: Upstream, ghcr: Upstream
) -> None:
    with trio.fail_after(TIMEOUT):
        image = image_manifest(config_blob(), [random_blob(40 * KIB), random_blob(3 * KIB)])
        amd, arm = new_image(layers=2), new_image(layers=1)
        index = index_manifest([amd, arm])
        tool = new_image(layers=1)
        await hub.push("library/alpine", image, "3")
        await hub.push("library/multi", index, "1")
        await ghcr.push("owner/tool", tool, "v1")
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            own = new_image()
            await push_manifest(origin, "acme/app", own, "v1")
        edge = await start_edge(
            nursery,
            tenants,
            tmp_path / "edge",
            mirrors=(hub.mirror(), ghcr.mirror()),
            tag_freshness_seconds=3600,
        )
        async with edge_client(edge.url, basic(tenants.acme_pull)) as http:
            guarded(http)
            for path, params in [
                ("/v2/library/alpine/manifests/3", {"ns": "docker.io"}),  # containerd
                ("/v2/library/alpine/manifests/3", {}),  # Docker Engine's registry-mirrors
                ("/v2/docker.io/library/alpine/manifests/3", {}),  # podman's prefix
                ("/v2/docker.io/alpine/manifests/3", {}),  # explicit, Docker Hub's library/
            ]:
                got = await http.get(path, params=params, headers={"Accept": image.media_type})
                assert got.status_code == 200, (path, params, got.text)
                assert got.content == image.payload
                assert got.headers["Docker-Content-Digest"] == image.digest
            for blob in image.blobs:
                got = await http.get(f"/v2/docker.io/alpine/blobs/{blob.digest}")
                assert got.content == blob.data
                got = await http.get(
                    f"/v2/library/alpine/blobs/{blob.digest}", params={"ns": "docker.io"}
                )
                assert got.content == blob.data
                assert hub.gets(blob.digest) == 1
            head = await http.head(f"/v2/docker.io/alpine/blobs/{image.blobs[1].digest}")
            assert int(head.headers["Content-Length"]) == image.blobs[1].size

            got = await http.get("/v2/docker.io/library/multi/manifests/1")
            assert (got.content, got.headers["Content-Type"]) == (index.payload, OCI_INDEX)
            for child in (amd, arm):
                got = await http.get(f"/v2/library/multi/manifests/{child.digest}")
                assert got.content == child.payload
            got = await http.get("/v2/ghcr.io/owner/tool/manifests/v1")
            assert got.content == tool.payload
            got = await http.get(
                f"/v2/owner/tool/blobs/{tool.blobs[1].digest}", params={"ns": "ghcr.io"}
            )
            assert got.content == tool.blobs[1].data

            listed = await http.get("/v2/docker.io/library/alpine/tags/list")
            assert listed.json() == {"name": "docker.io/library/alpine", "tags": ["3"]}

            # Origin's names are origin's, with or without mirrors configured.
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.content == own.payload
            # ... unless the client says the image is Docker Hub's.
            asked = hub.proxy.count("HEAD", "manifest")
            assert_error(
                await http.get("/v2/acme/app/manifests/v1", params={"ns": "docker.io"}),
                404,
                "MANIFEST_UNKNOWN",
            )
            assert hub.proxy.count("HEAD", "manifest") == asked + 1

            # Warm: the same pulls again reach no upstream at all.
            before = len(hub.proxy.requests), len(ghcr.proxy.requests)
            for path in [
                "/v2/library/alpine/manifests/3",
                "/v2/docker.io/library/multi/manifests/1",
            ]:
                assert (await http.get(path)).status_code == 200
            for blob in image.blobs:
                assert (
                    await http.get(f"/v2/docker.io/alpine/blobs/{blob.digest}")
                ).content == blob.data
            assert (await http.get("/v2/ghcr.io/owner/tool/manifests/v1")).status_code == 200
            assert (len(hub.proxy.requests), len(ghcr.proxy.requests)) == before

            # Only the pull side is mirrored.
            for method, path in [
                ("PUT", "/v2/docker.io/library/alpine/manifests/4"),
                ("POST", "/v2/library/alpine/blobs/uploads/"),
                ("DELETE", f"/v2/docker.io/alpine/manifests/{image.digest}"),
            ]:
                response = await http.request(method, path, content=b"{}")
                error = assert_error(response, 405, "UNSUPPORTED")
                assert error["message"] == (
                    "docker.io is mirrored here for pulls only (manifests, blobs, tag lists): "
                    "push to docker.io itself"
                )
            text = await metrics(http)
            fills = len(image.blobs)  # each blob once, whichever address asked
            assert metric(text, "depot_edge_mirror_fills_total", 'upstream="docker.io"') == fills
            assert metric(text, "depot_edge_mirror_fills_total", 'upstream="ghcr.io"') == 1
            assert (
                metric(
                    text, "depot_edge_mirror_requests_total", 'status="200",upstream="docker.io"'
                )
                > 0
            )
            assert metric(text, "depot_edge_mirror_bytes_total", 'upstream="docker.io"') >= sum(
                b.size for b in image.blobs
            )
            # Docker Hub's rate-limit header is shown once an upstream sends it, not before.
            assert "depot_edge_mirror_ratelimit_remaining{" not in text


async def test_who_may_pull_through_a_mirror(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, hub: Upstream, ghcr: Upstream
) -> None:
    """docker.io mirrored for anyone, ghcr.io for this system's orgs' callers."""
    with trio.fail_after(TIMEOUT):
        image, tool = new_image(), new_image()
        await hub.push("library/alpine", image, "3")
        await ghcr.push("owner/tool", tool, "v1")
        edge = await start_edge(
            nursery,
            tenants,
            tmp_path / "edge",
            mirrors=(hub.mirror("anonymous"), ghcr.mirror("authenticated")),
        )
        tool_path = "/v2/ghcr.io/owner/tool/manifests/v1"
        async with edge_client(edge.url) as anonymous:
            guarded(anonymous)
            assert (await anonymous.get("/v2/docker.io/alpine/manifests/3")).content == (
                image.payload
            )
            assert (await anonymous.get("/v2/", params={"ns": "docker.io"})).status_code == 200

            refused = await anonymous.get(tool_path)
            assert_error(refused, 401, "UNAUTHORIZED")
            host = edge.url.removeprefix("http://")
            assert refused.headers["WWW-Authenticate"] == (
                f'Bearer realm="http://{host}/token",service="depot-registry",'
                'scope="repository:ghcr.io/owner/tool:pull"'
            )
            assert_error(await anonymous.get("/v2/", params={"ns": "ghcr.io"}), 401, "UNAUTHORIZED")
            # The anonymous token origin issues does not open it either.
            token = await bearer_for(anonymous, None, "repository:ghcr.io/owner/tool:pull")
            refused = await anonymous.get(tool_path, headers=token)
            assert_error(refused, 401, "UNAUTHORIZED")
            assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
            assert_error(
                await anonymous.get(tool_path, headers=basic(tenants.acme_pull[:-2] + "zz")),
                401,
                "UNAUTHORIZED",
            )
            assert ghcr.proxy.count("GET", "manifest") == 0  # nothing was fetched for them

            # Any org's token, as Basic or as the bearer token the edge's /token gives.
            for credentials in (
                basic(tenants.acme_pull),
                basic(tenants.other),
                basic(tenants.acme_project),
                await bearer_for(
                    anonymous, tenants.acme_pull, "repository:ghcr.io/owner/tool:pull"
                ),
                await bearer_for(anonymous, tenants.other, "repository:owner/tool:pull"),
            ):
                got = await anonymous.get(tool_path, headers=credentials)
                assert got.status_code == 200 and got.content == tool.payload
                got = await anonymous.get("/v2/", params={"ns": "ghcr.io"}, headers=credentials)
                assert got.status_code == 200
            got = await anonymous.get(
                "/v2/owner/tool/manifests/v1",
                params={"ns": "ghcr.io"},
                headers=basic(tenants.other),
            )
            assert got.content == tool.payload
