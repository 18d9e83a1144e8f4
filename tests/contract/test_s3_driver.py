"""What only the S3 driver has, against a real S3 server (moto; it checks no signature):
multipart writers, appended objects continued by another origin, abandoned uploads, copies
past CopyObject's limit, presigned URLs, and S3 failures as StorageError.

The contract every driver keeps is tested in test_storage_driver.py.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
import trio

from config.settings import OriginSettings
from core.storage.driver import PathNotFound, StorageError
from core.storage.filesystem import FilesystemDriver
from core.storage.location import S3Credentials, S3Location
from core.storage.s3 import MIN_PART_SIZE, S3Driver
from core.storage.s3_client import S3Client
from core.storage.s3_composite import PIECES_DIR, Piece
from origin.storage import open_storage
from tests.processes import free_port
from tests.s3server import TEST_CREDENTIALS, S3Server

REPO_ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = S3Credentials(*TEST_CREDENTIALS)
PART = MIN_PART_SIZE
MiB = 1024 * 1024


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def open_driver(location: S3Location, **options: int) -> S3Driver:
    return await S3Driver.open(location, CREDENTIALS, **({"part_size": PART} | options))


@pytest.fixture
async def s3(s3_location: S3Location) -> AsyncIterator[S3Driver]:
    driver = await open_driver(s3_location)
    try:
        yield driver
    finally:
        await driver.aclose()


@pytest.fixture
async def other_origin(s3_location: S3Location) -> AsyncIterator[S3Driver]:
    """A second driver on the same bucket, with its own client: another origin process."""
    driver = await open_driver(s3_location)
    try:
        yield driver
    finally:
        await driver.aclose()


async def bucket_keys(driver: S3Driver, prefix: str = "") -> list[str]:
    return sorted(item.key for item in (await driver.client.list(prefix)).objects)


async def manifest_of(driver: S3Driver, path: str) -> list[Piece]:
    data, head = await driver.client.get(path)
    assert head.metadata["depot-composite"] == "1"
    document = json.loads(data)
    assert document["format"] == 1
    pieces = [Piece(p["key"], p["size"], p["etag"]) for p in document["pieces"]]
    assert int(head.metadata["depot-size"]) == sum(p.size for p in pieces)
    return pieces


def assert_mergeable(pieces: list[Piece]) -> None:
    """Big pieces (>= 5 MiB: multipart parts), then a run of small ones: no big piece
    follows a small one."""
    sizes = [p.size for p in pieces]
    first_small = next((i for i, size in enumerate(sizes) if size < MIN_PART_SIZE), len(sizes))
    assert all(size < MIN_PART_SIZE for size in sizes[first_small:]), sizes


# --- writers ----------------------------------------------------------------------------------


async def test_writer_streams_parts_and_publishes_on_commit(s3: S3Driver) -> None:
    data = payload(2 * PART + 100)
    with trio.fail_after(30):
        async with s3.open_writer("blobs/x") as writer:
            for start in range(0, len(data), MiB):
                await writer.write(data[start : start + MiB])
            # Two parts are on the server already, under the final key, and invisible there.
            uploads = await s3.client.pending_uploads("")
            assert [u.key for u in uploads] == ["blobs/x"]
            with pytest.raises(PathNotFound):
                await s3.stat("blobs/x")
            await writer.commit()
        assert await s3.get("blobs/x") == data
        assert (await s3.client.head("blobs/x")).etag.endswith('-3"')  # 3 parts: multipart
        assert await s3.client.pending_uploads("") == []


# --- appended objects -------------------------------------------------------------------------


async def test_appender_keeps_a_manifest_of_mergeable_pieces(
    s3: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_back: list[list[Piece]] = []
    read_pieces = s3.composites.read_pieces

    async def recording_read_pieces(pieces: Sequence[Piece]) -> bytes:
        read_back.append(list(pieces))
        return await read_pieces(pieces)

    monkeypatch.setattr(s3.composites, "read_pieces", recording_read_pieces)
    chunks = [payload(MiB, 1), payload(6 * MiB, 2), payload(100, 3), payload(11 * MiB, 4)]
    expected = b""
    with trio.fail_after(60):
        for chunk in chunks:  # one session per chunk, like PATCH requests
            async with s3.open_appender("uploads/u1/data", len(expected)) as appender:
                half = len(chunk) // 2
                await appender.write(chunk[:half])
                await appender.flush()  # several flushes in one session are fine too
                await appender.write(chunk[half:])
                await appender.flush()
            expected += chunk
            pieces = await manifest_of(s3, "uploads/u1/data")
            assert_mergeable(pieces)
            assert sum(p.size for p in pieces) == len(expected)
            # No piece in the bucket that the manifest does not name.
            assert await bucket_keys(s3, PIECES_DIR) == sorted(p.key for p in pieces)
        assert await s3.get("uploads/u1/data") == expected
        assert (await s3.stat("uploads/u1/data")).size == len(expected)
        # Far past the manifest's own few hundred bytes: offsets are the composite's.
        async with s3.open_reader("uploads/u1/data", len(expected) - 5) as reader:
            assert reader.size == len(expected)
            assert await reader.read() == expected[-5:]
        async with s3.open_reader("uploads/u1/data", len(expected) + 5) as reader:
            assert await reader.read() == b""
        # Only runs of small pieces (< 5 MiB in all) were read back, each piece once.
        assert read_back
        assert all(sum(p.size for p in run) < MIN_PART_SIZE for run in read_back)
        keys = [p.key for run in read_back for p in run]
        assert len(keys) == len(set(keys))


async def test_chunks_of_a_part_or_more_are_never_read_back(
    s3: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_read_back(pieces: Sequence[Piece]) -> bytes:
        raise AssertionError("nothing should be read back")

    monkeypatch.setattr(s3.composites, "read_pieces", no_read_back)
    chunks = [payload(PART, 11), payload(PART + 3, 12), payload(2 * PART, 13), payload(7, 14)]
    expected = b""
    with trio.fail_after(60):
        for chunk in chunks:
            async with s3.open_appender("uploads/u6/data", len(expected)) as appender:
                await appender.write(chunk)
            expected += chunk
        await s3.move("uploads/u6/data", "blobs/u6")
        assert await s3.get("blobs/u6") == expected


async def test_upload_continues_on_another_origin_and_merges_server_side(
    s3: S3Driver, other_origin: S3Driver
) -> None:
    first, second = payload(6 * MiB, 5), payload(3 * MiB, 6)
    with trio.fail_after(60):
        async with s3.open_appender("uploads/u2/data", 0) as appender:
            await appender.write(first)
            await appender.flush()
        recorded = len(first)  # what the metadata database would hold
        async with other_origin.open_appender("uploads/u2/data", recorded) as appender:
            assert appender.size == recorded
            await appender.write(second)
            await appender.flush()
        await other_origin.move("uploads/u2/data", "blobs/sha256/ab/abcd/data")
        assert await s3.get("blobs/sha256/ab/abcd/data") == first + second
        # Built by UploadPartCopy in one multipart upload: S3's multipart ETag.
        assert (await s3.client.head("blobs/sha256/ab/abcd/data")).etag.endswith('-2"')
        with pytest.raises(PathNotFound):
            await s3.stat("uploads/u2/data")
        assert await bucket_keys(s3, PIECES_DIR) == []
        assert await s3.client.pending_uploads("") == []
        assert await s3.clean_temporary(0) == 0


async def test_truncating_to_the_recorded_length_cuts_pieces_server_side(
    s3: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = payload(7 * MiB, 7)
    recorded = 6 * MiB  # e.g. the database update after the last flush never happened
    with trio.fail_after(60):
        async with s3.open_appender("uploads/u3/data", 0) as appender:
            await appender.write(written)
            await appender.flush()
            await appender.write(b"never recorded either")
        assert [p.size for p in await manifest_of(s3, "uploads/u3/data")] == [7 * MiB, 21]

        async def no_read_back(pieces: Sequence[Piece]) -> bytes:
            raise AssertionError("a cut is copied server-side")

        monkeypatch.setattr(s3.composites, "read_pieces", no_read_back)
        async with s3.open_appender("uploads/u3/data", recorded) as appender:
            pieces = await manifest_of(s3, "uploads/u3/data")
            assert [p.size for p in pieces] == [recorded]  # the first 6 MiB of the 7 MiB piece
            await appender.write(b"tail")
        assert await s3.get("uploads/u3/data") == written[:recorded] + b"tail"
        pieces = await manifest_of(s3, "uploads/u3/data")
        assert_mergeable(pieces)
        assert await bucket_keys(s3, PIECES_DIR) == sorted(p.key for p in pieces)


async def test_two_origins_appending_at_once_cannot_both_win(
    s3: S3Driver, other_origin: S3Driver
) -> None:
    with trio.fail_after(60):
        async with (
            s3.open_appender("uploads/u4/data", 0) as mine,
            other_origin.open_appender("uploads/u4/data", 0) as theirs,
        ):
            await mine.write(b"mine")
            await theirs.write(b"theirs")
            await mine.flush()
            with pytest.raises(StorageError):
                await theirs.flush()  # the manifest changed since it was read
        assert await s3.get("uploads/u4/data") == b"mine"
        assert await s3.clean_temporary(0) == 0  # the loser's piece went with it


async def test_state_kept_by_the_caller_continues_on_another_origin_without_manifest_objects(
    s3: S3Driver, other_origin: S3Driver
) -> None:
    """The upload's database row keeps the pieces list (``state``): appending writes no
    manifest object and reads none, another origin continues from the state alone, small
    chunks merge, and the sweep spares a session the caller says is in use."""
    chunks = [payload(6 * MiB, 21), b"small", payload(3 * MiB, 22), payload(PART, 23)]
    path = "uploads/u7/data"
    state, size, expected = b"", 0, b""
    with trio.fail_after(60):
        for index, chunk in enumerate(chunks):
            origin = (s3, other_origin)[index % 2]
            async with origin.open_appender(path, size, state) as appender:
                assert appender.size == size
                await appender.write(chunk)
                await appender.flush()
            assert appender.state is not None
            state, size, expected = appender.state, appender.size, expected + chunk
            assert not await s3.client.exists(path)  # no manifest object: the state is it
        pieces = json.loads(state)["pieces"]
        assert sum(p["size"] for p in pieces) == len(expected)
        assert_mergeable([Piece(p["key"], p["size"], p["etag"]) for p in pieces])

        # Whatever its age, an open session's pieces stay.
        assert await s3.clean_temporary(0, in_use={path}.__contains__) == 0
        assert len(await bucket_keys(s3, PIECES_DIR)) >= len(pieces)

        # A state recorded for another length is refused, not trusted.
        with pytest.raises(StorageError):
            async with s3.open_appender(path, size + 1, state):
                pass

        await other_origin.settle_appended(path, state)
        assert (await s3.stat(path)).size == len(expected)
        await s3.move(path, "blobs/u7")
        assert await other_origin.get("blobs/u7") == expected
        assert await bucket_keys(s3, PIECES_DIR) == []


# --- abandoned work ---------------------------------------------------------------------------

_KILLED_WRITER = """
import os, sys, trio
from core.storage.location import S3Credentials, S3Location
from core.storage.s3 import S3Driver

