"""State that must survive the origin process: upload sessions, blobs, manifests, tags."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.integration.conftest import start_origin
from tests.integration.oci import (
    TIMEOUT,
    assert_error,
    guarded,
    new_image,
    push_manifest,
    random_blob,
    start_upload,
    upload_url,
)


@asynccontextmanager
async def running_origin(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An origin on ``data_dir`` and a client on it; on exit the client is closed and the
    origin shut down and waited for (so the next one starts on a quiet data dir)."""
    async with trio.open_nursery() as nursery:
        origin = await start_origin(nursery, data_dir, auth=False)
        try:
            async with httpx.AsyncClient(
                base_url=origin.url,
                trust_env=False,
                timeout=30,
                headers={"Accept-Encoding": "identity"},
            ) as client:
                yield guarded(client)
        finally:
            origin.shutdown.set()


async def test_upload_resumes_after_restart(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        data_dir = tmp_path / "data"
        blob = random_blob(3 * 1024 * 1024 + 4321)
        cut = [0, 1024 * 1024 + 17, 2 * 1024 * 1024 + 5, blob.size]

        async with running_origin(data_dir) as http:
            started = await start_upload(http, "lib/app")
            location = upload_url(started)
            for first, end in itertools.pairwise(cut[:3]):
                response = await http.patch(
                    location,
                    content=blob.data[first:end],
                    headers={"Content-Range": f"{first}-{end - 1}"},
                )
                assert response.status_code == 202, response.text
                location = upload_url(response)
            assert response.headers["Range"] == f"0-{cut[2] - 1}"

        async with running_origin(data_dir) as http:
            status = await http.get(location)
            assert status.status_code == 204
            assert status.headers["Range"] == f"0-{cut[2] - 1}"
            assert status.headers["Docker-Upload-UUID"] == started.headers["Docker-Upload-UUID"]

            # A chunk that skips ahead is still refused with the durable range.
            response = await http.patch(
                location, content=b"x", headers={"Content-Range": f"{cut[2] + 1}-{cut[2] + 1}"}
            )
            assert_error(response, 416, "RANGE_INVALID")
            assert response.headers["Range"] == f"0-{cut[2] - 1}"

            response = await http.patch(
                location,
                content=blob.data[cut[2] :],
                headers={"Content-Range": f"{cut[2]}-{blob.size - 1}"},
            )
            assert response.status_code == 202, response.text
            assert response.headers["Range"] == f"0-{blob.size - 1}"
            response = await http.put(upload_url(response), params={"digest": blob.digest})
            assert response.status_code == 201, response.text

            response = await http.get(f"/v2/lib/app/blobs/{blob.digest}")
            assert response.status_code == 200
            assert response.content == blob.data


async def test_resumed_upload_with_wrong_digest_after_restart(tmp_path: Path) -> None:
    """The re-hash after a restart covers the staged bytes: a wrong digest is still refused."""
    with trio.fail_after(TIMEOUT):
        data_dir = tmp_path / "data"
        blob, other = random_blob(5000), random_blob(5000)
        async with running_origin(data_dir) as http:
            started = await start_upload(http, "lib/app")
            response = await http.patch(
                upload_url(started), content=blob.data[:3000], headers={"Content-Range": "0-2999"}
            )
            assert response.status_code == 202
            location = upload_url(response)

        async with running_origin(data_dir) as http:
            response = await http.put(
                location, params={"digest": other.digest}, content=blob.data[3000:]
            )
            assert_error(response, 400, "DIGEST_INVALID")
            for digest in (blob.digest, other.digest):
                response = await http.get(f"/v2/lib/app/blobs/{digest}")
                assert_error(response, 404, "BLOB_UNKNOWN")


async def test_content_survives_restart(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        data_dir = tmp_path / "data"
        manifest = new_image(layers=2)
        async with running_origin(data_dir) as http:
            await push_manifest(http, "lib/app", manifest, "v1")

        async with running_origin(data_dir) as http:
            response = await http.get("/v2/lib/app/manifests/v1")
            assert response.status_code == 200
            assert response.content == manifest.payload
            for blob in manifest.blobs:
                response = await http.get(f"/v2/lib/app/blobs/{blob.digest}")
                assert response.content == blob.data
            catalog = await http.get("/v2/_catalog")
            assert catalog.json() == {"repositories": ["lib/app"]}
