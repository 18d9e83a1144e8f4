"""Online garbage collection against a real origin: what goes, what stays, bytes freed on
disk, and pushes racing a collection.

Time is injected: ``collect`` gets ``now`` explicitly (hours ahead to make everything old),
nothing sleeps. The collector opens the origin's data directory on its own, as
``depot-registry gc`` does beside a serving origin.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import trio
import trio.lowlevel

from config.settings import OriginSettings
from core.digest import parse_digest
from core.errors import ManifestBlobUnknown
from core.reference import parse_manifest_reference, parse_repository_name
from core.storage.driver import PathNotFound
from origin.metadata.schema import blobs
from origin.registry.paths import blob_path
from origin.registry.registry import Registry
from origin.retention.gc import collect
from origin.server import open_registry
from tests.integration.conftest import RunningOrigin, start_origin
from tests.integration.oci import (
    EMPTY_CONFIG,
    TIMEOUT,
    Blob,
    Manifest,
    assert_error,
    config_blob,
    guarded,
    image_manifest,
    index_manifest,
    new_artifact,
    new_image,
    push_blob,
    push_manifest,
    put_manifest,
    random_blob,
)
from tests.postgres import fresh_schema, require_postgres

HOURS = 3600.0
LATER = 3 * HOURS  # past the default grace period of 2 h


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


@pytest.fixture
async def registry(origin: RunningOrigin) -> AsyncIterator[Registry]:
    async with open_registry(origin.settings) as opened:
        yield opened


def stored_bytes(origin: RunningOrigin) -> int:
    root = origin.settings.data_dir / "storage" / "blobs"
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def blob_file(origin: RunningOrigin, digest: str) -> Path:
    return origin.settings.data_dir / "storage" / blob_path(parse_digest(digest))


async def assert_pullable(http: httpx.AsyncClient, repo: str, manifest: Manifest) -> None:
    response = await http.get(f"/v2/{repo}/manifests/{manifest.digest}")
    assert response.status_code == 200, response.text
    assert response.content == manifest.payload
    for blob in manifest.blobs:
        response = await http.get(f"/v2/{repo}/blobs/{blob.digest}")
        assert response.status_code == 200, (blob.digest, response.text)
        assert response.content == blob.data
    for child in manifest.children:
        await assert_pullable(http, repo, child)


async def assert_gone(
    http: httpx.AsyncClient, repo: str, manifest: Manifest, shared: frozenset[str] = frozenset()
) -> None:
    """The manifest and its blobs (but those in ``shared``, used by live manifests) are gone."""
    response = await http.get(f"/v2/{repo}/manifests/{manifest.digest}")
    assert_error(response, 404, "MANIFEST_UNKNOWN")
    for blob in manifest.blobs:
        if blob.digest in shared:
            continue
        assert_error(await http.get(f"/v2/{repo}/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")


async def assert_every_blob_row_has_bytes(registry: Registry) -> None:
    def digests(conn: sa.Connection) -> list[str]:
        return [str(row[0]) for row in conn.execute(sa.select(blobs.c.digest))]

    for digest in await registry.metadata.read(digests):
        try:
            await registry.storage.stat(blob_path(parse_digest(digest)))
        except PathNotFound:
            raise AssertionError(f"blob row {digest} without bytes") from None


async def test_dry_run_lists_then_collection_frees_the_bytes(
    http: httpx.AsyncClient, origin: RunningOrigin, registry: Registry
) -> None:
    with trio.fail_after(TIMEOUT):
        kept, dropped = new_image(layers=2), new_image(layers=2)
        await push_manifest(http, "lib/app", kept, "v1")
        await push_manifest(http, "lib/app", dropped, "v2")
        assert (await http.delete("/v2/lib/app/manifests/v2")).status_code == 202
        before = stored_bytes(origin)
        now = time.time() + LATER

        dry = await collect(registry, now=now, grace_seconds=2 * HOURS, dry_run=True)
        assert dry.dry_run
        assert dry.manifests == (("lib/app", dropped.digest),)
        dropped_blobs = {(b.digest, b.size) for b in dropped.blobs}
        assert set(dry.links) == {("lib/app", digest) for digest, _ in dropped_blobs}
        assert set(dry.blobs) == dropped_blobs
        assert dry.bytes_freed == sum(b.size for b in dropped.blobs)
        assert stored_bytes(origin) == before  # nothing deleted
        await assert_pullable(http, "lib/app", dropped)

        report = await collect(registry, now=now, grace_seconds=2 * HOURS, dry_run=False)
        assert not report.dry_run
        assert report.manifests == dry.manifests
        assert set(report.links) == set(dry.links) and set(report.blobs) == set(dry.blobs)
        assert (report.manifests_deleted, report.links_removed, report.blobs_deleted) == (1, 3, 3)
        assert report.refused == 0
        assert stored_bytes(origin) == before - report.bytes_freed
        assert all(not blob_file(origin, b.digest).exists() for b in dropped.blobs)
        await assert_gone(http, "lib/app", dropped)
        await assert_pullable(http, "lib/app", kept)

        again = await collect(registry, now=now, grace_seconds=2 * HOURS, dry_run=False)
        assert again.manifests == again.links == () and again.blobs == ()
        await assert_every_blob_row_has_bytes(registry)


async def test_the_grace_period_protects_a_fresh_upload(
    http: httpx.AsyncClient, registry: Registry
) -> None:
    with trio.fail_after(TIMEOUT):
        config, layer = config_blob(), random_blob(4096)
        await push_blob(http, "lib/app", config)
        await push_blob(http, "lib/app", layer)
        # An hour later the manifest is still not pushed: the blobs are young, kept.
        report = await collect(registry, now=time.time() + HOURS, grace_seconds=2 * HOURS)
        assert report.blobs == () and report.links == ()
        manifest = image_manifest(config, [layer])
        assert (await put_manifest(http, "lib/app", "v1", manifest)).status_code == 201
        await collect(registry, now=time.time() + LATER, grace_seconds=2 * HOURS)
        await assert_pullable(http, "lib/app", manifest)

        # Never used by a manifest, and old: collected.
        orphan = random_blob(100)
        await push_blob(http, "lib/app", orphan)
        report = await collect(registry, now=time.time() + LATER, grace_seconds=2 * HOURS)
        assert report.blobs == ((orphan.digest, orphan.size),)
        assert_error(await http.get(f"/v2/lib/app/blobs/{orphan.digest}"), 404, "BLOB_UNKNOWN")


async def test_index_children_and_referrers_of_live_manifests_are_kept(
    http: httpx.AsyncClient, registry: Registry
) -> None:
    with trio.fail_after(TIMEOUT):
        amd64, arm64 = new_image(), new_image()
        index = index_manifest([amd64, arm64])
        await push_manifest(http, "lib/app", index, "v1")  # children pushed by digest only
        signature = new_artifact("application/vnd.example.sig", index)
        await push_manifest(http, "lib/app", signature)  # untagged, subject is live
        sbom = new_artifact("application/vnd.example.sbom", signature)  # referrer of referrer
        await push_manifest(http, "lib/app", sbom)
        untagged = new_image()
        await push_manifest(http, "lib/app", untagged)
        stray = new_artifact("application/vnd.example.sig", untagged)
        await push_manifest(http, "lib/app", stray)

        report = await collect(registry, now=time.time() + LATER, grace_seconds=2 * HOURS)
        assert set(report.manifests) == {("lib/app", untagged.digest), ("lib/app", stray.digest)}
        for manifest in (index, signature, sbom):
            await assert_pullable(http, "lib/app", manifest)
        for manifest in (untagged, stray):  # the live artifacts share the empty config
            await assert_gone(http, "lib/app", manifest, frozenset({EMPTY_CONFIG.digest}))
        listed = (await http.get(f"/v2/lib/app/referrers/{index.digest}")).json()["manifests"]
        assert [entry["digest"] for entry in listed] == [signature.digest]

        # Untag the index: the whole tree goes, referrers included, children after it.
        assert (await http.delete("/v2/lib/app/manifests/v1")).status_code == 202
        report = await collect(registry, now=time.time() + LATER, grace_seconds=2 * HOURS)
        order = [digest for _, digest in report.manifests]
        assert order.index(index.digest) < min(order.index(amd64.digest), order.index(arm64.digest))
        assert len(report.manifests) == 5 and report.refused == 0
        for manifest in (index, amd64, arm64, signature, sbom):
            await assert_gone(http, "lib/app", manifest)
        await assert_every_blob_row_has_bytes(registry)


async def test_extra_roots_keep_untagged_builds(
    http: httpx.AsyncClient, registry: Registry
) -> None:
    with trio.fail_after(TIMEOUT):
        build = new_image()
        await push_manifest(http, "acme/web", build)  # by digest: no tag
        repository_id = await registry.metadata.repository_id("acme/web")
        assert repository_id is not None

        async def live_builds() -> list[tuple[int, str]]:
            return [(repository_id, build.digest)]

        now = time.time() + LATER
        report = await collect(registry, now=now, grace_seconds=2 * HOURS, extra_roots=live_builds)
        assert report.manifests == ()
        await assert_pullable(http, "acme/web", build)
        report = await collect(registry, now=now, grace_seconds=2 * HOURS)  # build expired
        assert report.manifests == (("acme/web", build.digest),)


async def _push_racing(http: httpx.AsyncClient, n: int, shared: Blob) -> tuple[str, Manifest, int]:
    """Push a manifest over ``shared``, already in ``race/src`` and unreferenced: mounted into
    another repository, re-used by HEAD in the same one, or uploaded again elsewhere."""
    mode = n % 3
    repo = "race/src" if mode == 1 else f"race/dst{n % 2}"
    config = config_blob()
    manifest = image_manifest(config, [shared])
    if mode == 0:
        response = await http.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": shared.digest, "from": "race/src"}
        )
        assert response.status_code in (201, 202), response.text
        if response.status_code == 202:  # the collector took it first: upload it
            uploaded = await http.put(
                response.headers["Location"],
                params={"digest": shared.digest},
                content=shared.data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert uploaded.status_code == 201, uploaded.text
    elif mode == 1:
        head = await http.head(f"/v2/{repo}/blobs/{shared.digest}")
        assert head.status_code in (200, 404)
        if head.status_code == 404:
            await push_blob(http, repo, shared)
    else:
        await push_blob(http, repo, shared)
    await push_blob(http, repo, config)
    response = await put_manifest(http, repo, f"t{n}", manifest)
    return repo, manifest, response.status_code


async def _race_one_round(
    http: httpx.AsyncClient, registry: Registry, rng: random.Random, n: int, shared: Blob
) -> tuple[str, Manifest, int]:
    """A push and one to three collections (grace 0) at once, interleaved at random."""
    result: list[tuple[str, Manifest, int]] = []

    async def pusher() -> None:
        for _ in range(rng.randrange(4)):
            await trio.lowlevel.checkpoint()
        result.append(await _push_racing(http, n, shared))

    async def collector() -> None:
        for _ in range(rng.randrange(1, 4)):
            for _ in range(rng.randrange(6)):
                await trio.lowlevel.checkpoint()
            await collect(registry, now=time.time(), grace_seconds=0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pusher)
        nursery.start_soon(collector)
    return result[0]


async def test_pushes_racing_a_collection_succeed_whole_or_fail_cleanly(
    http: httpx.AsyncClient, registry: Registry
) -> None:
    rng = random.Random(5)
    accepted: list[tuple[str, Manifest]] = []
    outcomes = {201: 0, 400: 0}
    with trio.fail_after(TIMEOUT * 8):
        for n in range(30):
            shared = random_blob(2048 + n)
            await push_blob(http, "race/src", shared)  # linked, referenced by nothing
            repo, manifest, status = await _race_one_round(http, registry, rng, n, shared)
            outcomes[status] += 1  # any other status (a 500 fails in guarded) is a bug
            if status == 400:
                response = await put_manifest(http, repo, f"t{n}", manifest)
                assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
                # The client retries: pushes the blobs again, then the manifest.
                await push_manifest(http, repo, manifest, f"t{n}")
            accepted.append((repo, manifest))
            for accepted_repo, accepted_manifest in accepted:
                await assert_pullable(http, accepted_repo, accepted_manifest)
            await assert_every_blob_row_has_bytes(registry)

        # Tagged and complete: a final collection keeps every one of them.
        await collect(registry, now=time.time() + LATER, grace_seconds=0)
        for repo, manifest in accepted:
            await assert_pullable(http, repo, manifest)
    print("race outcomes", outcomes)
    assert outcomes[201] + outcomes[400] == 30


# -- forced interleavings: a collection inside the push's window, every time -----------------


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry on a data directory of its own, driven through the domain layer."""
    async with open_registry(OriginSettings(data_dir=tmp_path / "bare")) as opened:
        yield opened


