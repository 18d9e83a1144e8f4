"""Storage driver on a local directory: the embedded default.

Object ``a/b/c`` is the file ``<root>/a/b/c``. Writers stage under ``<root>/_tmp/`` (inside
the root, so on the same filesystem and ``os.replace`` is atomic), fsync, rename into place
and fsync the directory. Every blocking call runs in a worker thread through one
CapacityLimiter per driver, and bytes move 1 MiB per thread hop: a hop costs ~85 µs, and
smaller pieces halve throughput (PITFALLS.md).

Staging files are ``flock``-ed while their writer lives. A killed process's locks vanish
with it, so :meth:`FilesystemDriver.clean_temporary` removes only abandoned files and is
safe to run while writers are active, not only at startup.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar, TypeVarTuple

import trio

from core.storage import filesystem_io as fsio
from core.storage.driver import (
    CHUNK_SIZE,
    STAGING_NAME,
    Appender,
    ChunkStream,
    FileInfo,
    PathNotFound,
    Reader,
    StorageDriver,
    StorageError,
    Writer,
    split_path,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_MAX_THREADS = 16

# For lookups, a directory (or a file where a directory should be) means "no such object".
_LOOKUP_MISSING: tuple[type[OSError], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
)


async def _in_thread(limiter: trio.CapacityLimiter, fn: Callable[[*Ts], T], *args: *Ts) -> T:
    # Never abandon_on_cancel: a hop always runs to completion, so a cancellation cannot
    # orphan a file handle or leave a rename half-known; it surfaces at the next checkpoint.
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


@contextmanager
def _translated(
    label: str, missing: tuple[type[OSError], ...] = (FileNotFoundError,)
) -> Iterator[None]:
    try:
        yield
    except missing as exc:
        raise PathNotFound(f"no such object: {label}") from exc
    except OSError as exc:
        raise StorageError(f"{label}: {exc.strerror or exc}") from exc


# --- streaming objects ----------------------------------------------------------------------


class _FileReader:
    def __init__(
        self, f: BinaryIO, size: int, offset: int, label: str, limiter: trio.CapacityLimiter
    ) -> None:
        self.size = size
        self._file = f
        self._position = offset
        self._label = label
        self._limiter = limiter

    async def read(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        # Never past the size seen at open: a reader is a view of that many bytes even if
        # an appender grows the file meanwhile (the memory driver snapshots the same way).
        count = min(max_bytes, self.size - self._position)
        if count <= 0:
            await trio.lowlevel.checkpoint()
            return b""
        with _translated(self._label):
            data = await _in_thread(self._limiter, self._file.read, count)
        self._position += len(data)
        return data

    def chunks(self, length: int | None = None) -> AsyncIterator[bytes]:
        remaining = max(0, self.size - self._position)
        if length is None:
            length = remaining
        elif not 0 <= length <= remaining:
            raise ValueError(f"length {length} outside the {remaining} bytes remaining")
        return ChunkStream(self.read, length)


class _BufferedFile:
    """Batches small writes into ~1 MiB thread hops."""

    def __init__(self, f: BinaryIO, label: str, limiter: trio.CapacityLimiter) -> None:
        self._file = f
        self._label = label
        self._limiter = limiter
        self._pending = bytearray()
        self._usable = True

    def _check_usable(self) -> None:
        if not self._usable:
            raise RuntimeError(f"{self._label}: closed, committed or failed earlier")

    async def _buffer(self, data: bytes) -> None:
        self._check_usable()
        if len(self._pending) + len(data) < CHUNK_SIZE:
            await trio.lowlevel.checkpoint()
            self._pending += data
            return
        try:
            with _translated(self._label):
                await _in_thread(self._limiter, fsio.write_parts, self._file, self._pending, data)
        except StorageError:
            self._usable = False  # how much reached the file is unknown
            raise
        self._pending = bytearray()


class _FileWriter(_BufferedFile):
    def __init__(
        self,
        f: BinaryIO,
        staged: Path,
        final: Path,
        label: str,
        limiter: trio.CapacityLimiter,
    ) -> None:
        super().__init__(f, label, limiter)
        self.written = 0
        self._staged = staged
        self._final = final
        self._committed = False

    async def write(self, data: bytes) -> None:
        await self._buffer(data)
        self.written += len(data)

    async def commit(self) -> None:
        self._check_usable()
        self._usable = False
        with _translated(self._label):
            await _in_thread(
                self._limiter, fsio.publish, self._file, self._staged, self._final, self._pending
            )
        self._committed = True  # no checkpoint since the hop: a pending cancel can't skip this

    async def discard_uncommitted(self) -> None:
        if self._committed:
            return
        self._usable = False
        with trio.CancelScope(shield=True):
            try:
                await _in_thread(self._limiter, fsio.discard, self._file, self._staged)
            except OSError:
                # Don't mask the error that brought us here; clean_temporary gets it later.
                logger.warning("could not remove staging file %s", self._staged, exc_info=True)


class _FileAppender(_BufferedFile):
    def __init__(
        self, f: BinaryIO, size: int, directory: Path, label: str, limiter: trio.CapacityLimiter
    ) -> None:
        super().__init__(f, label, limiter)
        self.size = size
        self.state: bytes | None = None
        self._directory = directory
        self._directory_synced = False

    async def write(self, data: bytes) -> None:
        await self._buffer(data)
        self.size += len(data)

    async def flush(self) -> None:
        self._check_usable()
        # The file may be new: its directory entry must be durable too, once.
        directory = None if self._directory_synced else self._directory
        with _translated(self._label):
            await _in_thread(
                self._limiter, fsio.sync_appended, self._file, self._pending, directory
            )
        self._pending = bytearray()
        self._directory_synced = True

    async def close(self, *, keep_pending: bool) -> None:
        pending = self._pending if keep_pending and self._usable else b""
        self._usable = False
        with trio.CancelScope(shield=True), _translated(self._label):
            await _in_thread(self._limiter, fsio.write_and_close, self._file, pending)


@dataclass(frozen=True, slots=True)
class OpenFile:
    """An object's read-only descriptor, for bytes the kernel sends itself (sendfile).

    ``size`` is the size at open; ``limiter`` is the driver's, for reads made in threads.
    """

    fd: int
    size: int
    limiter: trio.CapacityLimiter


# --- the driver -----------------------------------------------------------------------------


class FilesystemDriver(StorageDriver):
    def __init__(self, root: Path, *, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        self._root = Path(os.path.abspath(root))
        self._staging_dir = self._root / STAGING_NAME
        self._limiter = trio.CapacityLimiter(max_threads)

    @property
    def root(self) -> Path:
        return self._root

    def _full(self, path: str) -> Path:
        return self._root.joinpath(*split_path(path))

    async def _run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return await _in_thread(self._limiter, fn, *args)

    async def stat(self, path: str) -> FileInfo:
        with _translated(path):
            result = await self._run(fsio.stat_object, self._full(path))
        return FileInfo(path=path, size=result.st_size, modified=result.st_mtime)

    async def get(self, path: str) -> bytes:
        with _translated(path, _LOOKUP_MISSING):
            return await self._run(fsio.read_all, self._full(path))

    async def put(self, path: str, data: bytes) -> None:
        final = self._full(path)
        with _translated(path):
            await self._run(fsio.put, self._staging_dir, final, data)

    @asynccontextmanager
    async def open_reader(self, path: str, offset: int = 0) -> AsyncIterator[Reader]:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        full = self._full(path)
        with _translated(path, _LOOKUP_MISSING):
            f, size = await self._run(fsio.open_reader, full, offset)
        try:
            yield _FileReader(f, size, offset, path, self._limiter)
        finally:
            with trio.CancelScope(shield=True):
                await self._run(f.close)

    @asynccontextmanager
    async def open_file(self, path: str) -> AsyncIterator[OpenFile]:
        """The object's open descriptor, closed when the context exits. Only this driver
        has one: callers check for it and fall back to :meth:`open_reader`."""
        full = self._full(path)
        with _translated(path, _LOOKUP_MISSING):
            f, size = await self._run(fsio.open_reader, full, 0)
        try:
            yield OpenFile(f.fileno(), size, self._limiter)
        finally:
            with trio.CancelScope(shield=True):
                await self._run(f.close)

    @asynccontextmanager
    async def open_writer(self, path: str) -> AsyncIterator[Writer]:
        final = self._full(path)
        with _translated(path):
            staged, f = await self._run(fsio.create_staging, self._staging_dir)
        writer = _FileWriter(f, staged, final, path, self._limiter)
        try:
            yield writer
        finally:
            await writer.discard_uncommitted()

    @asynccontextmanager
    async def open_appender(
        self, path: str, truncate_to: int, state: bytes | None = None
    ) -> AsyncIterator[Appender]:
        if truncate_to < 0:
            raise ValueError("truncate_to must be >= 0")
        full = self._full(path)
        with _translated(path):
            f = await self._run(fsio.open_appender, full, truncate_to)
        appender = _FileAppender(f, truncate_to, full.parent, path, self._limiter)
        try:
            yield appender
        except BaseException:
            try:
                await appender.close(keep_pending=False)
            except StorageError:
                logger.warning("could not close appender %s", path, exc_info=True)
            raise
        await appender.close(keep_pending=True)

    async def move(self, src: str, dst: str) -> None:
        source, target = self._full(src), self._full(dst)
        with _translated(f"{src} -> {dst}"):
            await self._run(fsio.move, source, target)

    async def delete(self, path: str) -> None:
        full = self._full(path)
        with _translated(path):
            await self._run(fsio.delete, full)

    async def settle_appended(self, path: str, state: bytes | None) -> None:
        await trio.lowlevel.checkpoint()  # appended in place: readable as it is

    async def clean_temporary(
        self, older_than_seconds: float, *, in_use: Callable[[str], bool] | None = None
    ) -> int:
        with _translated(STAGING_NAME):
            return await self._run(fsio.clean_staging, self._staging_dir, older_than_seconds)

    # Last: inside the class body, the name ``list`` means this method from here on.
    async def list(self, prefix: str) -> list[str]:
        parts = split_path(prefix, allow_root=True)
        with _translated(prefix):
            return await self._run(fsio.list_dir, self._root.joinpath(*parts), not parts)
