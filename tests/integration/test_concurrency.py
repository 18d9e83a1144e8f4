"""Concurrent pushes and reads of the same content."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from tests.integration.oci import (
    TIMEOUT,
    Blob,
    assert_error,
    guarded,
    new_image,
    push_blob,
    push_manifest,
    put_manifest,
    random_blob,
    start_upload,
    upload_url,
)


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


async def assert_blob(http: httpx.AsyncClient, repo: str, blob: Blob) -> None:
    response = await http.get(f"/v2/{repo}/blobs/{blob.digest}")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Length"] == str(blob.size)
    assert response.content == blob.data


async def test_concurrent_pushes_of_one_blob(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(2 * 1024 * 1024 + 3)
        started = [await start_upload(http, "lib/app") for _ in range(4)]
        statuses: list[int] = []

        async def finish(response: httpx.Response) -> None:
            put = await http.put(
                upload_url(response), params={"digest": blob.digest}, content=blob.data
            )
            statuses.append(put.status_code)
            assert put.headers["Docker-Content-Digest"] == blob.digest

        async with trio.open_nursery() as nursery:
            for response in started:
                nursery.start_soon(finish, response)
        assert statuses == [201] * 4
        await assert_blob(http, "lib/app", blob)


async def test_concurrent_pushes_to_two_repositories(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(1024 * 1024)
        async with trio.open_nursery() as nursery:
            for repo in ("team/a", "team/b", "team/c"):
                nursery.start_soon(push_blob, http, repo, blob)
        for repo in ("team/a", "team/b", "team/c"):
            await assert_blob(http, repo, blob)


async def test_concurrent_pushes_of_one_manifest(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_image(layers=2)
        for blob in manifest.blobs:
            await push_blob(http, "lib/app", blob)
        statuses: list[int] = []

        async def push() -> None:
            response = await put_manifest(http, "lib/app", "latest", manifest)
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(push)
        assert statuses == [201] * 4
        response = await http.get("/v2/lib/app/manifests/latest")
        assert response.content == manifest.payload
        tags = await http.get("/v2/lib/app/tags/list")
        assert tags.json() == {"name": "lib/app", "tags": ["latest"]}


async def test_concurrent_pushes_of_different_manifests_to_one_tag(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TIMEOUT):
        manifests = [new_image() for _ in range(3)]
        for manifest in manifests:
            await push_manifest(http, "lib/app", manifest)
        statuses: list[int] = []

        async def push(manifest_index: int) -> None:
            response = await put_manifest(http, "lib/app", "latest", manifests[manifest_index])
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for i in range(len(manifests)):
                nursery.start_soon(push, i)
        assert statuses == [201] * 3
        response = await http.get("/v2/lib/app/manifests/latest")
        assert response.content in [manifest.payload for manifest in manifests]


async def test_read_while_the_same_blob_is_being_pushed(http: httpx.AsyncClient) -> None:
    """A push in progress (held mid-body) neither disturbs readers of the committed blob nor
    makes it visible early in the repository it is pushed to."""
    with trio.fail_after(TIMEOUT):
        blob = random_blob(3 * 1024 * 1024 + 1)
        await push_blob(http, "team/a", blob)
        half = blob.size // 2
        first_half_sent, release = trio.Event(), trio.Event()
        results: dict[str, httpx.Response] = {}

        async def body() -> AsyncIterator[bytes]:
            yield blob.data[:half]
            first_half_sent.set()
            await release.wait()
            yield blob.data[half:]

        async def push_again(repo: str) -> None:
            started = await start_upload(http, repo)
            results[repo] = await http.put(
                upload_url(started),
                params={"digest": blob.digest},
                content=body(),
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(push_again, "team/b")
            await first_half_sent.wait()
            for _ in range(3):
                await assert_blob(http, "team/a", blob)
            response = await http.get(
                f"/v2/team/a/blobs/{blob.digest}", headers={"Range": f"bytes={half - 5}-"}
            )
            assert response.status_code == 206
            assert response.content == blob.data[half - 5 :]
            assert_error(await http.get(f"/v2/team/b/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")
            release.set()
        assert results["team/b"].status_code == 201, results["team/b"].text
        await assert_blob(http, "team/a", blob)
        await assert_blob(http, "team/b", blob)


async def test_download_spanning_a_concurrent_commit(http: httpx.AsyncClient) -> None:
    """A blob download in flight while the same digest is committed again stays intact."""
    with trio.fail_after(TIMEOUT):
        blob = random_blob(4 * 1024 * 1024 + 9)
        await push_blob(http, "team/a", blob)
        received = bytearray()
        async with http.stream("GET", f"/v2/team/a/blobs/{blob.digest}") as response:
            assert response.status_code == 200
            pieces = response.aiter_raw()
            received += await pieces.__anext__()
            # While the download is open, push the same bytes again (twice, two repos).
            await push_blob(http, "team/a", blob)
            await push_blob(http, "team/b", blob)
            async for piece in pieces:
                received += piece
        assert bytes(received) == blob.data


async def test_concurrent_chunk_uploads(http: httpx.AsyncClient) -> None:
    """Several chunked uploads interleaved on one connection pool."""
    with trio.fail_after(TIMEOUT):
        blobs = [random_blob(300_000 + i) for i in range(5)]

        async def upload(blob: Blob) -> None:
            started = await start_upload(http, "lib/app")
            location = upload_url(started)
            for first in range(0, blob.size, 100_000):
                chunk = blob.data[first : first + 100_000]
                response = await http.patch(
                    location,
                    content=chunk,
                    headers={"Content-Range": f"{first}-{first + len(chunk) - 1}"},
                )
                assert response.status_code == 202, response.text
                location = upload_url(response)
            response = await http.put(location, params={"digest": blob.digest})
            assert response.status_code == 201, response.text

        async with trio.open_nursery() as nursery:
            for blob in blobs:
                nursery.start_soon(upload, blob)
        for blob in blobs:
            await assert_blob(http, "lib/app", blob)


async def test_concurrent_patches_of_one_upload(http: httpx.AsyncClient) -> None:
    """Two chunks claiming the same offset: one is appended, the other is out of order."""
    with trio.fail_after(TIMEOUT):
        blob = random_blob(200_000)
        started = await start_upload(http, "lib/app")
        location = upload_url(started)
        statuses: list[int] = []

        async def patch() -> None:
            response = await http.patch(
                location, content=blob.data[:100_000], headers={"Content-Range": "0-99999"}
            )
            statuses.append(response.status_code)
            if response.status_code == 416:
                assert response.headers["Range"] == "0-99999"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(patch)
            nursery.start_soon(patch)
        assert sorted(statuses) == [202, 416]
        status = await http.get(location)
        assert status.headers["Range"] == "0-99999"
        response = await http.put(
            location,
            params={"digest": blob.digest},
            content=blob.data[100_000:],
            headers={"Content-Range": f"100000-{blob.size - 1}"},
        )
        assert response.status_code == 201, response.text
        await assert_blob(http, "lib/app", blob)
