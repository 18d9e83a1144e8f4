"""Deleting tags, manifests and blobs."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.integration.oci import (
    TIMEOUT,
    assert_error,
    guarded,
    new_image,
    push_blob,
    push_manifest,
    put_manifest,
    random_blob,
)


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


async def test_delete_tag(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_image()
        await push_manifest(http, "lib/app", manifest, "v1")
        assert (await put_manifest(http, "lib/app", "v2", manifest)).status_code == 201

        response = await http.delete("/v2/lib/app/manifests/v1")
        assert response.status_code == 202
        assert response.content == b""

        assert_error(await http.get("/v2/lib/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")
        response = await http.get(f"/v2/lib/app/manifests/{manifest.digest}")
        assert response.status_code == 200
        assert response.content == manifest.payload
        assert (await http.get("/v2/lib/app/manifests/v2")).status_code == 200
        tags = await http.get("/v2/lib/app/tags/list")
        assert tags.json() == {"name": "lib/app", "tags": ["v2"]}

        assert_error(await http.delete("/v2/lib/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_delete_manifest(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest, other = new_image(), new_image()
        await push_manifest(http, "lib/app", manifest, "v1")
        assert (await put_manifest(http, "lib/app", "latest", manifest)).status_code == 201
        await push_manifest(http, "lib/app", other, "other")

        response = await http.delete(f"/v2/lib/app/manifests/{manifest.digest}")
        assert response.status_code == 202
        assert response.content == b""

        for reference in (manifest.digest, "v1", "latest"):
            for method in ("GET", "HEAD"):
                response = await http.request(method, f"/v2/lib/app/manifests/{reference}")
                assert_error(response, 404, "MANIFEST_UNKNOWN")
        tags = await http.get("/v2/lib/app/tags/list")
        assert tags.json() == {"name": "lib/app", "tags": ["other"]}
        assert (await http.get("/v2/lib/app/manifests/other")).status_code == 200
        # The blobs it referenced stay until garbage collection.
        for blob in manifest.blobs:
            assert (await http.head(f"/v2/lib/app/blobs/{blob.digest}")).status_code == 200

        response = await http.delete(f"/v2/lib/app/manifests/{manifest.digest}")
        assert_error(response, 404, "MANIFEST_UNKNOWN")
        # It can be pushed again.
        await push_manifest(http, "lib/app", manifest, "v1")
        assert (await http.get("/v2/lib/app/manifests/v1")).content == manifest.payload


async def test_delete_manifest_is_per_repository(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_image()
        await push_manifest(http, "lib/app", manifest, "v1")
        await push_manifest(http, "lib/other", manifest, "v1")
        response = await http.delete(f"/v2/lib/app/manifests/{manifest.digest}")
        assert response.status_code == 202
        response = await http.get(f"/v2/lib/other/manifests/{manifest.digest}")
        assert response.status_code == 200
        assert (await http.get("/v2/lib/other/manifests/v1")).status_code == 200


async def test_delete_blob(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(100)
        await push_blob(http, "lib/app", blob)
        await push_blob(http, "lib/other", blob)

        response = await http.delete(f"/v2/lib/app/blobs/{blob.digest}")
        assert response.status_code == 202
        assert response.content == b""

        assert_error(await http.get(f"/v2/lib/app/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")
        assert_error(await http.head(f"/v2/lib/app/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")
        response = await http.delete(f"/v2/lib/app/blobs/{blob.digest}")
        assert_error(response, 404, "BLOB_UNKNOWN")
        # Another repository's link is untouched.
        response = await http.get(f"/v2/lib/other/blobs/{blob.digest}")
        assert response.status_code == 200
        assert response.content == blob.data
        # Pushing it again brings it back.
        await push_blob(http, "lib/app", blob)
        assert (await http.get(f"/v2/lib/app/blobs/{blob.digest}")).content == blob.data


async def test_delete_unknown(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        await push_manifest(http, "lib/app", new_image(), "v1")
        missing_blob, missing_manifest = random_blob(10), new_image()

        response = await http.delete(f"/v2/lib/app/blobs/{missing_blob.digest}")
        assert_error(response, 404, "BLOB_UNKNOWN")
        response = await http.delete(f"/v2/lib/app/manifests/{missing_manifest.digest}")
        assert_error(response, 404, "MANIFEST_UNKNOWN")
        response = await http.delete("/v2/lib/app/manifests/nope")
        assert_error(response, 404, "MANIFEST_UNKNOWN")

        response = await http.delete(f"/v2/lib/unknown/blobs/{missing_blob.digest}")
        assert_error(response, 404, "BLOB_UNKNOWN")
        response = await http.delete(f"/v2/lib/unknown/manifests/{missing_manifest.digest}")
        assert_error(response, 404, "NAME_UNKNOWN")
        response = await http.delete("/v2/lib/unknown/manifests/v1")
        assert_error(response, 404, "NAME_UNKNOWN")
