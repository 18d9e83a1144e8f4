"""Blob uploads: monolithic, single-request, chunked, streamed; status, cancel, mount, errors."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.oci import (
    TIMEOUT,
    Blob,
    assert_error,
    chunked,
    guarded,
    push_blob,
    random_blob,
    start_upload,
    upload_url,
)
from tests.integration.tenants import BASE_DOMAIN, Tenants, basic, start_tenants

UPLOAD_LOCATION = re.compile(r"^/v2/lib/app/blobs/uploads/(?P<id>[^/?]+)$")


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


async def assert_blob(http: httpx.AsyncClient, repo: str, blob: Blob) -> None:
    response = await http.get(f"/v2/{repo}/blobs/{blob.digest}")
    assert response.status_code == 200, response.text
    assert response.headers["Docker-Content-Digest"] == blob.digest
    assert response.content == blob.data


def assert_created(response: httpx.Response, repo: str, blob: Blob) -> None:
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v2/{repo}/blobs/{blob.digest}"
    assert response.headers["Docker-Content-Digest"] == blob.digest
    assert response.content == b""


async def patch_chunk(
    http: httpx.AsyncClient, location: str, data: bytes, first: int
) -> httpx.Response:
    return await http.patch(
        location,
        content=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{first}-{first + len(data) - 1}",
        },
    )


async def test_start_upload(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for path in ("/v2/lib/app/blobs/uploads/", "/v2/lib/app/blobs/uploads"):
            response = await http.post(path)
            assert response.status_code == 202
            match = UPLOAD_LOCATION.match(response.headers["Location"])
            assert match is not None, response.headers["Location"]
            assert response.headers["Docker-Upload-UUID"] == match["id"]
            assert response.headers["Range"] == "0-0"
            assert response.content == b""


async def test_monolithic_upload(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(10_000)
        started = await start_upload(http, "lib/app")
        response = await http.put(
            upload_url(started),
            params={"digest": blob.digest},
            content=blob.data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert_created(response, "lib/app", blob)
        await assert_blob(http, "lib/app", blob)
        # The session is over.
        status = await http.get(upload_url(started))
        assert_error(status, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_single_request_upload(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(5_000)
        response = await http.post(
            "/v2/lib/app/blobs/uploads/",
            params={"digest": blob.digest},
            content=blob.data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert_created(response, "lib/app", blob)
        await assert_blob(http, "lib/app", blob)


async def test_single_request_upload_digest_mismatch(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob, claimed = random_blob(100), random_blob(100)
        response = await http.post(
            "/v2/lib/app/blobs/uploads/", params={"digest": claimed.digest}, content=blob.data
        )
        assert_error(response, 400, "DIGEST_INVALID")
        for digest in (claimed.digest, blob.digest):
            assert_error(await http.get(f"/v2/lib/app/blobs/{digest}"), 404, "BLOB_UNKNOWN")


async def test_chunked_upload(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(25_000)
        started = await start_upload(http, "lib/app")
        location = upload_url(started)
        upload_id = started.headers["Docker-Upload-UUID"]
        offset = 0
        for size in (10_000, 1, 9_999, 5_000):
            chunk = blob.data[offset : offset + size]
            response = await patch_chunk(http, location, chunk, offset)
            offset += size
            assert response.status_code == 202, response.text
            assert response.headers["Range"] == f"0-{offset - 1}"
            assert response.headers["Docker-Upload-UUID"] == upload_id
            location = upload_url(response)
            assert UPLOAD_LOCATION.match(location)

            status = await http.get(location)
            assert status.status_code == 204
            assert status.headers["Range"] == f"0-{offset - 1}"
            assert status.headers["Location"] == location
            assert status.headers["Docker-Upload-UUID"] == upload_id
            assert status.content == b""

        response = await http.put(location, params={"digest": blob.digest})
        assert_created(response, "lib/app", blob)
        await assert_blob(http, "lib/app", blob)


async def test_streamed_patch_without_content_range(http: httpx.AsyncClient) -> None:
    """Docker's way: one PATCH with a chunked-encoded body, then an empty PUT."""
    with trio.fail_after(TIMEOUT):
        blob = random_blob(3 * 1024 * 1024 + 77)
        started = await start_upload(http, "lib/app")
        pieces = [blob.data[i : i + 300_000] for i in range(0, blob.size, 300_000)]
        request = http.build_request("PATCH", upload_url(started), content=chunked(*pieces))
        assert request.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in request.headers
        assert "Content-Range" not in request.headers
        response = await http.send(request)
        assert response.status_code == 202, response.text
        assert response.headers["Range"] == f"0-{blob.size - 1}"

        # A second streamed PATCH continues where the first stopped.
        extra = random_blob(1000)
        whole = Blob(blob.data + extra.data)
        response = await http.patch(
            upload_url(response), content=chunked(extra.data[:1], extra.data[1:])
        )
        assert response.status_code == 202, response.text
        assert response.headers["Range"] == f"0-{whole.size - 1}"

        response = await http.put(
            upload_url(response), params={"digest": whole.digest}, headers={"Content-Length": "0"}
        )
        assert_created(response, "lib/app", whole)
        await assert_blob(http, "lib/app", whole)


