"""The registry client against real registries with auth on: our origin, our edge in front of
it, and CNCF Distribution with htpasswd Basic auth and with Bearer tokens (see
:mod:`tests.contract.registry_targets`). The same tests run on every target."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from core.client.credentials import Credentials
from core.client.registry import RegistryClient
from core.client.uploads import BlobSource
from core.digest import Digest, parse_digest, sha256_of
from core.errors import BlobUnknown, Denied, ManifestUnknown, Unauthorized
from core.reference import RepositoryName, Tag
from tests.contract.registry_targets import TARGETS, Target, running_target, token_requests
from tests.integration.oci import (
    Manifest,
    index_manifest,
    new_artifact,
    new_image,
    random_blob,
)
from tests.tcp_proxy import CuttingProxy

TIMEOUT = 60
KiB = 1024


@pytest.fixture(params=TARGETS)
async def target(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[Target]:
    async with running_target(request.param, nursery, tmp_path) as running:
        yield running


@pytest.fixture(params=[kind for kind in TARGETS if kind != "distribution-basic"])
async def target_with_puller(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[Target]:
    """The targets with pull-only credentials (htpasswd lets every user push)."""
    async with running_target(request.param, nursery, tmp_path) as running:
        assert running.puller is not None
        yield running


def source_of(data: bytes, piece: int = 64 * KiB) -> BlobSource:
    """A blob source over ``data`` that yields ``piece`` bytes at a time."""

    async def read(offset: int) -> AsyncIterator[bytes]:
        for start in range(offset, len(data), piece):
            yield data[start : start + piece]

    return read


async def read_blob(client: RegistryClient, repo: RepositoryName, digest: Digest) -> bytes:
    async with client.open_blob(repo, digest) as blob:
        data = b"".join([chunk async for chunk in blob.chunks])
    assert blob.length == len(data)
    return data


async def push_image(client: RegistryClient, repo: RepositoryName, manifest: Manifest) -> None:
    """Blobs, then child manifests by digest, then ``manifest`` by digest."""
    for blob in manifest.blobs:
        digest = parse_digest(blob.digest)
        if await client.blob_size(repo, digest) is None:
            await client.upload_blob(repo, digest, blob.size, blob.source)
    for child in manifest.children:
        await push_image(client, repo, child)
    await client.put_manifest(
        repo, parse_digest(manifest.digest), manifest.payload, manifest.media_type
    )


# -- blobs -------------------------------------------------------------------------------------


async def test_monolithic_push_then_heads_and_ranged_pulls(target: Target) -> None:
    data = os.urandom(300 * KiB + 7)
    digest = sha256_of(data)
    repo = target.repo("mono")
    with trio.fail_after(TIMEOUT):
        async with target.client() as client:
            assert await client.blob_size(repo, digest) is None
            await client.upload_blob(repo, digest, len(data), source_of(data))
            assert await client.blob_size(repo, digest) == len(data)
            assert await read_blob(client, repo, digest) == data
            async with client.open_blob(repo, digest, offset=1000) as part:
                assert (part.offset, part.length, part.size) == (1000, len(data) - 1000, len(data))
                assert b"".join([chunk async for chunk in part.chunks]) == data[1000:]
            missing = sha256_of(b"never pushed")
            assert await client.blob_size(repo, missing) is None
            with pytest.raises(BlobUnknown):
                async with client.open_blob(repo, missing):
                    pass


async def test_chunked_push(target: Target) -> None:
    data = os.urandom(3 * 64 * KiB + 123)
    digest = sha256_of(data)
    repo = target.repo("chunked")
    sent: list[httpx.Request] = []
    with trio.fail_after(TIMEOUT):
        async with target.client(sent=sent) as client:
            session = await client.start_upload(repo)
            step = max(64 * KiB, session.min_chunk)
            await client.upload_blob_chunked(
                repo,
                digest,
                len(data),
                source_of(data, 10 * KiB),
                chunk_bytes=step,
                session=session,
            )
            assert await read_blob(client, repo, digest) == data
    patches = [r for r in sent if r.method == "PATCH"]
    assert len(patches) == -(-len(data) // step)
    assert [r.headers["Content-Range"] for r in patches][:2] == [
        f"0-{step - 1}",
        f"{step}-{2 * step - 1}",
    ]


async def test_chunked_push_resumes_after_a_dropped_connection(
    target: Target, nursery: trio.Nursery
) -> None:
    """The connection is cut inside the third PATCH: the client asks the session where it
    stands and goes on from there (or starts over when the registry dropped it)."""
    chunk = 128 * KiB
    data = os.urandom(5 * chunk)
    digest = sha256_of(data)
    repo = target.repo("resumed")
    proxy = CuttingProxy(target.url.removeprefix("http://"))
    await proxy.start(nursery)
    opened_at: list[int] = []

    async def cutting_source(offset: int) -> AsyncIterator[bytes]:
        opened_at.append(offset)
        for start in range(offset, len(data), 16 * KiB):
            if not proxy.cuts and start >= 2 * chunk + 32 * KiB:
                proxy.cut()
                await trio.sleep(0.05)  # let the cut reach both sockets
            yield data[start : start + 16 * KiB]

    sent: list[httpx.Request] = []
    with trio.fail_after(TIMEOUT):
        async with target.client(url=proxy.url, sent=sent) as client:
            await client.upload_blob_chunked(
                repo, digest, len(data), cutting_source, chunk_bytes=chunk
            )
        async with target.client() as direct:
            assert await read_blob(direct, repo, digest) == data
    assert proxy.cuts == 1
    assert opened_at[:3] == [0, chunk, 2 * chunk]
    statuses = [r for r in sent if r.method == "GET" and "/blobs/uploads/" in r.url.path]
    assert statuses, "the client never asked the session where it stood"
    if target.ours:
        assert opened_at[3] >= 2 * chunk  # resumed: the two acknowledged chunks were not resent
    else:
        # Distribution drops a session whose stored bytes disagree with the offset signed in
        # its Location (part of the torn PATCH was written): the client then starts over in a
        # new session; when nothing of it was written, it resumes.
        posts = [r for r in sent if r.method == "POST" and "Authorization" in r.headers]
        assert opened_at[3] >= 2 * chunk or (opened_at[3] == 0 and len(posts) == 2), opened_at


async def test_cross_repository_mount(target: Target) -> None:
    data = os.urandom(40 * KiB)
    digest = sha256_of(data)
    base, app, other = target.repo("base"), target.repo("app"), target.repo("other")
    with trio.fail_after(TIMEOUT):
        async with target.client() as client:
            await client.upload_blob(base, digest, len(data), source_of(data))
            assert await client.mount_blob(app, digest, base) is None
            assert await client.blob_size(app, digest) == len(data)
            # A source without the blob: the registry opens an upload session instead.
            lone = os.urandom(1000)
            lone_digest = sha256_of(lone)
            session = await client.mount_blob(other, lone_digest, base)
            assert session is not None
            await client.upload_blob(
                other, lone_digest, len(lone), source_of(lone), session=session
            )
            assert await read_blob(client, other, lone_digest) == lone


# -- manifests ---------------------------------------------------------------------------------


async def test_manifest_and_index_by_tag_and_digest(target: Target) -> None:
    image = new_image(layers=2)
    docker_image = new_image(layers=1, docker=True)
    index = index_manifest([new_image(), new_image(docker=True)])
    repo = target.repo("manifests")
    with trio.fail_after(TIMEOUT):
        async with target.client() as client:
            for manifest, tag in ((image, "v1"), (docker_image, "docker"), (index, "multi")):
                await push_image(client, repo, manifest)
                pushed = await client.put_manifest(
                    repo, Tag(tag), manifest.payload, manifest.media_type
                )
                assert str(pushed.digest) == manifest.digest
                for reference in (Tag(tag), parse_digest(manifest.digest)):
                    fetched = await client.get_manifest(repo, reference)
                    assert str(fetched.digest) == manifest.digest
                    assert fetched.media_type == manifest.media_type
                    assert fetched.payload == manifest.payload
                    assert str(await client.head_manifest(repo, reference)) == manifest.digest
            for child in index.children:
                fetched = await client.get_manifest(repo, parse_digest(child.digest))
                assert fetched.payload == child.payload
            assert await client.head_manifest(repo, Tag("nope")) is None
            with pytest.raises(ManifestUnknown):
                await client.get_manifest(repo, Tag("nope"))
            with pytest.raises(ManifestUnknown):
                await client.get_manifest(repo, sha256_of(b"no such manifest"))


async def test_tags_follow_pagination_links(target: Target) -> None:
    image = new_image()
    repo = target.repo("tagged")
    tags = [f"t{i:02}" for i in range(5)]
    sent: list[httpx.Request] = []
    with trio.fail_after(TIMEOUT):
        async with target.client(sent=sent) as client:
            await push_image(client, repo, image)
            for tag in tags:
                await client.put_manifest(repo, Tag(tag), image.payload, image.media_type)
            before = len(sent)
            assert sorted(t.value for t in await client.list_tags(repo, page_size=2)) == tags
            pages = [r for r in sent[before:] if r.url.path.endswith("/tags/list")]
            # Distribution 2.8 ignores n on tag lists (one page); the others link 3 pages.
            assert len(pages) == (3 if target.tag_pages else 1)
            assert sorted(t.value for t in await client.list_tags(repo)) == tags


async def test_catalog_follows_pagination_links(target: Target) -> None:
    repos = [target.repo(name) for name in ("cat-a", "cat-b", "cat-c")]
    sent: list[httpx.Request] = []
    with trio.fail_after(TIMEOUT):
        async with target.client(sent=sent) as client:
            for repo in repos:
                await push_image(client, repo, new_image())
            before = len(sent)
            paged = await client.catalog(page_size=1)
            assert set(repos) <= set(paged)
            pages = [r for r in sent[before:] if r.url.path == "/v2/_catalog"]
            assert len(pages) >= len(repos)
            assert paged == await client.catalog()


async def test_referrers_where_supported(target: Target) -> None:
    subject = new_image()
    sbom = new_artifact("application/vnd.example.sbom", subject)
    repo = target.repo("referred")
    with trio.fail_after(TIMEOUT):
        async with target.client() as client:
            await push_image(client, repo, subject)
            for blob in sbom.blobs:
                await client.upload_blob(repo, parse_digest(blob.digest), blob.size, blob.source)
            pushed = await client.put_manifest(
                repo, parse_digest(sbom.digest), sbom.payload, sbom.media_type
            )
            found = await client.referrers(repo, parse_digest(subject.digest))
            if not target.referrers:
                assert pushed.subject is None
                assert found is None
                return
            assert str(pushed.subject) == subject.digest
            assert found is not None
            assert [(str(r.digest), r.artifact_type) for r in found.manifests] == [
                (sbom.digest, "application/vnd.example.sbom")
            ]
            filtered = await client.referrers(
                repo, parse_digest(subject.digest), artifact_type="application/x.other"
            )
            assert filtered is not None and filtered.manifests == ()
            assert "artifactType" in filtered.filters_applied


# -- auth and errors ---------------------------------------------------------------------------


async def test_bad_credentials_are_unauthorized(target: Target) -> None:
    blob = random_blob(100)
    repo = target.repo("guarded")
    wrong = Credentials(target.pusher.username, target.pusher.password + "x")
    with trio.fail_after(TIMEOUT):
        async with target.client() as client:
            await client.upload_blob(repo, parse_digest(blob.digest), blob.size, blob.source)
        async with target.client(wrong) as client:
            with pytest.raises(Unauthorized):
                await client.blob_size(repo, parse_digest(blob.digest))
            with pytest.raises(Unauthorized):
                await client.ping()


async def test_pull_only_credentials_pull_but_are_denied_a_push(target_with_puller: Target) -> None:
    target = target_with_puller
    blob = random_blob(100)
    other = random_blob(100)
    repo = target.repo("readonly")
    with trio.fail_after(TIMEOUT):
        async with target.client() as client:
            await client.upload_blob(repo, parse_digest(blob.digest), blob.size, blob.source)
        async with target.client(target.puller) as client:
            assert await client.blob_size(repo, parse_digest(blob.digest)) == blob.size
            with pytest.raises(Denied) as denied:
                await client.upload_blob(repo, parse_digest(other.digest), other.size, other.source)
    assert denied.value.message  # the registry's own words


async def test_tokens_are_cached_per_scope(target: Target) -> None:
    blob, pushed = random_blob(100), random_blob(200)
    repo = target.repo("cached")
    sent: list[httpx.Request] = []
    with trio.fail_after(TIMEOUT):
        async with target.client(sent=sent) as client:
            for _ in range(3):
                assert await client.blob_size(repo, parse_digest(blob.digest)) is None
            await client.upload_blob(repo, parse_digest(pushed.digest), pushed.size, pushed.source)
            assert await client.blob_size(repo, parse_digest(pushed.digest)) == pushed.size
            data = await read_blob(client, repo, parse_digest(pushed.digest))
            assert hashlib.sha256(data).hexdigest() == pushed.digest.removeprefix("sha256:")
    fetched = token_requests(sent)
    v2 = [r for r in sent if r.url.path.startswith("/v2/")]
    if not target.tokens:
        assert fetched == []
        assert all(r.headers.get("Authorization", "").startswith("Basic ") for r in v2[1:])
        return
    # One token for pull, one for pull+push; every /v2 request after the first carries one.
    assert len(fetched) == 2, [str(r.url) for r in fetched]
    assert all(r.headers["Authorization"].startswith("Basic ") for r in fetched)
    assert all(r.headers.get("Authorization", "").startswith("Bearer ") for r in v2[1:])
    if target.token_service is not None:
        assert len(target.token_service.requests) == 2
