"""The origin as a real process: graceful SIGTERM, kill -9 at bad moments, restarts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.processes import OriginProcess, origin_process

MIB = 1 << 20
NO_AUTH = ("--no-auth",)  # these tests are about processes, not tenancy


def _client(origin: OriginProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=origin.url,
        trust_env=False,
        timeout=30,
        headers={"Accept-Encoding": "identity"},
    )


async def _push(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = await client.post(f"/v2/{name}/blobs/uploads/?digest={digest}", content=data)
    assert response.status_code == 201, response.text
    return digest


def _staged_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "storage" / "_tmp").glob("**/*") if p.is_file()]


async def test_sigterm_lets_an_inflight_download_finish_then_exits_0(tmp_path: Path) -> None:
    data = os.urandom(48 * MIB)
    with trio.fail_after(60):
        async with origin_process(tmp_path / "data", tmp_path / "origin.log", NO_AUTH) as origin:
            async with _client(origin) as client:
                digest = await _push(client, "drain/me", data)
                received = bytearray()
                async with client.stream("GET", f"/v2/drain/me/blobs/{digest}") as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_raw():
                        if not received:
                            origin.process.send_signal(15)  # SIGTERM mid-download
                            await trio.sleep(0.2)
                        received += chunk
                assert bytes(received) == data
            # The first SIGTERM alone ends it, once the client's connection is closed.
            assert await origin.process.wait() == 0


async def test_kill_9_mid_push_leaves_nothing_visible(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data = os.urandom(64 * MIB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with trio.fail_after(60):
        async with origin_process(data_dir, tmp_path / "origin.log", NO_AUTH) as origin:
            async with _client(origin) as client:
                started = await client.post("/v2/crash/push/blobs/uploads/")
                location = started.headers["Location"]

                async def body() -> AsyncIterator[bytes]:
                    for i in range(64):
                        if i == 32:
                            await trio.sleep(0.3)  # let the server write what it has
                            await origin.kill()
                        yield data[i * MIB : (i + 1) * MIB]

                upload = body()
                with pytest.raises(httpx.TransportError):
                    await client.put(
                        f"{location}?digest={digest}",
                        content=upload,
                        headers={"Content-Length": str(len(data))},
                    )
                await upload.aclose()  # httpx abandons it mid-way
        async with origin_process(data_dir, tmp_path / "origin.log", NO_AUTH) as origin:
            async with _client(origin) as client:
                assert (await client.head(f"/v2/crash/push/blobs/{digest}")).status_code == 404
                assert (await client.get(f"/v2/crash/push/blobs/{digest}")).status_code == 404
                # The session survived (uploads are resumable) with nothing durable in it.
                status = await client.get(location)
                assert status.status_code == 204
                assert status.headers["Range"] == "0-0"
                assert _staged_files(data_dir) == []
                # And the push goes through on a retry.
                done = await client.put(f"{location}?digest={digest}", content=data)
                assert done.status_code == 201
                fetched = await client.get(f"/v2/crash/push/blobs/{digest}")
                assert hashlib.sha256(fetched.content).hexdigest() == digest.split(":")[1]


async def test_kill_9_mid_chunk_then_resume_after_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data = os.urandom(24 * MIB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    first, second = data[: 8 * MIB], data[8 * MIB :]
    with trio.fail_after(60):
        async with origin_process(data_dir, tmp_path / "origin.log", NO_AUTH) as origin:
            async with _client(origin) as client:
                location = (await client.post("/v2/crash/chunks/blobs/uploads/")).headers[
                    "Location"
                ]
                patched = await client.patch(
                    location,
                    content=first,
                    headers={"Content-Range": f"0-{len(first) - 1}"},
                )
                assert patched.status_code == 202

                async def partial_second() -> AsyncIterator[bytes]:
                    yield second[: 4 * MIB]
                    await trio.sleep(0.3)
                    await origin.kill()
                    yield second[4 * MIB :]

                upload = partial_second()
                with pytest.raises(httpx.TransportError):
                    await client.patch(
                        location,
                        content=upload,
                        headers={
                            "Content-Range": f"{len(first)}-{len(data) - 1}",
                            "Content-Length": str(len(second)),
                        },
                    )
                await upload.aclose()
        async with origin_process(data_dir, tmp_path / "origin.log", NO_AUTH) as origin:
            async with _client(origin) as client:
                status = await client.get(location)
                assert status.status_code == 204
                assert status.headers["Range"] == f"0-{len(first) - 1}"  # only the durable chunk
                resumed = await client.patch(
                    location,
                    content=second,
                    headers={"Content-Range": f"{len(first)}-{len(data) - 1}"},
                )
                assert resumed.status_code == 202, resumed.text
                done = await client.put(f"{location}?digest={digest}")
                assert done.status_code == 201, done.text
                fetched = await client.get(f"/v2/crash/chunks/blobs/{digest}")
                assert fetched.content == data
