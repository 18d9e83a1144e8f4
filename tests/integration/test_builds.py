"""Saved builds against a real origin with a fake clock: create through the API, push to
``<project>:<build id>``, pull by build id, save-tag (base host, org subdomain, path style) and
digest; expiry after 7 days (or the project's TTL) answering MANIFEST_UNKNOWN at once; delete;
storage metering checked against the blobs actually stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from origin.builds.metering import Metering
from origin.builds.records import is_build_id
from origin.builds.store import BuildStore
from origin.server import open_registry
from tests.integration.oci import (
    OCI_INDEX,
    Manifest,
    assert_error,
    config_blob,
    encode,
    guarded,
    image_manifest,
    new_image,
    push_blob,
    push_manifest,
    random_blob,
)
from tests.integration.tenants import BASE_DOMAIN, Tenants, basic, start_tenants

#: Generous: the machine running these may be loaded. Never a timing assertion.
TIMEOUT = 120
#: 2030-03-17 UTC: mid-month, so a week's byte-hours stay in one month.
START = 1_900_000_000.0
WEEK = 7 * 86400
ORG_HOST = f"acme.{BASE_DOMAIN}"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def tenants(
    nursery: trio.Nursery, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Tenants]:
    running = await start_tenants(
        nursery,
        tmp_path / "data",
        clock=clock,
        storage_price_per_gb_month=0.5,
        metering_interval_seconds=10 * 86400.0,
    )
    yield running
    running.origin.shutdown.set()
    running.store.close()


def client(tenants: Tenants, token: str, host: str = BASE_DOMAIN) -> httpx.AsyncClient:
    """A client on ``host`` (the Host header) with Basic x-token credentials; 5xx fails."""
    headers = {**basic(token), "Host": host, "Accept-Encoding": "identity"}
    return guarded(
        httpx.AsyncClient(base_url=tenants.url, trust_env=False, timeout=60, headers=headers)
    )


async def create_build(http: httpx.AsyncClient, project: str, **body: Any) -> dict[str, Any]:
    response = await http.post(f"/api/v1/projects/{project}/builds", json=body)
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"/api/v1/projects/{project}/builds/{document['id']}"
    return document


async def get_manifest(
    http: httpx.AsyncClient, repo: str, reference: str, method: str = "GET"
) -> httpx.Response:
    accept = "application/vnd.oci.image.manifest.v1+json, " + OCI_INDEX
    return await http.request(
        method, f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept}
    )


async def assert_pulls(http: httpx.AsyncClient, repo: str, reference: str, image: Manifest) -> None:
    response = await get_manifest(http, repo, reference)
    assert response.status_code == 200, (repo, reference, response.text)
    assert response.content == image.payload
    assert response.headers["Docker-Content-Digest"] == image.digest


async def assert_gone(http: httpx.AsyncClient, repo: str, reference: str) -> None:
    for method in ("GET", "HEAD"):
        assert_error(await get_manifest(http, repo, reference, method), 404, "MANIFEST_UNKNOWN")


def image_size(image: Manifest) -> int:
    """The manifest(s) and their distinct blobs, each counted once."""
    manifests = {image.digest: image.size}
    blobs: dict[str, int] = {}
    for child in image.children:
        manifests[child.digest] = child.size
        blobs.update({b.digest: b.size for b in child.blobs})
    blobs.update({b.digest: b.size for b in image.blobs})
    return sum(manifests.values()) + sum(blobs.values())


def multi_platform_index() -> Manifest:
    """An index of two images sharing a layer, plus a buildx-style attestation entry."""
    shared = random_blob(700)
    amd64 = image_manifest(config_blob(), [shared, random_blob(300)])
    arm64 = image_manifest(config_blob(), [shared, random_blob(400)])
    attestation = image_manifest(config_blob(), [random_blob(50)])
    platforms = [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "unknown", "architecture": "unknown"},
    ]
    children = [amd64, arm64, attestation]
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [c.descriptor(platform=p) for c, p in zip(children, platforms, strict=True)],
    }
    return Manifest(encode(document), OCI_INDEX, children=tuple(children))


async def test_save_pull_list_and_expire(tenants: Tenants, clock: FakeClock) -> None:
    project = tenants.project
    path_repo = f"acme/{project}"
    with trio.fail_after(TIMEOUT):
        async with (
            client(tenants, tenants.acme) as base,
            client(tenants, tenants.acme, ORG_HOST) as org_host,
            client(tenants, tenants.acme_project) as project_client,
        ):
            # A build, pushed with the project's own token: blobs path style, the manifest
            # by the legacy one-component name.
            first = await create_build(project_client, project, save_tags=["main"])
            assert is_build_id(first["id"]) and first["project_id"] == project
            assert first["repository"] == path_repo and first["state"] == "pending"
            assert first["expires_at"] == first["created_at"] + WEEK == START + WEEK
            image = new_image(layers=2)
            for blob in image.blobs:
                await push_blob(project_client, path_repo, blob)
            await push_manifest(project_client, project, image, first["id"])

            bound = (await base.get(f"/api/v1/projects/{project}/builds/{first['id']}")).json()
            assert bound["state"] == "ready" and bound["digest"] == image.digest
            assert bound["media_type"] == image.media_type
            assert bound["platforms"] == ["linux/amd64"]
            assert bound["size"] == image_size(image)
            assert bound["tags"] == [first["id"], "main"]

            for http, repo in ((base, project), (base, path_repo), (org_host, project)):
                await assert_pulls(http, repo, first["id"], image)
                await assert_pulls(http, repo, "main", image)
                await assert_pulls(http, repo, image.digest, image)

            # A multi-platform build a second later, and images that are not builds.
            clock.advance(1)
            second = await create_build(base, project)
            index = multi_platform_index()
            await push_manifest(base, path_repo, index, second["id"])
            pinned, stable = new_image(), new_image()
            await push_manifest(base, project, pinned, "pinned")
            await push_manifest(base, "acme/app", stable, "stable")

            listed = (await base.get(f"/api/v1/projects/{project}/builds")).json()["builds"]
            assert [b["id"] for b in listed] == [second["id"], first["id"]]
            assert listed[0]["platforms"] == ["linux/amd64", "linux/arm64/v8"]
            assert listed[0]["size"] == image_size(index)
            assert listed[0]["save_tags"] == [] and listed[0]["created_at"] == START + 1
            for child in index.children:
                await assert_pulls(org_host, project, child.digest, child)

            # A week later every name of the first build is gone at once; no GC has run.
            clock.advance(WEEK - 1)
            for http, repo in ((base, project), (base, path_repo), (org_host, project)):
                for reference in (first["id"], "main", image.digest):
                    await assert_gone(http, repo, reference)
            await assert_pulls(base, project, second["id"], index)  # a second younger
            clock.advance(1)
            await assert_gone(base, project, second["id"])
            for child in index.children:
                await assert_gone(base, project, child.digest)
            await assert_pulls(base, project, "pinned", pinned)
            await assert_pulls(base, "acme/app", "stable", stable)
            await assert_pulls(org_host, "app", stable.digest, stable)

            listed = (await base.get(f"/api/v1/projects/{project}/builds")).json()["builds"]
            assert [b["state"] for b in listed] == ["expired", "expired"]

            # Pushing to an expired build binds nothing: the tag still does not resolve.
            late = new_image()
            await push_manifest(base, project, late, second["id"])
            await assert_gone(base, project, second["id"])


async def test_plain_tag_on_a_build_digest_keeps_it(tenants: Tenants, clock: FakeClock) -> None:
    project = tenants.project
    with trio.fail_after(TIMEOUT):
        async with client(tenants, tenants.acme) as http:
            build = await create_build(http, project, save_tags=["nightly"])
            image = new_image()
            await push_manifest(http, project, image, build["id"])
            await push_manifest(http, project, image, "release")  # a plain tag, same digest
            clock.advance(WEEK)
            await assert_gone(http, project, build["id"])
            await assert_gone(http, project, "nightly")
            await assert_pulls(http, project, "release", image)
            await assert_pulls(http, project, image.digest, image)  # a live tag holds it
            # A save-tag moved by a plain push is a plain tag from then on.
            moved = new_image()
            await push_manifest(http, project, moved, "nightly")
            await assert_pulls(http, project, "nightly", moved)


async def test_retention_per_org_and_project(tenants: Tenants, clock: FakeClock) -> None:
    project = tenants.project
    with trio.fail_after(TIMEOUT):
        async with (
            client(tenants, tenants.acme) as http,
            client(tenants, tenants.acme_project) as project_client,
            client(tenants, tenants.acme_pull) as pull_client,
        ):
            other_project = await tenants.store.create_project(tenants.acme_id, "api", clock())
            org_url = "/api/v1/orgs/acme/retention"
            project_url = f"/api/v1/projects/{project}/retention"
            initial = (await http.get(project_url)).json()
            assert initial == {
                "org": "acme",
                "project_id": project,
                "build_ttl_seconds": None,
                "effective_build_ttl_seconds": WEEK,
            }
            body = {"build_ttl_seconds": 3600}
            for refused in (project_client, pull_client):
                assert_error(await refused.put(project_url, json=body), 403, "DENIED")
            assert_error(await pull_client.put(org_url, json=body), 403, "DENIED")
            assert_error(
                await http.put(project_url, json={"build_ttl_seconds": -1}),
                400,
                "INVALID_REQUEST",
            )
            set_project = await http.put(project_url, json=body)
            assert set_project.status_code == 200, set_project.text
            assert set_project.json()["effective_build_ttl_seconds"] == 3600
            set_org = await http.put(org_url, json={"build_ttl_seconds": 86400})
            assert set_org.json() == {
                "org": "acme",
                "build_ttl_seconds": 86400,
                "effective_build_ttl_seconds": 86400,
            }
            assert (await http.get(project_url)).json()["effective_build_ttl_seconds"] == 3600

            short = await create_build(project_client, project)
            daily = await create_build(http, other_project.id)
            assert short["expires_at"] == clock() + 3600
            assert daily["expires_at"] == clock() + 86400
            image = new_image()
            await push_manifest(http, project, image, short["id"])
            await push_manifest(http, other_project.id, image, daily["id"])
            clock.advance(3600)
            await assert_gone(http, project, short["id"])
            await assert_gone(http, project, image.digest)
            await assert_pulls(http, other_project.id, daily["id"], image)
            clock.advance(86400 - 3600)
            await assert_gone(http, other_project.id, daily["id"])

            # Unset both: the origin's default applies again.
            unset = await http.put(project_url, json={"build_ttl_seconds": None})
            assert unset.json()["effective_build_ttl_seconds"] == 86400  # the org's
            unset = await http.put(org_url, json={"build_ttl_seconds": None})
            assert unset.json()["effective_build_ttl_seconds"] == WEEK
            assert (await create_build(http, project))["expires_at"] == clock() + WEEK


async def test_delete_build_and_permissions(tenants: Tenants, clock: FakeClock) -> None:
    project = tenants.project
    with trio.fail_after(TIMEOUT):
        async with (
            client(tenants, tenants.acme) as http,
            client(tenants, tenants.acme_pull) as pull_client,
            client(tenants, tenants.other) as other_client,
        ):
            builds_url = f"/api/v1/projects/{project}/builds"
            assert_error(await pull_client.post(builds_url, json={}), 403, "DENIED")
            assert_error(await other_client.post(builds_url, json={}), 404, "NOT_FOUND")
            assert_error(await other_client.get(builds_url), 404, "NOT_FOUND")
            assert_error(
                await http.post(builds_url, json={"save_tags": ["a/b"]}), 400, "INVALID_REQUEST"
            )
            assert_error(await http.post(builds_url, json={"tags": []}), 400, "INVALID_REQUEST")

            build = await create_build(http, project, save_tags=["keep"])
            keeper = await create_build(http, project, save_tags=["shared"])
            image, kept = new_image(), new_image()
            await push_manifest(http, project, image, build["id"])
            await push_manifest(http, project, kept, keeper["id"])
            # Pull tokens read builds but cannot delete them.
            assert (await pull_client.get(f"{builds_url}/{build['id']}")).status_code == 200
            assert_error(await pull_client.delete(f"{builds_url}/{build['id']}"), 403, "DENIED")

            deleted = await http.delete(f"{builds_url}/{build['id']}")
            assert deleted.status_code == 204
            assert_error(await http.get(f"{builds_url}/{build['id']}"), 404, "NOT_FOUND")
            assert_error(await http.delete(f"{builds_url}/{build['id']}"), 404, "NOT_FOUND")
            for reference in (build["id"], "keep", image.digest):
                await assert_gone(http, project, reference)
            tags = (await http.get(f"/v2/{project}/tags/list")).json()["tags"]
            assert build["id"] not in tags and "keep" not in tags
            listed = (await http.get(builds_url)).json()["builds"]
            assert [b["id"] for b in listed] == [keeper["id"]]
            await assert_pulls(http, project, "shared", kept)
            # A build created without a body at all.
            bare = await http.post(builds_url)
            assert bare.status_code == 201, bare.text
            assert bare.json()["save_tags"] == []


def stored_on_disk(data_dir: Path, digests: set[str]) -> int:
    total = 0
    for digest in digests:
        algorithm, encoded = digest.split(":")
        total += (
            (data_dir / "storage" / "blobs" / algorithm / encoded[:2] / encoded / "data")
            .stat()
            .st_size
        )
    return total


async def test_metering_counts_each_blob_once(tenants: Tenants, clock: FakeClock) -> None:
    project = tenants.project
    settings = tenants.origin.settings
    with trio.fail_after(TIMEOUT):
        async with (
            client(tenants, tenants.acme) as http,
            client(tenants, tenants.other) as other_client,
            client(tenants, tenants.acme_project) as project_client,
        ):
            image = new_image(layers=3)
            build = await create_build(http, project)
            await push_manifest(http, project, image, build["id"])
            # The same image again in another repository of the org, and a second image
            # sharing one layer with it: shared blobs and manifests count once.
            await push_manifest(http, "acme/app", image, "v1")
            extra = random_blob(2048)
            second = image_manifest(config_blob(), [image.blobs[1], extra])
            await push_manifest(http, "acme/app", second, "v2")
            await push_manifest(other_client, "other/app", new_image(layers=2), "v1")

            blobs = {b.digest: b.size for b in (*image.blobs, *second.blobs)}
            expected = sum(blobs.values()) + image.size + second.size
            assert stored_on_disk(settings.data_dir, set(blobs)) == sum(blobs.values())

            usage = (await http.get("/api/v1/orgs/acme/usage")).json()
            assert usage["org"] == "acme" and usage["stored_bytes"] == expected
            assert usage["month"] == "2030-03" and usage["price_per_gb_month_usd"] == 0.5
            assert_error(await project_client.get("/api/v1/orgs/acme/usage"), 403, "DENIED")
            assert_error(await other_client.get("/api/v1/orgs/acme/usage"), 404, "NOT_FOUND")

            # Accrual rounds as the origin's periodic task runs them, on the same database.
            async with open_registry(settings, clock) as registry:
                store = BuildStore(registry.metadata.database)
                metering = Metering(store, tenants.store, registry, clock)
                await metering.accrue()  # starts (or re-measures) at the current time
                clock.advance(10 * 3600)
                await metering.accrue()
                await metering.accrue()  # no time passed: adds nothing
            usage = (await http.get("/api/v1/orgs/acme/usage")).json()
            assert usage["byte_hours"] == pytest.approx(expected * 10)
            assert usage["accrued_at"] == clock()
            cost = expected * 10 / 730 / 1e9 * 0.5
            assert usage["month_to_date_cost_usd"] == pytest.approx(cost, abs=1e-6)
            other = (await other_client.get("/api/v1/orgs/other/usage")).json()
            assert 0 < other["stored_bytes"] and other["byte_hours"] == pytest.approx(
                other["stored_bytes"] * 10
            )


async def test_expired_build_is_collected_and_its_bytes_freed(
    tenants: Tenants, clock: FakeClock
) -> None:
    """Save, expire, collect: the build's blobs leave the disk; a live org image stays."""
    from origin.builds.service import BuildService
    from origin.retention.gc import collect

    build_image, kept_image = new_image(layers=2), new_image(layers=1)
    project = tenants.project
    with trio.fail_after(TIMEOUT):
        async with client(tenants, tenants.acme) as http:
            build = await create_build(http, project, save_tags=["main"])
            await push_manifest(http, project, build_image, build["id"])
            await push_manifest(http, "acme/app", kept_image, "stable")
        data_dir = tenants.origin.settings.data_dir
        build_digests = {b.digest for b in build_image.blobs}
        assert stored_on_disk(data_dir, build_digests) > 0
        clock.advance(WEEK + 3 * 3600)  # expired, and past the 2 h grace period
        async with open_registry(tenants.origin.settings, clock) as registry:
            store = BuildStore(registry.metadata.database)
            service = BuildService(store, registry, clock)
            assert await service.retire_expired() == 1
            assert await service.retire_expired() == 0  # once
            report = await collect(registry, now=clock(), grace_seconds=2 * 3600)
        freed = {digest for digest, _ in report.blobs}
        assert build_digests <= freed
        assert report.bytes_freed >= sum(b.size for b in build_image.blobs)
        for digest in build_digests:
            algorithm, encoded = digest.split(":")
            path = data_dir / "storage" / "blobs" / algorithm / encoded[:2] / encoded / "data"
            assert not path.exists()
        async with client(tenants, tenants.acme) as http:
            await assert_pulls(http, "acme/app", "stable", kept_image)
            for blob in kept_image.blobs:
                fetched = await http.get(f"/v2/acme/app/blobs/{blob.digest}")
                assert fetched.content == blob.data


