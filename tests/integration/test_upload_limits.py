"""Per-org bounds on upload sessions and the bytes staged in them, against a real origin:
abandoned uploads cannot pile up without limit, and one org's cannot block another's."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.conftest import RunningOrigin, start_origin

TIMEOUT = 30


@pytest.fixture
async def limited(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RunningOrigin]:
    running = await start_origin(
        nursery,
        tmp_path / "data",
        auth=False,
        upload_sessions_per_org=2,
        upload_staged_bytes_per_org=1000,
    )
    yield running
    running.shutdown.set()


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert int(response.headers["Retry-After"]) >= 1


async def test_sessions_and_staged_bytes_are_bounded_per_org(limited: RunningOrigin) -> None:
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(base_url=limited.url, trust_env=False) as http:
            first = (await http.post("/v2/acme/a/blobs/uploads/")).headers["Location"]
            second = (await http.post("/v2/acme/b/blobs/uploads/")).headers["Location"]
            assert_limited(await http.post("/v2/acme/c/blobs/uploads/"))
            # Another org has its own budget.
            other = await http.post("/v2/other/a/blobs/uploads/")
            assert other.status_code == 202

            data = b"x" * 600
            headers = {"Content-Range": "0-599", "Content-Type": "application/octet-stream"}
            assert (await http.patch(first, content=data, headers=headers)).status_code == 202
            # 600 staged + 600 more > 1000: cut off, and nothing of it recorded.
            assert_limited(await http.patch(second, content=data, headers=headers))
            assert (await http.get(second)).headers["Range"] == "0-0"
            small = {"Content-Range": "0-99", "Content-Type": "application/octet-stream"}
            assert (await http.patch(second, content=b"y" * 100, headers=small)).status_code == 202

            # Finishing an upload frees its session and its staged bytes.
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            done = await http.put(first, params={"digest": digest})
            assert done.status_code == 201, done.text
            third = await http.post("/v2/acme/c/blobs/uploads/")
            assert third.status_code == 202
            more = {"Content-Range": "100-699", "Content-Type": "application/octet-stream"}
            assert (await http.patch(second, content=data, headers=more)).status_code == 202
            # So does cancelling one.
            assert (await http.delete(third.headers["Location"])).status_code == 204
            assert (await http.post("/v2/acme/d/blobs/uploads/")).status_code == 202
