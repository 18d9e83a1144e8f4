"""One contract suite for every StorageDriver: the filesystem driver, the memory fake and the
S3 driver (against a real S3 server: moto, see tests/s3server.py).

A behaviour tested here holds for all three; the few filesystem-only tests at the end cover
what only a real disk has (staging files left by a killed process). The S3-only tests are in
test_s3_driver.py.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from core.storage.driver import CHUNK_SIZE, STAGING_NAME, PathNotFound, StorageDriver, StorageError
from core.storage.filesystem import FilesystemDriver
from core.storage.location import S3Credentials, S3Location
from core.storage.memory import MemoryDriver
from core.storage.s3 import MIN_PART_SIZE, S3Driver
from tests.s3server import TEST_CREDENTIALS

REPO_ROOT = Path(__file__).resolve().parents[2]

# More than three chunks, and not a multiple of the chunk size.
BIG = random.Random(7).randbytes(3 * CHUNK_SIZE + 5)


async def open_s3_driver(location: S3Location) -> S3Driver:
    """The S3 driver with parts of S3's minimum size, so BIG (3 chunks) spans several."""
    credentials = S3Credentials(*TEST_CREDENTIALS)
    return await S3Driver.open(location, credentials, part_size=MIN_PART_SIZE)


@pytest.fixture(params=["filesystem", "memory", "s3"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageDriver]:
    if request.param == "filesystem":
        yield FilesystemDriver(tmp_path / "store")  # not created yet: the driver must cope
    elif request.param == "memory":
        yield MemoryDriver()
    else:
        s3 = await open_s3_driver(request.getfixturevalue("s3_location"))
        try:
            yield s3
        finally:
            await s3.aclose()


async def staging_files(driver: StorageDriver) -> list[str]:
    """Staging files on disk, or multipart uploads in progress in the bucket (the memory
    driver has none that could outlive a writer)."""
    if isinstance(driver, FilesystemDriver):
        staging = driver.root / STAGING_NAME
        return sorted(os.listdir(staging)) if staging.exists() else []
    if isinstance(driver, S3Driver):
        return [upload.key for upload in await driver.client.pending_uploads("")]
    return []


async def assert_no_leftovers(driver: StorageDriver) -> None:
    assert await staging_files(driver) == []
    assert await driver.clean_temporary(0) == 0


class Boom(Exception):
    pass


# --- whole objects ----------------------------------------------------------------------------


async def test_put_get_stat(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("a/b/c", b"hello")
        assert await driver.get("a/b/c") == b"hello"
        info = await driver.stat("a/b/c")
        assert (info.path, info.size) == ("a/b/c", 5)
        assert abs(info.modified - time.time()) < 60

        await driver.put("a/b/c", b"bye")
        assert await driver.get("a/b/c") == b"bye"
        await driver.put("empty", b"")
        assert (await driver.stat("empty")).size == 0
        await driver.put("big", BIG)
        assert await driver.get("big") == BIG
        await assert_no_leftovers(driver)


async def test_missing_is_path_not_found(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("a/b", b"x")
        # Absent, a directory, or below an object: none of them is an object.
        for path in ("nope", "a/nope", "a", "a/b/c"):
            with pytest.raises(PathNotFound):
                await driver.stat(path)
            with pytest.raises(PathNotFound):
                await driver.get(path)
            with pytest.raises(PathNotFound):
                async with driver.open_reader(path):
                    pass
        with pytest.raises(PathNotFound):
            await driver.move("nope", "elsewhere")
        assert await driver.list("") == ["a"]  # the failed move created nothing


async def test_object_and_directory_cannot_share_a_path(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("a/b", b"x")
        for path in ("a", "a/b/c"):
            with pytest.raises(StorageError) as caught:
                await driver.put(path, b"y")
            assert not isinstance(caught.value, PathNotFound)
        with pytest.raises(StorageError):
            async with driver.open_writer("a") as writer:
                await writer.write(b"y")
                await writer.commit()
        assert await driver.get("a/b") == b"x"
        await assert_no_leftovers(driver)


# --- writers ----------------------------------------------------------------------------------


async def test_writer_commit_makes_object_visible_atomically(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("blobs/replaced", b"old")
        small = [bytes([i % 251]) * 1000 for i in range(2000)]  # ~2 MB in small writes
        expected = b"".join(small) + BIG
        async with (
            driver.open_writer("blobs/new") as new,
            driver.open_writer("blobs/replaced") as replaced,
        ):
            for piece in small:
                await new.write(piece)
            await new.write(BIG)
            await replaced.write(b"new content")
            assert new.written == len(expected)
            with pytest.raises(PathNotFound):
                await driver.stat("blobs/new")
            assert await driver.list("blobs") == ["replaced"]
            assert await driver.get("blobs/replaced") == b"old"

            await new.commit()
            await replaced.commit()
            assert await driver.get("blobs/new") == expected
        assert await driver.get("blobs/replaced") == b"new content"
        assert (await driver.stat("blobs/new")).size == len(expected)
        await assert_no_leftovers(driver)


async def test_writer_left_by_exception_leaves_nothing(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        with pytest.raises(Boom):
            async with driver.open_writer("blobs/x") as writer:
                await writer.write(BIG)
                await writer.write(b"tail")  # still buffered when the error hits
                raise Boom
        with pytest.raises(PathNotFound):
            await driver.stat("blobs/x")
        await assert_no_leftovers(driver)


async def test_writer_left_by_cancellation_leaves_nothing(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            async with driver.open_writer("blobs/x") as writer:
                await writer.write(BIG)
                scope.cancel()
                await writer.commit()  # cancelled before it can publish
        assert scope.cancelled_caught
        with pytest.raises(PathNotFound):
            await driver.stat("blobs/x")
        await assert_no_leftovers(driver)


async def test_writer_refuses_use_after_commit(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        async with driver.open_writer("x") as writer:
            await writer.write(b"abc")
            await writer.commit()
            with pytest.raises(RuntimeError):
                await writer.write(b"more")
            with pytest.raises(RuntimeError):
                await writer.commit()
        assert await driver.get("x") == b"abc"
        async with driver.open_writer("y") as abandoned:
            await abandoned.write(b"abc")
        with pytest.raises(RuntimeError):
            await abandoned.write(b"after exit")
        with pytest.raises(RuntimeError):
            await abandoned.commit()
        with pytest.raises(PathNotFound):
            await driver.stat("y")


async def test_concurrent_writers_to_one_path_leave_one_whole_object(
    driver: StorageDriver,
) -> None:
    payloads = [bytes([n]) * (2 * CHUNK_SIZE + n) for n in range(1, 5)]

    async def write(data: bytes) -> None:
        async with driver.open_writer("blobs/same") as writer:
            for start in range(0, len(data), 256 * 1024):
                await writer.write(data[start : start + 256 * 1024])
                await trio.lowlevel.checkpoint()  # let the writers interleave
            await writer.commit()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for data in payloads:
                nursery.start_soon(write, data)
        assert await driver.get("blobs/same") in payloads
        await assert_no_leftovers(driver)


# --- readers ----------------------------------------------------------------------------------


async def test_reader_chunks_whole_object(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("big", BIG)
        async with driver.open_reader("big") as reader:
            assert reader.size == len(BIG)
            pieces = [piece async for piece in reader.chunks()]
            assert [len(p) for p in pieces] == [CHUNK_SIZE] * 3 + [5]
            assert b"".join(pieces) == BIG
            assert await reader.read() == b""


async def test_reader_offset_and_lengths(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("big", BIG)
        async with driver.open_reader("big", offset=10) as reader:
            assert reader.size == len(BIG)  # the object's size, not what is left
            pieces = [piece async for piece in reader.chunks(CHUNK_SIZE + 7)]
            assert [len(p) for p in pieces] == [CHUNK_SIZE, 7]
            position = 10 + CHUNK_SIZE + 7
            assert b"".join(pieces) == BIG[10:position]
            assert await reader.read(5) == BIG[position : position + 5]
            assert [piece async for piece in reader.chunks(0)] == []
            rest = [piece async for piece in reader.chunks()]
            assert b"".join(rest) == BIG[position + 5 :]
            assert await reader.read(1) == b""


async def test_reader_stopped_early_and_resumed(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("big", BIG)
        async with driver.open_reader("big") as reader:
            async for _first in reader.chunks():
                break  # no async generator left to finalise (warnings are errors here)
            assert await reader.read(3) == BIG[CHUNK_SIZE : CHUNK_SIZE + 3]


async def test_reader_rejects_bad_offsets_and_lengths(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("small", b"0123456789")
        with pytest.raises(ValueError):
            async with driver.open_reader("small", offset=-1):
                pass
        async with driver.open_reader("small", offset=4) as reader:
            with pytest.raises(ValueError):
                reader.chunks(7)  # only 6 bytes remain
            with pytest.raises(ValueError):
                await reader.read(-1)
            assert b"".join([piece async for piece in reader.chunks(6)]) == b"456789"
        async with driver.open_reader("small", offset=50) as reader:
            assert reader.size == 10
            assert await reader.read() == b""
            assert [piece async for piece in reader.chunks()] == []


@pytest.mark.parametrize("change", ["delete", "replace"])
async def test_open_reader_survives_delete_or_replace(driver: StorageDriver, change: str) -> None:
    with trio.fail_after(10):
        await driver.put("big", BIG)
        async with driver.open_reader("big") as reader:
            head = await reader.read(100)
            if change == "delete":
                await driver.delete("big")
            else:
                await driver.put("big", b"something else")
            rest = b"".join([piece async for piece in reader.chunks()])
        assert head + rest == BIG


async def test_reader_sees_the_size_it_opened_with(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("u", b"abc")
        async with driver.open_reader("u") as reader:
            async with driver.open_appender("u", 3) as appender:
                await appender.write(b"def")
                await appender.flush()
            assert reader.size == 3
            assert await reader.read(100) == b"abc"
            assert await reader.read(100) == b""
        async with driver.open_reader("u", offset=1) as reader:
            assert b"".join([piece async for piece in reader.chunks()]) == b"bcdef"


# --- appenders --------------------------------------------------------------------------------


async def test_appender_truncates_appends_and_flushes(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        async with driver.open_appender("uploads/u1", 0) as appender:
            assert appender.size == 0
            await appender.write(b"hello ")
            await appender.write(b"world")
            assert appender.size == 11
            await appender.flush()
        assert await driver.get("uploads/u1") == b"hello world"

        # The caller recorded only "hello" as durable: the rest is cut before appending.
        async with driver.open_appender("uploads/u1", 5) as appender:
            assert appender.size == 5
            await appender.write(b"!")
            await appender.write(BIG)
            await appender.flush()
            assert appender.size == 6 + len(BIG)
        assert await driver.get("uploads/u1") == b"hello!" + BIG

        # Bytes written but not flushed are still there after a clean exit.
        async with driver.open_appender("uploads/u1", 6 + len(BIG)) as appender:
            await appender.write(b"tail")
        assert (await driver.stat("uploads/u1")).size == 10 + len(BIG)

        async with driver.open_appender("uploads/u1", 0) as appender:
            assert appender.size == 0
        assert await driver.get("uploads/u1") == b""
        await assert_no_leftovers(driver)


async def test_appender_after_an_error_keeps_flushed_bytes(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        with pytest.raises(Boom):
            async with driver.open_appender("u", 0) as appender:
                await appender.write(b"durable")
                await appender.flush()
                await appender.write(b"maybe")
                raise Boom
        with pytest.raises(RuntimeError):
            await appender.write(b"closed")
        async with driver.open_appender("u", 7) as appender:
            await appender.write(b"+more")
        assert await driver.get("u") == b"durable+more"


async def test_appender_refuses_a_record_it_cannot_honour(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("u", b"abc")
        with pytest.raises(StorageError) as caught:
            async with driver.open_appender("u", 4):
                pass
        assert not isinstance(caught.value, PathNotFound)
        assert await driver.get("u") == b"abc"
        with pytest.raises(PathNotFound):
            async with driver.open_appender("missing/u", 1):
                pass
        assert await driver.list("") == ["u"]  # nothing created on the way
        with pytest.raises(ValueError):
            async with driver.open_appender("u", -1):
                pass


# --- namespace operations ---------------------------------------------------------------------


async def test_move_creates_parents_and_replaces(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        await driver.put("uploads/u1", b"first")
        await driver.move("uploads/u1", "blobs/sha256/ab/data")
        assert await driver.get("blobs/sha256/ab/data") == b"first"
        with pytest.raises(PathNotFound):
            await driver.stat("uploads/u1")

        await driver.put("uploads/u2", b"second")
        await driver.move("uploads/u2", "blobs/sha256/ab/data")
        assert await driver.get("blobs/sha256/ab/data") == b"second"
        assert await driver.list("uploads") == []

        with pytest.raises(PathNotFound):
            await driver.move("blobs/sha256", "elsewhere")  # a directory is not an object


async def test_delete_object_and_prefix(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        for path in ("r/a", "r/b/c", "r/b/d", "r/b/e/f"):
            await driver.put(path, path.encode())
        await driver.delete("r/b/c")
        assert await driver.list("r/b") == ["d", "e"]
        await driver.delete("r/b")
        assert await driver.list("r") == ["a"]
        with pytest.raises(PathNotFound):
            await driver.get("r/b/e/f")
        await driver.delete("r/b")  # missing is fine
        await driver.delete("r/a/below")  # below an object: missing too
        assert await driver.get("r/a") == b"r/a"
        with pytest.raises(ValueError):
            await driver.delete("")  # never the whole store


async def test_list(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        assert await driver.list("") == []
        for path in ("r/d", "r/a", "r/b/c"):
            await driver.put(path, b"x")
        async with driver.open_writer("s/x") as writer:  # creates the filesystem's staging dir
            await writer.write(b"x")
            await writer.commit()
        assert await driver.list("") == ["r", "s"]
        assert await driver.list("r") == ["a", "b", "d"]
        assert await driver.list("r/b") == ["c"]
        assert await driver.list("missing") == []
        assert await driver.list("r/a") == []  # an object has no children
        # Directories outlive their last object, as on a filesystem.
        await driver.delete("r/b/c")
        assert await driver.list("r") == ["a", "b", "d"]
        assert await driver.list("r/b") == []


async def test_clean_temporary_spares_live_writers(driver: StorageDriver) -> None:
    with trio.fail_after(10):
        async with driver.open_writer("blobs/x") as writer:
            await writer.write(BIG)
            assert await driver.clean_temporary(0) == 0
            await writer.commit()
        assert await driver.get("blobs/x") == BIG


BAD_PATHS = ["../x", "/etc/passwd", "a/../../x", "a/./b", "a//b", "a/", "", "_tmp/x", "a\x00b"]


@pytest.mark.parametrize("bad", BAD_PATHS)
async def test_paths_that_could_escape_are_rejected(
    driver: StorageDriver, bad: str, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        await driver.put("ok", b"x")
        with pytest.raises(ValueError):
            await driver.put(bad, b"escaped")
        with pytest.raises(ValueError):
            await driver.stat(bad)
        with pytest.raises(ValueError):
            await driver.get(bad)
        with pytest.raises(ValueError):
            await driver.delete(bad)
        with pytest.raises(ValueError):
            await driver.move("ok", bad)
        with pytest.raises(ValueError):
            await driver.move(bad, "ok")
        with pytest.raises(ValueError):
            async with driver.open_reader(bad):
                pass
        with pytest.raises(ValueError):
            async with driver.open_writer(bad):
                pass
        with pytest.raises(ValueError):
            async with driver.open_appender(bad, 0):
                pass
        if bad:  # "" is the root, which may be listed
            with pytest.raises(ValueError):
                await driver.list(bad)
        assert await driver.get("ok") == b"x"
        assert not (tmp_path / "x").exists()


# --- filesystem only --------------------------------------------------------------------------


def _make_staging_file(staging: Path, name: str, age_seconds: float) -> Path:
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / name
    path.write_bytes(b"leftover")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


async def test_filesystem_clean_temporary_removes_only_old_leftovers(tmp_path: Path) -> None:
    with trio.fail_after(10):
        driver = FilesystemDriver(tmp_path)
        assert await driver.clean_temporary(0) == 0  # no staging dir yet
        old = _make_staging_file(tmp_path / STAGING_NAME, "old", age_seconds=7200)
        fresh = _make_staging_file(tmp_path / STAGING_NAME, "fresh", age_seconds=0)
        assert await driver.clean_temporary(3600) == 1
        assert not old.exists()
        assert fresh.exists()
        assert await driver.clean_temporary(0) == 1
        assert not fresh.exists()


_KILLED_WRITER = """
import os, sys, pathlib, trio
from core.storage.filesystem import FilesystemDriver

async def main():
    driver = FilesystemDriver(pathlib.Path(sys.argv[1]))
    async with driver.open_writer("blobs/killed") as writer:
        await writer.write(b"x" * int(sys.argv[2]))
        os._exit(9)  # like kill -9: no finally, no context exit

trio.run(main)
"""


async def test_filesystem_writer_killed_before_commit(tmp_path: Path) -> None:
    size = 2 * CHUNK_SIZE + 3  # over the write buffer: the bytes reach the staging file
    with trio.fail_after(10):
        result = await trio.run_process(
            [sys.executable, "-c", _KILLED_WRITER, str(tmp_path), str(size)],
            check=False,
            cwd=REPO_ROOT,
        )
        assert result.returncode == 9
        assert not (tmp_path / "blobs" / "killed").exists()
        leftovers = list((tmp_path / STAGING_NAME).iterdir())
        assert [p.stat().st_size for p in leftovers] == [size]

        driver = FilesystemDriver(tmp_path)
        with pytest.raises(PathNotFound):
            await driver.stat("blobs/killed")
        assert await driver.clean_temporary(0) == 1
        assert await staging_files(driver) == []
