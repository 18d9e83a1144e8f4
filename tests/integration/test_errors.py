"""Client errors: the OCI error envelope, invalid names and digests, methods, paths.

Every answer here must be a 4xx with ``{"errors":[{"code","message","detail"}]}``; a 500 on
client input fails the test through :func:`guarded`.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests.integration.conftest import RunningOrigin
from tests.integration.oci import (
    TIMEOUT,
    Blob,
    assert_error,
    guarded,
    new_image,
    push_blob,
    push_manifest,
    random_blob,
    start_upload,
    upload_url,
)


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


async def raw_request(origin: RunningOrigin, method: str, target: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (httpx would normalise ``..`` away)."""
    url = urlsplit(origin.url)
    assert url.hostname is not None and url.port is not None
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    async with stream:
        request = f"{method} {target} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        received = bytearray()
        while chunk := await stream.receive_some():
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def name_paths(name: str) -> list[tuple[str, str]]:
    digest = random_blob(1).digest
    return [
        ("GET", f"/v2/{name}/tags/list"),
        ("GET", f"/v2/{name}/manifests/latest"),
        ("HEAD", f"/v2/{name}/manifests/latest"),
        ("PUT", f"/v2/{name}/manifests/latest"),
        ("DELETE", f"/v2/{name}/manifests/{digest}"),
        ("GET", f"/v2/{name}/blobs/{digest}"),
        ("HEAD", f"/v2/{name}/blobs/{digest}"),
        ("DELETE", f"/v2/{name}/blobs/{digest}"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("GET", f"/v2/{name}/blobs/uploads/0123456789abcdef0123456789abcdef"),
        ("PATCH", f"/v2/{name}/blobs/uploads/0123456789abcdef0123456789abcdef"),
        ("GET", f"/v2/{name}/referrers/{digest}"),
    ]


INVALID_NAMES = [
    "Upper",
    "lib/Upper",
    "lib/app/",  # trailing slash
    "lib//app",
    "a" * 256,
    "-lib",
    "lib-",
    "lib..app",
    "lib.",
    "lib___app",
    "lib/_app",
    "li%20b",
    "lib%3Aapp",
]


async def test_invalid_repository_name(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for name in INVALID_NAMES:
            for method, path in name_paths(name):
                response = await http.request(method, path)
                assert_error(response, 400, "NAME_INVALID")
        # Invalid names are never created.
        catalog = await http.get("/v2/_catalog")
        assert catalog.json() == {"repositories": []}


async def test_dot_segments_in_name(origin: RunningOrigin, http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for name in ("a/../b", "..", "a/./b", "a/%2e%2e/b", "../../etc"):
            for method, target in (
                ("GET", f"/v2/{name}/tags/list"),
                ("POST", f"/v2/{name}/blobs/uploads/"),
                ("PUT", f"/v2/{name}/manifests/latest"),
            ):
                status, body = await raw_request(origin, method, target)
                assert status == 400, (target, body)
                assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"
        catalog = await http.get("/v2/_catalog")
        assert catalog.json() == {"repositories": []}


async def test_empty_leading_component(http: httpx.AsyncClient) -> None:
    """``/v2//lib/...`` is not redirected to ``/v2/lib/...`` (another repository)."""
    with trio.fail_after(TIMEOUT):
        await push_manifest(http, "lib", new_image(), "v1")
        for method, path in name_paths("/lib"):
            response = await http.request(method, path)
            assert_error(response, 404, "NOT_FOUND")


async def test_longest_valid_name(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        name = "/".join(["a" * 127, "b" * 127])  # 255 characters
        assert len(name) == 255
        assert_error(await http.get(f"/v2/{name}/tags/list"), 404, "NAME_UNKNOWN")
        manifest = new_image()
        await push_manifest(http, name, manifest, "v1")
        assert (await http.get(f"/v2/{name}/manifests/v1")).content == manifest.payload


MALFORMED_DIGESTS = [
    "sha256:abc",
    "sha256:" + "A" * 64,
    "sha256:" + "g" * 64,
    "sha256:" + "a" * 65,
    "sha256:",
    "sha256",
    "notadigest",
    "md5:" + "a" * 32,
    "sha512:" + "a" * 64,
    "SHA256:" + "a" * 64,
    ":" + "a" * 64,
    "sha256:" + "a" * 63 + "%20",
]


async def test_malformed_digest(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(10)
        await push_blob(http, "lib/app", blob)
        for digest in MALFORMED_DIGESTS:
            await check_malformed_digest(http, blob, digest)


async def check_malformed_digest(http: httpx.AsyncClient, blob: Blob, digest: str) -> None:
    """Every place a digest is read refuses ``digest`` with 400 DIGEST_INVALID."""
    for method in ("GET", "HEAD", "DELETE"):
        response = await http.request(method, f"/v2/lib/app/blobs/{digest}")
        assert_error(response, 400, "DIGEST_INVALID")
    response = await http.get(f"/v2/lib/app/referrers/{digest}")
    assert_error(response, 400, "DIGEST_INVALID")
    response = await http.get(f"/v2/lib/unknown/referrers/{digest}")
    assert_error(response, 400, "DIGEST_INVALID")
    response = await http.post(
        "/v2/lib/other/blobs/uploads/", params={"mount": digest, "from": "lib/app"}
    )
    assert_error(response, 400, "DIGEST_INVALID")
    response = await http.post(
        "/v2/lib/app/blobs/uploads/", params={"digest": digest}, content=blob.data
    )
    assert_error(response, 400, "DIGEST_INVALID")

    started = await start_upload(http, "lib/app")
    response = await http.put(upload_url(started), params={"digest": digest}, content=b"x")
    assert_error(response, 400, "DIGEST_INVALID")
    # The upload survives a refused digest.
    response = await http.put(
        upload_url(started), params={"digest": blob.digest}, content=blob.data
    )
    assert response.status_code == 201, digest

    if ":" in digest:  # a manifest reference with ':' is a digest
        for method in ("GET", "HEAD", "DELETE"):
            response = await http.request(method, f"/v2/lib/app/manifests/{digest}")
            assert_error(response, 400, "DIGEST_INVALID")


UNSUPPORTED = [
    ("POST", "/v2/lib/app/manifests/latest", "DELETE, GET, HEAD, PUT"),
    ("PATCH", "/v2/lib/app/manifests/latest", "DELETE, GET, HEAD, PUT"),
    ("PUT", "/v2/lib/app/blobs/{digest}", "DELETE, GET, HEAD"),
    ("POST", "/v2/lib/app/blobs/{digest}", "DELETE, GET, HEAD"),
    ("PATCH", "/v2/lib/app/blobs/{digest}", "DELETE, GET, HEAD"),
    ("GET", "/v2/lib/app/blobs/uploads/", "POST"),
    ("PUT", "/v2/lib/app/blobs/uploads/", "POST"),
    ("POST", "/v2/lib/app/blobs/uploads/{upload}", "DELETE, GET, PATCH, PUT"),
    ("DELETE", "/v2/lib/app/tags/list", "GET"),
    ("PUT", "/v2/lib/app/tags/list", "GET"),
    ("DELETE", "/v2/lib/app/referrers/{digest}", "GET"),
    ("POST", "/v2/_catalog", "GET"),
    ("DELETE", "/v2/", "GET, HEAD"),
]


async def test_unsupported_method(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(10)
        await push_blob(http, "lib/app", blob)
        started = await start_upload(http, "lib/app")
        for method, path, allow in UNSUPPORTED:
            target = path.format(digest=blob.digest, upload=started.headers["Docker-Upload-UUID"])
            response = await http.request(method, target, content=b"ignored")
            assert_error(response, 405, "UNSUPPORTED")
            assert response.headers["Allow"] == allow, (method, target)
        # Nothing changed.
        assert (await http.get(f"/v2/lib/app/blobs/{blob.digest}")).content == blob.data
        assert (await http.get(upload_url(started))).status_code == 204


async def test_unknown_method(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for method in ("OPTIONS", "TRACE", "CONNECT2", "PROPFIND"):
            for path in ("/v2/", "/v2/lib/app/tags/list", "/v2/lib/app/manifests/latest"):
                response = await http.request(method, path)
                assert_error(response, 405, "UNSUPPORTED")


async def test_unknown_path(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for path in UNKNOWN_PATHS:
            for method in ("GET", "HEAD", "PUT", "DELETE"):
                response = await http.request(method, path)
                assert_error(response, 404, "NOT_FOUND")


UNKNOWN_PATHS = [
    "/",
    "/v1/",
    "/v3/",
    "/v2x",
    "/v2/lib/app",
    "/v2/lib/app/",
    "/v2/lib/app/blobs",
    "/v2/lib/app/blobs/",
    "/v2/lib/app/manifests/",
    "/v2/lib/app/tags",
    "/v2/lib/app/tags/list/",
    "/v2/lib/app/tags/list/extra",
    "/v2/lib/app/referrers",
    "/v2/lib/app/referrers/",
    "/v2/lib/app/unknown/thing",
    "/v2/_catalog/extra",
]


async def test_errors_on_head_have_no_body(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for path in (
            f"/v2/lib/app/blobs/{random_blob(1).digest}",
            "/v2/lib/app/manifests/latest",
            "/v2/Bad/manifests/latest",
            "/v2/lib/app/blobs/sha256:bad",
            "/v2/nothing/here",
        ):
            response = await http.head(path)
            assert 400 <= response.status_code < 500
            assert response.content == b""
            assert response.headers["Content-Type"] == "application/json"


async def test_malformed_content_range(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        started = await start_upload(http, "lib/app")
        for header in ("abc", "5-1", "-5", "bytes=", "0-", "1-2-3"):
            response = await http.patch(
                upload_url(started), content=b"xy", headers={"Content-Range": header}
            )
            assert_error(response, 416, "RANGE_INVALID")
        status = await http.get(upload_url(started))
        assert status.headers["Range"] == "0-0"


async def test_out_of_range_numbers(http: httpx.AsyncClient) -> None:
    """Numbers far beyond any real size are refused or clipped, never a crash."""
    with trio.fail_after(TIMEOUT):
        blob = random_blob(100)
        await push_blob(http, "lib/app", blob)
        url = f"/v2/lib/app/blobs/{blob.digest}"
        huge = "9" * 30

        response = await http.get(url, headers={"Range": f"bytes={huge}-"})
        assert_error(response, 416, "RANGE_INVALID")
        assert response.headers["Content-Range"] == "bytes */100"
        for header in (f"bytes=0-{huge}", f"bytes=-{huge}"):
            response = await http.get(url, headers={"Range": header})
            assert response.status_code == 206
            assert response.headers["Content-Range"] == "bytes 0-99/100"
            assert response.content == blob.data

        started = await start_upload(http, "lib/app")
        response = await http.patch(
            upload_url(started), content=b"0123456789", headers={"Content-Range": f"0-{huge}"}
        )
        assert_error(response, 400, "SIZE_INVALID")
        response = await http.patch(
            upload_url(started), content=b"0123456789", headers={"Content-Range": f"{huge}-{huge}"}
        )
        assert_error(response, 416, "RANGE_INVALID")

        for query in (f"n={huge}", f"n={huge}&last={huge}"):
            assert (await http.get(f"/v2/_catalog?{query}")).status_code == 200
            assert (await http.get(f"/v2/lib/app/tags/list?{query}")).status_code == 200


async def test_mount_from_invalid_name(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(10)
        await push_blob(http, "lib/app", blob)
        for source in ("Bad", "lib/app/", "a" * 256):
            response = await http.post(
                "/v2/lib/other/blobs/uploads/", params={"mount": blob.digest, "from": source}
            )
            assert_error(response, 400, "NAME_INVALID")


async def test_error_responses_carry_the_api_version_header(client: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        for method, path in [
            ("GET", "/v2/nope/manifests/latest"),
            ("GET", "/v2/Bad/tags/list"),
            ("PATCH", "/v2/a/tags/list"),
            ("GET", "/v2/a/blobs/sha256:zz"),
        ]:
            response = await client.request(method, path)
            assert response.status_code >= 400
            assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0", path
