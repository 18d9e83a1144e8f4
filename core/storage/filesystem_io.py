"""The blocking half of the filesystem driver: every function here runs in a worker thread.

Durability rules kept here in one place: a new object is written to a locked staging file,
fsynced, renamed into place, and its directory fsynced; a directory created on the way is
fsynced into its parent. OSError escapes as is; the async side translates it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import stat as stat_mode
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from core.storage.driver import STAGING_NAME, StorageError


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    """``mkdir -p`` that fsyncs each parent gaining an entry, so new paths survive a crash."""
    try:
        os.mkdir(directory)
    except FileExistsError:
        return  # if it is a file, the rename or open that follows reports it
    except FileNotFoundError:
        _make_dirs(directory.parent)
        try:
            os.mkdir(directory)
        except FileExistsError:
            return
    _fsync_dir(directory.parent)


def stat_object(path: Path) -> os.stat_result:
    try:
        result = os.stat(path)
    except NotADirectoryError as exc:
        raise FileNotFoundError(errno.ENOENT, "no such object", str(path)) from exc
    if not stat_mode.S_ISREG(result.st_mode):
        raise FileNotFoundError(errno.ENOENT, "not an object", str(path))
    return result


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def open_reader(path: Path, offset: int) -> tuple[BinaryIO, int]:
    f = open(path, "rb")  # the reader owns it until its context exits
    try:
        size = os.fstat(f.fileno()).st_size
        f.seek(offset)
    except BaseException:
        f.close()
        raise
    return f, size


def create_staging(staging_dir: Path) -> tuple[Path, BinaryIO]:
    staged = staging_dir / secrets.token_hex(16)
    try:
        f = open(staged, "xb")  # the writer owns it
    except FileNotFoundError:
        _make_dirs(staging_dir)
        f = open(staged, "xb")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # tells clean_temporary this one is live
    except BaseException:
        f.close()
        staged.unlink(missing_ok=True)
        raise
    return staged, f


def _sync_file_range() -> Callable[[int, int, int, int], None] | None:
    """Linux's ``sync_file_range(2)`` (CPython's os module lacks it), through ctypes."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def call(fd: int, offset: int, count: int, flags: int) -> None:
        if function(fd, offset, count, flags) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    return call


#: ``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` starts writing a file's dirty pages
#: to disk without waiting. Called after each ~1 MiB write of an object being received, it
#: makes the disk work while the network does, so the fsync before commit has little left.
#: Where it does not exist, that fsync does all of it.
SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE = _sync_file_range()


#: Writeback is started each time a file grows past a multiple of this (a call per 1 MiB
#: write measured slower than none at all).
WRITEBACK_STEP = 16 << 20


def write_parts(f: BinaryIO, *parts: bytes | bytearray) -> None:
    for part in parts:
        f.write(part)
    end = f.tell()
    if (end - sum(map(len, parts))) // WRITEBACK_STEP != end // WRITEBACK_STEP:
        start_writeback(f)


def start_writeback(f: BinaryIO) -> None:
    """Ask the kernel to start writing ``f``'s dirty pages (advisory: never fails)."""
    if _SYNC_FILE_RANGE is None:
        return
    f.flush()
    try:
        # Offset 0, length 0: the whole file; pages already written back are skipped.
        _SYNC_FILE_RANGE(f.fileno(), 0, 0, SYNC_FILE_RANGE_WRITE)
    except OSError:
        pass  # a filesystem that cannot: the fsync before commit writes everything


def publish(f: BinaryIO, staged: Path, final: Path, pending: bytes | bytearray) -> None:
    """Make the staged bytes durable, then visible at ``final``; ``f`` is closed either way."""
    try:
        f.write(pending)
        f.flush()
        os.fsync(f.fileno())
        _make_dirs(final.parent)
        try:
            os.replace(staged, final)
        except FileNotFoundError:
            # A concurrent delete of the prefix can remove the directory between mkdir and
            # rename; recreate it once rather than fail a finished write.
            _make_dirs(final.parent)
            os.replace(staged, final)
        _fsync_dir(final.parent)
    finally:
        f.close()  # only now: the lock keeps clean_temporary away until the rename is done


def discard(f: BinaryIO, staged: Path) -> None:
    try:
        f.close()
    finally:
        staged.unlink(missing_ok=True)


def put(staging_dir: Path, final: Path, data: bytes) -> None:
    staged, f = create_staging(staging_dir)
    try:
        publish(f, staged, final, data)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def open_appender(path: Path, truncate_to: int) -> BinaryIO:
    if truncate_to == 0:
        _make_dirs(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # bytes were recorded: it must exist
    try:
        size = os.fstat(fd).st_size
        if size < truncate_to:
            raise StorageError(f"{path.name}: {size} bytes, shorter than recorded {truncate_to}")
        os.ftruncate(fd, truncate_to)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def sync_appended(f: BinaryIO, pending: bytearray, directory: Path | None) -> None:
    f.write(pending)
    f.flush()
    os.fsync(f.fileno())
    if directory is not None:
        _fsync_dir(directory)


def write_and_close(f: BinaryIO, pending: bytes | bytearray) -> None:
    try:
        f.write(pending)
    finally:
        f.close()


def move(src: Path, dst: Path) -> None:
    stat_object(src)  # only objects move, and a missing src fails before dst dirs appear
    _make_dirs(dst.parent)
    os.replace(src, dst)
    _fsync_dir(dst.parent)


def _rmtree(path: Path) -> None:
    def ignore_missing(exc: BaseException) -> None:
        if not isinstance(exc, FileNotFoundError):  # a concurrent delete got there first
            raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda _fn, _path, exc: ignore_missing(exc))
    else:
        shutil.rmtree(path, onerror=lambda _fn, _path, info: ignore_missing(info[1]))


def delete(path: Path) -> None:
    try:
        path.unlink()
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        if not path.is_dir():
            raise
        _rmtree(path)


def list_dir(directory: Path, at_root: bool) -> list[str]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if at_root:
        names = [name for name in names if name != STAGING_NAME]
    return sorted(names)


def _remove_if_abandoned(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def clean_staging(staging_dir: Path, older_than_seconds: float) -> int:
    try:
        entries = list(os.scandir(staging_dir))
    except FileNotFoundError:
        return 0
    now = time.time()
    removed = 0
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than_seconds:
                continue
            removed += _remove_if_abandoned(entry.path)
        except FileNotFoundError:
            continue  # committed, discarded or cleaned meanwhile
    return removed
