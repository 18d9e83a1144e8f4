"""In-memory storage driver: the test fake, with the filesystem driver's semantics.

Directories are modelled explicitly, as on a filesystem: writes create them, and they stay
when their last object is deleted, so listings match. A reader works on a snapshot taken
when it opens, like a POSIX file handle that survives a delete or replace. Every async
method checkpoints before it acts, so cancellation behaves as with a real driver.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from core.storage.driver import (
    CHUNK_SIZE,
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


@dataclass(slots=True)
class _Object:
    data: bytearray
    modified: float = field(default_factory=time.time)


class _MemoryReader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.size = len(data)
        self._data = data
        self._position = offset

    async def read(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        await trio.lowlevel.checkpoint()
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        data = self._data[self._position : self._position + max_bytes]
        self._position += len(data)
        return data

    def chunks(self, length: int | None = None) -> AsyncIterator[bytes]:
        remaining = max(0, self.size - self._position)
        if length is None:
            length = remaining
        elif not 0 <= length <= remaining:
            raise ValueError(f"length {length} outside the {remaining} bytes remaining")
        return ChunkStream(self.read, length)


class _MemoryWriter:
    def __init__(self, driver: MemoryDriver, key: str) -> None:
        self.written = 0
        self._driver = driver
        self._key = key
        self._buffer = bytearray()
        self._usable = True

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if not self._usable:
            raise RuntimeError(f"{self._key}: closed, committed or failed earlier")
        self._buffer += data
        self.written += len(data)

    async def commit(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self._usable:
            raise RuntimeError(f"{self._key}: closed, committed or failed earlier")
        self._usable = False
        self._driver._store(self._key, _Object(self._buffer))

    def close(self) -> None:
        self._usable = False
        self._buffer = bytearray()


class _MemoryAppender:
    def __init__(self, target: _Object, key: str) -> None:
        self.size = len(target.data)
        self.state: bytes | None = None
        self._target = target
        self._key = key
        self._usable = True

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        self._target.data += data
        self._target.modified = time.time()
        self.size += len(data)

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_usable()

    def _check_usable(self) -> None:
        if not self._usable:
            raise RuntimeError(f"{self._key}: closed")

    def close(self) -> None:
        self._usable = False


class MemoryDriver(StorageDriver):
    def __init__(self) -> None:
        self._objects: dict[str, _Object] = {}
        self._dirs: set[str] = set()

    @staticmethod
    def _key(path: str) -> str:
        return "/".join(split_path(path))

    def _check_placement(self, key: str) -> list[str]:
        """Fail as the filesystem would if a parent is an object or ``key`` a directory."""
        parts = key.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        for parent in parents:
            if parent in self._objects:
                raise StorageError(f"{key}: {parent} is an object, not a directory")
        if key in self._dirs:
            raise StorageError(f"{key}: is a directory")
        return parents

    def _make_parents(self, key: str) -> None:
        self._dirs.update(self._check_placement(key))

    def _store(self, key: str, obj: _Object) -> None:
        self._make_parents(key)
        self._objects[key] = obj

    def _lookup(self, key: str) -> _Object:
        try:
            return self._objects[key]
        except KeyError:
            raise PathNotFound(f"no such object: {key}") from None

    async def stat(self, path: str) -> FileInfo:
        key = self._key(path)
        await trio.lowlevel.checkpoint()
        obj = self._lookup(key)
        return FileInfo(path=path, size=len(obj.data), modified=obj.modified)

    async def get(self, path: str) -> bytes:
        key = self._key(path)
        await trio.lowlevel.checkpoint()
        return bytes(self._lookup(key).data)

    async def put(self, path: str, data: bytes) -> None:
        key = self._key(path)
        await trio.lowlevel.checkpoint()
        self._store(key, _Object(bytearray(data)))

    @asynccontextmanager
    async def open_reader(self, path: str, offset: int = 0) -> AsyncIterator[Reader]:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        key = self._key(path)
        await trio.lowlevel.checkpoint()
        yield _MemoryReader(bytes(self._lookup(key).data), offset)

    @asynccontextmanager
    async def open_writer(self, path: str) -> AsyncIterator[Writer]:
        key = self._key(path)
        await trio.lowlevel.checkpoint()
        writer = _MemoryWriter(self, key)
        try:
            yield writer
        finally:
            writer.close()

    @asynccontextmanager
    async def open_appender(
        self, path: str, truncate_to: int, state: bytes | None = None
    ) -> AsyncIterator[Appender]:
        if truncate_to < 0:
            raise ValueError("truncate_to must be >= 0")
        key = self._key(path)
        await trio.lowlevel.checkpoint()
        if truncate_to == 0:
            self._make_parents(key)
            target = self._objects.setdefault(key, _Object(bytearray()))
        else:
            self._check_placement(key)  # opening without creating: same errors, no dirs
            target = self._lookup(key)
            if len(target.data) < truncate_to:
                raise StorageError(
                    f"{key}: {len(target.data)} bytes, shorter than recorded {truncate_to}"
                )
        del target.data[truncate_to:]
        target.modified = time.time()
        appender = _MemoryAppender(target, key)
        try:
            yield appender
        finally:
            appender.close()

    async def move(self, src: str, dst: str) -> None:
        source, target = self._key(src), self._key(dst)
        await trio.lowlevel.checkpoint()
        obj = self._lookup(source)
        self._make_parents(target)
        del self._objects[source]
        self._objects[target] = obj  # same object: the modified time moves with it

    async def delete(self, path: str) -> None:
        key = self._key(path)
        await trio.lowlevel.checkpoint()
        if self._objects.pop(key, None) is not None or key not in self._dirs:
            return
        below = key + "/"
        self._dirs = {d for d in self._dirs if d != key and not d.startswith(below)}
        for name in [k for k in self._objects if k.startswith(below)]:
            del self._objects[name]

    async def settle_appended(self, path: str, state: bytes | None) -> None:
        await trio.lowlevel.checkpoint()  # appended in place: readable as it is

    async def clean_temporary(
        self, older_than_seconds: float, *, in_use: Callable[[str], bool] | None = None
    ) -> int:
        # Staging lives in the writers themselves and dies with the process: nothing to clean.
        await trio.lowlevel.checkpoint()
        return 0

    # Last: inside the class body, the name ``list`` means this method from here on.
    async def list(self, prefix: str) -> list[str]:
        parts = split_path(prefix, allow_root=True)
        await trio.lowlevel.checkpoint()
        key = "/".join(parts)
        if parts and key not in self._dirs:
            return []
        below = key + "/" if parts else ""
        names = {k[len(below) :].split("/", 1)[0] for k in self._objects if k.startswith(below)}
        names.update(d[len(below) :].split("/", 1)[0] for d in self._dirs if d.startswith(below))
        return sorted(names)