async def test_status_of_fresh_upload(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        started = await start_upload(http, "lib/app")
        status = await http.get(upload_url(started))
        assert status.status_code == 204
        assert status.headers["Range"] == "0-0"
        assert status.headers["Location"] == upload_url(started)
        assert status.headers["Docker-Upload-UUID"] == started.headers["Docker-Upload-UUID"]


async def test_out_of_order_chunk(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(30)
        started = await start_upload(http, "lib/app")
        location = upload_url(started)
        response = await patch_chunk(http, location, blob.data[:10], 0)
        assert response.status_code == 202

        for first in (0, 5, 9, 11, 1000):  # overlapping, repeated, skipping ahead
            response = await patch_chunk(http, location, random_blob(10).data, first)
            assert_error(response, 416, "RANGE_INVALID")
            assert response.headers["Range"] == "0-9"
            assert response.headers["Location"] == location
            assert response.headers["Docker-Upload-UUID"] == started.headers["Docker-Upload-UUID"]

        # The session is intact: status unchanged, and the right chunk still fits.
        status = await http.get(location)
        assert status.status_code == 204
        assert status.headers["Range"] == "0-9"
        response = await patch_chunk(http, location, blob.data[10:], 10)
        assert response.status_code == 202
        response = await http.put(location, params={"digest": blob.digest})
        assert_created(response, "lib/app", blob)


async def test_chunk_length_mismatch(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        started = await start_upload(http, "lib/app")
        response = await http.patch(
            upload_url(started), content=b"0123456789", headers={"Content-Range": "0-4"}
        )
        assert_error(response, 400, "SIZE_INVALID")
        status = await http.get(upload_url(started))
        assert status.status_code == 204
        assert status.headers["Range"] == "0-0"


@pytest.mark.parametrize("with_range", [True, False])
async def test_final_put_with_last_chunk(http: httpx.AsyncClient, with_range: bool) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(3000)
        started = await start_upload(http, "lib/app")
        response = await patch_chunk(http, upload_url(started), blob.data[:1000], 0)
        assert response.status_code == 202
        headers = {"Content-Type": "application/octet-stream"}
        if with_range:
            headers["Content-Range"] = f"1000-{blob.size - 1}"
        response = await http.put(
            upload_url(response),
            params={"digest": blob.digest},
            content=blob.data[1000:],
            headers=headers,
        )
        assert_created(response, "lib/app", blob)
        await assert_blob(http, "lib/app", blob)


async def test_final_put_without_last_chunk(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(3000)
        started = await start_upload(http, "lib/app")
        response = await patch_chunk(http, upload_url(started), blob.data, 0)
        assert response.status_code == 202
        response = await http.put(upload_url(response), params={"digest": blob.digest})
        assert_created(response, "lib/app", blob)
        await assert_blob(http, "lib/app", blob)


async def test_cancel_upload(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(100)
        started = await start_upload(http, "lib/app")
        location = upload_url(started)
        assert (await patch_chunk(http, location, blob.data[:50], 0)).status_code == 202

        response = await http.delete(location)
        assert response.status_code == 204
        assert response.content == b""

        assert_error(await http.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(
            await patch_chunk(http, location, blob.data[50:], 50), 404, "BLOB_UPLOAD_UNKNOWN"
        )
        response = await http.put(location, params={"digest": blob.digest}, content=blob.data)
        assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(await http.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(await http.get(f"/v2/lib/app/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")


async def test_digest_mismatch(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob, claimed = random_blob(2000), random_blob(2000)
        started = await start_upload(http, "lib/app")
        location = upload_url(started)
        assert (await patch_chunk(http, location, blob.data, 0)).status_code == 202
        response = await http.put(location, params={"digest": claimed.digest})
        error = assert_error(response, 400, "DIGEST_INVALID")
        assert error["detail"]["expected"] == claimed.digest
        for digest in (claimed.digest, blob.digest):
            assert_error(await http.get(f"/v2/lib/app/blobs/{digest}"), 404, "BLOB_UNKNOWN")
            assert_error(await http.head(f"/v2/lib/app/blobs/{digest}"), 404, "BLOB_UNKNOWN")
        # The failed session is gone; a fresh push of the right bytes works.
        assert_error(await http.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        await push_blob(http, "lib/app", blob)
        await assert_blob(http, "lib/app", blob)


async def test_digest_parameter_missing(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(100)
        started = await start_upload(http, "lib/app")
        location = upload_url(started)
        response = await http.put(location, content=blob.data)
        assert_error(response, 400, "DIGEST_INVALID")
        response = await http.put(location, params={"digest": ""}, content=blob.data)
        assert_error(response, 400, "DIGEST_INVALID")
        # Nothing was consumed: the upload can still be completed.
        response = await http.put(location, params={"digest": blob.digest}, content=blob.data)
        assert_created(response, "lib/app", blob)


async def test_cross_repository_mount(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(1000)
        await push_blob(http, "team/source", blob)
        response = await http.post(
            "/v2/team/target/blobs/uploads/",
            params={"mount": blob.digest, "from": "team/source"},
        )
        assert_created(response, "team/target", blob)
        await assert_blob(http, "team/target", blob)
        await assert_blob(http, "team/source", blob)


async def test_mount_falls_back_to_upload(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        await push_blob(http, "team/source", random_blob(10))
        for source in ("team/source", "team/missing"):
            blob = random_blob(1000)
            response = await http.post(
                "/v2/team/target/blobs/uploads/", params={"mount": blob.digest, "from": source}
            )
            assert response.status_code == 202, response.text
            location = upload_url(response)
            assert location.startswith("/v2/team/target/blobs/uploads/")
            assert response.headers["Range"] == "0-0"
            assert_error(
                await http.get(f"/v2/team/target/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN"
            )
            response = await http.put(location, params={"digest": blob.digest}, content=blob.data)
            assert_created(response, "team/target", blob)
            await assert_blob(http, "team/target", blob)


async def test_upload_of_another_repository(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(100)
        started = await start_upload(http, "team/a")
        upload_id = started.headers["Docker-Upload-UUID"]
        other = f"/v2/team/b/blobs/uploads/{upload_id}"
        await push_blob(http, "team/b", random_blob(1))  # team/b exists
        assert_error(await http.get(other), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(await patch_chunk(http, other, blob.data, 0), 404, "BLOB_UPLOAD_UNKNOWN")
        response = await http.put(other, params={"digest": blob.digest}, content=blob.data)
        assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(await http.delete(other), 404, "BLOB_UPLOAD_UNKNOWN")
        # The session in team/a is untouched.
        status = await http.get(upload_url(started))
        assert status.status_code == 204
        assert status.headers["Range"] == "0-0"


async def test_unknown_upload(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(10)
        for upload_id in ("0123456789abcdef0123456789abcdef", "nope", "x" * 200, "%2e%2e"):
            location = f"/v2/lib/app/blobs/uploads/{upload_id}"
            assert_error(await http.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
            response = await patch_chunk(http, location, blob.data, 0)
            assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
            response = await http.put(location, params={"digest": blob.digest}, content=blob.data)
            assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
            assert_error(await http.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_same_blob_pushed_twice(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(500)
        await push_blob(http, "lib/app", blob)
        await push_blob(http, "lib/app", blob)
        await push_blob(http, "lib/other", blob)
        await assert_blob(http, "lib/app", blob)
        await assert_blob(http, "lib/other", blob)


async def test_sha512_digest(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(1000)
        digest = "sha512:" + hashlib.sha512(blob.data).hexdigest()
        started = await start_upload(http, "lib/app")
        response = await http.put(upload_url(started), params={"digest": digest}, content=blob.data)
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == digest
        response = await http.get(f"/v2/lib/app/blobs/{digest}")
        assert response.status_code == 200
        assert response.headers["Docker-Content-Digest"] == digest
        assert response.content == blob.data
        # Wrong sha512 is refused like a wrong sha256.
        started = await start_upload(http, "lib/app")
        response = await http.put(
            upload_url(started), params={"digest": "sha512:" + "0" * 128}, content=blob.data
        )
        assert_error(response, 400, "DIGEST_INVALID")


@pytest.mark.parametrize("addressing", ["org subdomain", "legacy project URL", "path style"])
async def test_out_of_order_location_names_the_repository_as_addressed(
    nursery: trio.Nursery, tmp_path: Path, addressing: str
) -> None:
    """A 416's ``Location`` is the session's URL under the client's name, not the internal
    ``<org>/<path>`` one (which names another repository, or nothing, on that host)."""
    tenants = await start_tenants(nursery, tmp_path / "data")
    try:
        await check_out_of_order_location(tenants, addressing)
    finally:
        tenants.origin.shutdown.set()
        tenants.store.close()


async def check_out_of_order_location(tenants: Tenants, addressing: str) -> None:
    host, repo = {
        "org subdomain": (f"acme.{BASE_DOMAIN}", "app"),
        "legacy project URL": (BASE_DOMAIN, tenants.project),
        "path style": (BASE_DOMAIN, "acme/app"),
    }[addressing]
    headers = {"Host": host, **basic(tenants.acme)}
    blob = random_blob(30)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(
            base_url=tenants.url, trust_env=False, timeout=TIMEOUT, headers=headers
        ) as http:
            guarded(http)
            started = await start_upload(http, repo)
            location = upload_url(started)
            assert location.startswith(f"/v2/{repo}/blobs/uploads/"), location
            assert (await patch_chunk(http, location, blob.data[:10], 0)).status_code == 202

            out_of_order = [
                await patch_chunk(http, location, blob.data[15:], 15),
                await http.put(
                    location,
                    params={"digest": blob.digest},
                    content=blob.data[5:],
                    headers={"Content-Range": f"5-{blob.size - 1}"},
                ),
            ]
            for response in out_of_order:
                assert_error(response, 416, "RANGE_INVALID")
                assert response.headers["Location"] == location
                assert response.headers["Range"] == "0-9"
                assert (
                    response.headers["Docker-Upload-UUID"] == started.headers["Docker-Upload-UUID"]
                )

            # The Location leads back to the same session, on this host, under this name.
            resumed = await patch_chunk(http, response.headers["Location"], blob.data[10:], 10)
            assert resumed.status_code == 202, resumed.text
            done = await http.put(upload_url(resumed), params={"digest": blob.digest})
            assert_created(done, repo, blob)
            await assert_blob(http, repo, blob)
