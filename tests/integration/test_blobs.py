"""The base endpoint and blob reads: GET/HEAD, byte ranges, a multi-MiB streamed body."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.integration.oci import (
    API_VERSION,
    TIMEOUT,
    Blob,
    assert_error,
    guarded,
    push_blob,
    push_blob_raw,
    random_blob,
)


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


def assert_blob_headers(response: httpx.Response, blob: Blob, length: int) -> None:
    assert response.headers["Content-Length"] == str(length)
    assert response.headers["Docker-Content-Digest"] == blob.digest
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{blob.digest}"'


async def test_base_endpoint(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for path in ("/v2/", "/v2"):
            response = await http.get(path)
            assert response.status_code == 200
            assert response.headers[API_VERSION[0]] == API_VERSION[1]
            assert response.json() == {}
        response = await http.head("/v2/")
        assert response.status_code == 200
        assert response.headers[API_VERSION[0]] == API_VERSION[1]
        assert response.content == b""


async def test_get_and_head_blob(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(4096)
        pushed = await push_blob_raw(http, "lib/app", blob)
        assert pushed.headers["Location"] == f"/v2/lib/app/blobs/{blob.digest}"

        response = await http.get(f"/v2/lib/app/blobs/{blob.digest}")
        assert response.status_code == 200
        assert_blob_headers(response, blob, blob.size)
        assert response.headers[API_VERSION[0]] == API_VERSION[1]
        assert response.content == blob.data

        head = await http.head(f"/v2/lib/app/blobs/{blob.digest}")
        assert head.status_code == 200
        assert_blob_headers(head, blob, blob.size)
        assert head.content == b""


async def test_blob_unknown(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        present, absent = random_blob(10), random_blob(10)
        await push_blob(http, "lib/app", present)
        for method in ("GET", "HEAD"):
            response = await http.request(method, f"/v2/lib/app/blobs/{absent.digest}")
            assert_error(response, 404, "BLOB_UNKNOWN")
            # A blob of another repository is not served here.
            response = await http.request(method, f"/v2/lib/other/blobs/{present.digest}")
            assert_error(response, 404, "BLOB_UNKNOWN")


RANGES = [
    ("bytes=0-0", 0, 0),
    ("bytes=10-19", 10, 19),
    ("bytes=5-", 5, 99),
    ("bytes=-10", 90, 99),
    ("bytes=90-500", 90, 99),  # last clipped to the size
    ("bytes=-500", 0, 99),  # suffix longer than the blob: all of it
]


async def test_blob_range(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(100)
        await push_blob(http, "lib/app", blob)
        url = f"/v2/lib/app/blobs/{blob.digest}"
        for header, first, last in RANGES:
            response = await http.get(url, headers={"Range": header})
            assert response.status_code == 206, header
            assert response.content == blob.data[first : last + 1], header
            assert response.headers["Content-Range"] == f"bytes {first}-{last}/100"
            assert_blob_headers(response, blob, last - first + 1)

            head = await http.head(url, headers={"Range": header})
            assert head.status_code == 206, header
            assert head.headers["Content-Range"] == f"bytes {first}-{last}/100"
            assert_blob_headers(head, blob, last - first + 1)
            assert head.content == b""


async def test_blob_range_unsatisfiable(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = random_blob(100)
        await push_blob(http, "lib/app", blob)
        for header in ("bytes=100-", "bytes=100-200", "bytes=5000-5001", "bytes=-0"):
            for method in ("GET", "HEAD"):
                response = await http.request(
                    method, f"/v2/lib/app/blobs/{blob.digest}", headers={"Range": header}
                )
                assert_error(response, 416, "RANGE_INVALID")
                assert response.headers["Content-Range"] == "bytes */100", header


async def test_blob_range_ignored(http: httpx.AsyncClient) -> None:
    """Ranges that are not one valid byte range are ignored: the whole blob, 200."""
    with trio.fail_after(TIMEOUT):
        blob = random_blob(100)
        await push_blob(http, "lib/app", blob)
        for header in ("bytes=20-10", "items=0-5", "bytes=0-1,5-6", "bytes=x-y", "bytes=-"):
            response = await http.get(f"/v2/lib/app/blobs/{blob.digest}", headers={"Range": header})
            assert response.status_code == 200, header
            assert "Content-Range" not in response.headers
            assert response.content == blob.data


async def test_large_blob_streams(http: httpx.AsyncClient) -> None:
    """3 MiB and change: several storage chunks, streamed out and ranged across a boundary."""
    with trio.fail_after(TIMEOUT):
        blob = random_blob(3 * 1024 * 1024 + 12_345)
        await push_blob(http, "lib/big", blob)

        received = bytearray()
        pieces = 0
        async with http.stream("GET", f"/v2/lib/big/blobs/{blob.digest}") as response:
            assert response.status_code == 200
            assert_blob_headers(response, blob, blob.size)
            async for piece in response.aiter_raw():
                received += piece
                pieces += 1
        assert bytes(received) == blob.data
        assert pieces > 1

        first, last = (1 << 20) - 7, 2 * (1 << 20) + 7
        response = await http.get(
            f"/v2/lib/big/blobs/{blob.digest}", headers={"Range": f"bytes={first}-{last}"}
        )
        assert response.status_code == 206
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{blob.size}"
        assert response.content == blob.data[first : last + 1]

        response = await http.get(
            f"/v2/lib/big/blobs/{blob.digest}", headers={"Range": "bytes=-100000"}
        )
        assert response.status_code == 206
        assert response.content == blob.data[-100000:]


async def test_empty_blob(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        blob = Blob(b"")
        await push_blob(http, "lib/app", blob)
        response = await http.get(f"/v2/lib/app/blobs/{blob.digest}")
        assert response.status_code == 200
        assert_blob_headers(response, blob, 0)
        assert response.content == b""