async def commit(registry: Registry, repo: str, blob: Blob) -> None:
    staged = f"uploads/{os.urandom(16).hex()}/data"
    await registry.storage.put(staged, blob.data)
    name = parse_repository_name(repo)
    await registry.blobs.commit(name, staged, parse_digest(blob.digest), blob.size)


async def test_a_manifest_whose_blob_goes_after_the_check_is_refused(
    bare: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        config, layer = config_blob(), random_blob(300)
        for blob in (config, layer):
            await commit(bare, "lib/app", blob)
        checked = bare.metadata.missing_references
        collected = []

        async def check_then_collect(repository_id: int, references: Any) -> Any:
            missing = await checked(repository_id, references)
            collected.append(await collect(bare, now=time.time() + LATER, grace_seconds=0))
            return missing

        monkeypatch.setattr(bare.metadata, "missing_references", check_then_collect)
        manifest = image_manifest(config, [layer])
        name, tag = parse_repository_name("lib/app"), parse_manifest_reference("v1")
        with pytest.raises(ManifestBlobUnknown):
            await bare.manifests.put(name, tag, manifest.payload, manifest.media_type)
        assert collected[0].blobs_deleted == 2  # the check passed, then both went
        assert await bare.metadata.manifest("lib/app", digest=manifest.digest) is None

        monkeypatch.undo()  # the client pushes again: blobs, then the manifest
        for blob in (config, layer):
            await commit(bare, "lib/app", blob)
        await bare.manifests.put(name, tag, manifest.payload, manifest.media_type)
        report = await collect(bare, now=time.time() + LATER, grace_seconds=0)
        assert report.blobs == ()
        await assert_every_blob_row_has_bytes(bare)


async def test_a_mount_whose_blob_goes_after_the_check_falls_back_to_an_upload(
    bare: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(300)
        await commit(bare, "lib/src", blob)
        looked_up = bare.metadata.linked_blob

        async def look_up_then_collect(repository: str, digest: str) -> Any:
            found = await looked_up(repository, digest)
            await collect(bare, now=time.time() + LATER, grace_seconds=0)
            return found

        monkeypatch.setattr(bare.metadata, "linked_blob", look_up_then_collect)
        source, target = parse_repository_name("lib/src"), parse_repository_name("lib/dst")
        assert not await bare.blobs.mount(target, source, parse_digest(blob.digest))
        monkeypatch.undo()
        assert await bare.metadata.linked_blob("lib/dst", blob.digest) is None
        await commit(bare, "lib/dst", blob)  # the upload it falls back to
        assert await bare.metadata.linked_blob("lib/dst", blob.digest) is not None
        await assert_every_blob_row_has_bytes(bare)


async def test_the_origin_collects_periodically(nursery: trio.Nursery, tmp_path: Path) -> None:
    running = await start_origin(
        nursery, tmp_path / "data", auth=False, gc_interval_seconds=0.05, gc_grace_seconds=0
    )
    async with httpx.AsyncClient(base_url=running.url, trust_env=False) as http:
        guarded(http)
        with trio.fail_after(TIMEOUT):
            image, orphan = new_image(), random_blob(500)
            while True:  # with grace 0, a round may take the layers before the manifest
                for blob in image.blobs:
                    await push_blob(http, "lib/app", blob)
                response = await put_manifest(http, "lib/app", "v1", image)
                if response.status_code == 201:
                    break
                assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
            await push_blob(http, "lib/app", orphan)
            # Wait for a round of the origin's own collection to take the orphan.
            while True:
                head = await http.head(f"/v2/lib/app/blobs/{orphan.digest}")
                if head.status_code == 404:
                    break
                await trio.sleep(0.05)
            assert_error(await http.get(f"/v2/lib/app/blobs/{orphan.digest}"), 404, "BLOB_UNKNOWN")
            await assert_pullable(http, "lib/app", image)
    running.shutdown.set()


# -- the sweep's order: a blob's row goes (committed) before its bytes -------------------------


class Stopped(Exception):
    """Stands for the collector's process being killed at this point."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def swept(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    """A bare registry on SQLite, and on PostgreSQL (whose row locks the sweep relies on)."""
    if request.param == "sqlite":
        async with open_registry(OriginSettings(data_dir=tmp_path / "bare")) as opened:
            yield opened
        return
    with fresh_schema(require_postgres()) as url:
        settings = OriginSettings(data_dir=tmp_path / "bare", database_url=url)
        async with open_registry(settings) as opened:
            yield opened


async def unlinked_blob(registry: Registry) -> Blob:
    blob = random_blob(500)
    await commit(registry, "lib/app", blob)
    await registry.blobs.delete(parse_repository_name("lib/app"), parse_digest(blob.digest))
    return blob


async def test_a_blobs_row_is_deleted_and_committed_before_its_bytes(
    swept: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        blob = await unlinked_blob(swept)
        seen: list[tuple[bool, bool]] = []
        delete = swept.storage.delete

        async def watched_delete(path: str) -> None:
            # What any other reader sees at the moment the bytes go.
            row = await swept.metadata.blob(blob.digest)
            stat = await swept.storage.stat(blob_path(parse_digest(blob.digest)))
            seen.append((row is None, stat.size == blob.size))
            await delete(path)

        monkeypatch.setattr(swept.storage, "delete", watched_delete)
        report = await collect(swept, now=time.time() + LATER, grace_seconds=0)
        assert report.blobs == ((blob.digest, blob.size),)
        assert seen == [(True, True)]  # the row was already gone, committed
        assert await swept.metadata.collected_blobs() == []
        with pytest.raises(PathNotFound):
            await swept.storage.stat(blob_path(parse_digest(blob.digest)))


async def test_a_collector_stopped_before_the_bytes_leaves_no_row_without_bytes(
    swept: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def killed(path: str) -> None:
        raise Stopped(path)

    async def stopped_collection() -> None:
        monkeypatch.setattr(swept.storage, "delete", killed)
        with pytest.raises(Stopped):
            await collect(swept, now=time.time() + LATER, grace_seconds=0)
        monkeypatch.undo()

    with trio.fail_after(TIMEOUT):
        for repushed in (False, True):
            blob = await unlinked_blob(swept)
            await stopped_collection()
            await assert_every_blob_row_has_bytes(swept)  # the row went; the bytes are left
            assert await swept.metadata.collected_blobs() == [blob.digest]
            assert await swept.metadata.blob(blob.digest) is None
            await swept.storage.stat(blob_path(parse_digest(blob.digest)))
            if repushed:  # pushed again before the next collection: its bytes must stay
                await commit(swept, "lib/other", blob)
            await collect(swept, now=time.time(), grace_seconds=2 * HOURS)  # collects nothing new
            assert await swept.metadata.collected_blobs() == []
            if repushed:
                assert await swept.metadata.linked_blob("lib/other", blob.digest) is not None
                assert await swept.storage.get(blob_path(parse_digest(blob.digest))) == blob.data
            else:
                with pytest.raises(PathNotFound):
                    await swept.storage.stat(blob_path(parse_digest(blob.digest)))
            await assert_every_blob_row_has_bytes(swept)