async def test_gc_dry_run_reports_what_the_run_frees_expired_builds_included(
    tenants: Tenants, clock: FakeClock
) -> None:
    """A dry run used to skip retiring expired builds' tags and report 0 bytes where the
    real run right after freed the build's layers."""
    from origin.cli_gc import collect_with_builds
    from origin.server import open_services

    build_image = new_image(layers=2)
    with trio.fail_after(TIMEOUT):
        async with client(tenants, tenants.acme) as http:
            build = await create_build(http, tenants.project, save_tags=["main"])
            await push_manifest(http, tenants.project, build_image, build["id"])
        clock.advance(WEEK + 3 * 3600)  # expired, and past the 2 h grace period
        settings = tenants.origin.settings
        runs = {}
        for dry_run in (True, True, False):  # the dry runs change nothing
            async with open_services(settings, clock) as services:
                report = await collect_with_builds(
                    services, now=clock(), grace_seconds=2 * 3600, dry_run=dry_run
                )
            assert report.builds_retired == 1, (dry_run, report)
            runs.setdefault(dry_run, []).append(report)
        dry, real = runs[True][0], runs[False][0]
        assert runs[True][1] == dry
        assert dry.bytes_freed >= sum(b.size for b in build_image.blobs) > 0
        assert (dry.bytes_freed, dry.blobs, dry.manifests) == (
            real.bytes_freed,
            real.blobs,
            real.manifests,
        )