async def main():
    location = S3Location(bucket=sys.argv[1], endpoint=sys.argv[2])
    driver = await S3Driver.open(location, S3Credentials("k", "s"), part_size=5 << 20)
    async with driver.open_writer("blobs/killed") as writer:
        await writer.write(b"x" * (6 << 20))  # one part sent
        os._exit(9)  # like kill -9: no abort, no context exit

trio.run(main)
"""


async def test_clean_temporary_aborts_abandoned_uploads_and_orphan_pieces(
    s3: S3Driver, s3_location: S3Location
) -> None:
    with trio.fail_after(60):
        assert s3_location.endpoint is not None
        result = await trio.run_process(
            [sys.executable, "-c", _KILLED_WRITER, s3_location.bucket, s3_location.endpoint],
            check=False,
            cwd=REPO_ROOT,
        )
        assert result.returncode == 9
        assert [u.key for u in await s3.client.pending_uploads("")] == ["blobs/killed"]

        async with s3.open_appender("uploads/u5/data", 0) as appender:
            await appender.write(b"kept")
        orphan = s3.composites.piece_name("uploads/u5/data", "deadbeefdeadbeef", 1)
        await s3.client.put(orphan, b"left by a crash before its manifest was written")

        # The upload's age is what the server reports: moto answers a constant 2010 date for
        # every upload, a real S3 the true one. Pieces are dated truly by both.
        [upload] = await s3.client.pending_uploads("")
        young = upload.initiated > time.time() - 3600
        assert await s3.clean_temporary(3600) == (0 if young else 1)
        assert orphan in await bucket_keys(s3, PIECES_DIR)  # young: spared
        assert await s3.clean_temporary(0) == (2 if young else 1)
        assert await s3.client.pending_uploads("") == []
        assert orphan not in await bucket_keys(s3, PIECES_DIR)
        assert await s3.get("uploads/u5/data") == b"kept"
        with pytest.raises(PathNotFound):
            await s3.stat("blobs/killed")


# --- namespace --------------------------------------------------------------------------------


async def test_move_past_the_copy_limit_copies_in_ranges(s3_location: S3Location) -> None:
    data = payload(13 * MiB, 9)
    driver = await open_driver(s3_location, max_copy_size=6 * MiB, copy_part_size=PART)
    try:
        with trio.fail_after(60):
            await driver.put("uploads/big", data)
            await driver.move("uploads/big", "blobs/big")
            assert await driver.get("blobs/big") == data
            assert (await driver.client.head("blobs/big")).etag.endswith('-3"')
            assert await driver.list("uploads") == []
    finally:
        await driver.aclose()


async def test_objects_written_by_other_tools_still_make_directories(s3: S3Driver) -> None:
    with trio.fail_after(30):
        await s3.client.put("x/y", b"no directory markers")  # as `aws s3 cp` would
        assert await s3.list("") == ["x"]
        assert await s3.list("x") == ["y"]
        with pytest.raises(StorageError):
            await s3.put("x", b"a directory is in the way")
        await s3.put("x/z", b"ok")
        assert await s3.list("x") == ["y", "z"]


async def test_a_key_prefix_keeps_everything_inside_it(s3_location: S3Location) -> None:
    scoped = S3Location(
        bucket=s3_location.bucket, prefix="depot/prod/", endpoint=s3_location.endpoint
    )
    driver = await open_driver(scoped)
    try:
        with trio.fail_after(30):
            await driver.put("a/b", b"1")
            async with driver.open_appender("uploads/u/data", 0) as appender:
                await appender.write(b"2")
            assert await driver.list("") == ["a", "uploads"]
            keys = await bucket_keys(driver)
            assert keys and all(key.startswith("depot/prod/") for key in keys)
            await driver.move("uploads/u/data", "a/c")
            assert await driver.get("a/c") == b"2"
    finally:
        await driver.aclose()


# --- presigned URLs ---------------------------------------------------------------------------


async def test_presigned_url_fetches_without_credentials(s3: S3Driver) -> None:
    data = payload(3 * MiB, 10)
    with trio.fail_after(30):
        await s3.put("blobs/sha256/cd/cdef/data", data)
        url = s3.presigned_get_url("blobs/sha256/cd/cdef/data", 60)
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
        assert "moto-test-secret" not in url
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            response = await client.get(url)  # no Authorization header at all
            assert response.status_code == 200
            assert response.content == data
            ranged = await client.get(url, headers={"Range": "bytes=-10"})
            assert ranged.status_code == 206
            assert ranged.content == data[-10:]
        for bad in (0, 8 * 24 * 3600):
            with pytest.raises(ValueError):
                s3.presigned_get_url("blobs/sha256/cd/cdef/data", bad)


# --- failures and wiring ----------------------------------------------------------------------


async def test_missing_bucket_and_unreachable_server_are_storage_errors(
    s3_server: S3Server,
) -> None:
    with trio.fail_after(60):
        with pytest.raises(StorageError, match="does not exist"):
            await S3Driver.open(
                S3Location("no-such-bucket", endpoint=s3_server.endpoint), CREDENTIALS
            )
        nobody = S3Location("bucket", endpoint=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(StorageError):
            await S3Driver.open(nobody, CREDENTIALS)
        # A request failing mid-use is a StorageError too, never a botocore exception.
        client = S3Client(nobody, CREDENTIALS)
        try:
            with pytest.raises(StorageError):
                await client.put("k", b"v")
        finally:
            await client.aclose()


async def test_open_storage_follows_the_storage_url(
    s3_location: S3Location, tmp_path: Path
) -> None:
    settings = OriginSettings(
        data_dir=tmp_path,
        storage_url=f"s3://{s3_location.bucket}?endpoint={s3_location.endpoint}",
        aws_access_key_id=CREDENTIALS.access_key_id,
        aws_secret_access_key=CREDENTIALS.secret_access_key,
    )
    with trio.fail_after(30):
        async with open_storage(settings) as storage:
            assert isinstance(storage, S3Driver)
            await storage.put("a", b"in the bucket")
        async with open_storage(OriginSettings(data_dir=tmp_path)) as storage:
            assert isinstance(storage, FilesystemDriver)
            assert storage.root == tmp_path / "storage"
        elsewhere = OriginSettings(data_dir=tmp_path, storage_url=f"file://{tmp_path}/blobs")
        async with open_storage(elsewhere) as storage:
            assert isinstance(storage, FilesystemDriver)
            assert storage.root == tmp_path / "blobs"
