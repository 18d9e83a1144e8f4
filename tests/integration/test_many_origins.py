"""Two origin processes on one PostgreSQL database and one S3 bucket (moto) behave as one
registry behind a load balancer: an upload continues on whichever origin the next chunk
reaches, survives the first origin's kill -9 and restart, pushes to one are pulled from the
other, garbage collection runs on both at once without deleting anything live, and both
publish the same signing keys."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.oci import (
    Blob,
    guarded,
    new_image,
    push_blob_raw,
    push_manifest,
    sha256_digest,
    start_upload,
    upload_url,
)
from tests.many_origins import Cluster, cluster
from tests.processes import OriginProcess

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MiB = 1024 * 1024
TEST_SECONDS = 120


def client(origin: OriginProcess) -> httpx.AsyncClient:
    return guarded(httpx.AsyncClient(base_url=origin.url, timeout=60))


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def patch(
    http: httpx.AsyncClient, location: str, offset: int, chunk: bytes
) -> httpx.Response:
    response = await http.patch(
        location,
        content=chunk,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
        },
    )
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == f"0-{offset + len(chunk) - 1}"
    return response


async def blob_digest(http: httpx.AsyncClient, repo: str, digest: str) -> str:
    hasher = hashlib.sha256()
    async with http.stream("GET", f"/v2/{repo}/blobs/{digest}") as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_bytes():
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


async def wait_for_log(origins: Cluster, pattern: str, count: int) -> None:
    """Until ``pattern`` appears ``count`` times in the origins' logs (polled: a log file
    offers nothing to block on)."""
    while len(re.findall(pattern, origins.log_text())) < count:  # noqa: ASYNC110
        await trio.sleep(0.1)


async def test_upload_alternating_origins_push_pull_and_gc_on_both(tmp_path: Path) -> None:
    settings = ["gc_interval_seconds = 0.3", "gc_grace_seconds = 600"]
    with trio.fail_after(TEST_SECONDS):
        async with (
            cluster(tmp_path, settings) as origins,
            origins.origin() as one,
            origins.origin() as two,
            client(one) as first,
            client(two) as second,
        ):
            jwks = [(await http.get("/.well-known/jwks.json")).json() for http in (first, second)]
            assert jwks[0] == jwks[1] and jwks[0]["keys"]

            # A chunked upload, each chunk to the other origin: big chunks, and small ones
            # staged and merged server-side.
            chunks = [payload(6 * MiB, 1), payload(MiB, 2), payload(300_000, 3)]
            chunks += [payload(6 * MiB, 4), payload(2 * MiB, 5)]
            location = upload_url(await start_upload(first, "acme/app"))
            offset = 0
            for index, chunk in enumerate(chunks[:3]):
                await patch((first, second)[index % 2], location, offset, chunk)
                offset += len(chunk)

            # Garbage collection on both, several passes, with the upload in flight.
            await wait_for_log(origins, r"garbage collection: ", 4)
            for index, chunk in enumerate(chunks[3:], start=3):
                await patch((first, second)[index % 2], location, offset, chunk)
                offset += len(chunk)
            whole = b"".join(chunks)
            digest = sha256_digest(whole)
            done = await first.put(location, params={"digest": digest})
            assert done.status_code == 201, done.text
            for http in (first, second):
                assert await blob_digest(http, "acme/app", digest) == digest

            # Monolithic push to one, pull from the other.
            big = Blob(payload(32 * MiB, 6))
            await push_blob_raw(second, "acme/big", big)
            assert await blob_digest(first, "acme/big", big.digest) == big.digest

            image = new_image(layers=2)
            await push_manifest(first, "acme/app", image, "v1")
            await wait_for_log(origins, r"garbage collection: ", 8)
            pulled = await second.get(
                "/v2/acme/app/manifests/v1", headers={"Accept": image.media_type}
            )
            assert pulled.status_code == 200 and pulled.content == image.payload
            for blob in image.blobs:
                assert await blob_digest(second, "acme/app", blob.digest) == blob.digest
            assert await blob_digest(second, "acme/app", digest) == digest
        assert "Traceback" not in origins.log_text()


async def test_kill_9_mid_upload_and_resume_on_the_other_origin(tmp_path: Path) -> None:
    first_chunk, second_chunk = payload(6 * MiB, 11), payload(8 * MiB, 12)
    digest = sha256_digest(first_chunk + second_chunk)
    with trio.fail_after(TEST_SECONDS):
        async with cluster(tmp_path) as origins, origins.origin("origin-a") as survivor:
            async with origins.origin("origin-b") as doomed, client(doomed) as to_doomed:
                location = upload_url(await start_upload(to_doomed, "acme/app"))
                await patch(to_doomed, location, 0, first_chunk)
                halfway = trio.Event()

                async def body() -> AsyncIterator[bytes]:
                    yield second_chunk[: 4 * MiB]
                    halfway.set()
                    await trio.sleep_forever()

                async def interrupted_patch() -> None:
                    await to_doomed.patch(
                        location,
                        content=body(),
                        headers={"Content-Range": f"{len(first_chunk)}-{14 * MiB - 1}"},
                    )

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(interrupted_patch)
                    await halfway.wait()
                    await doomed.kill()  # SIGKILL while the chunk streams in
                    nursery.cancel_scope.cancel()  # the client gives up on that request

            async with client(survivor) as http:
                status = await http.get(location)
                assert status.status_code == 204, status.text
                assert status.headers["Range"] == f"0-{len(first_chunk) - 1}"
                await patch(http, location, len(first_chunk), second_chunk)
                done = await http.put(location, params={"digest": digest})
                assert done.status_code == 201, done.text
                assert await blob_digest(http, "acme/app", digest) == digest

            async with origins.origin("origin-b") as restarted, client(restarted) as http:
                assert await blob_digest(http, "acme/app", digest) == digest


async def test_chunked_upload_alternating_origins_on_a_shared_directory(tmp_path: Path) -> None:
    """The same database state serves the filesystem driver on one directory all origins
    mount: each chunk appended by whichever origin gets it, the digest computed once."""
    chunks = [payload(3 * MiB, 21), payload(100_000, 22), payload(2 * MiB, 23)]
    digest = sha256_digest(b"".join(chunks))
    with trio.fail_after(TEST_SECONDS):
        async with (
            cluster(tmp_path, storage="file") as origins,
            origins.origin() as one,
            origins.origin() as two,
            client(one) as first,
            client(two) as second,
        ):
            location = upload_url(await start_upload(second, "acme/app"))
            offset = 0
            for index, chunk in enumerate(chunks):
                await patch((first, second)[index % 2], location, offset, chunk)
                offset += len(chunk)
            done = await second.put(location, params={"digest": digest})
            assert done.status_code == 201, done.text
            for http in (first, second):
                assert await blob_digest(http, "acme/app", digest) == digest
