"""The storage-driver interface: named byte objects, nothing about OCI.

Paths are '/'-separated relative keys such as ``blobs/sha256/ab/abcd.../data``. A driver
never exposes a partially written object under its final path: writers stage bytes
elsewhere and :meth:`Writer.commit` makes them visible atomically. Leaving a writer's
context without ``commit()`` (an error, a cancellation) discards what it wrote.

Appendable objects (upload staging files) are the exception: :meth:`StorageDriver.open_appender`
writes in place, and its caller records how many bytes are durable (``flush()`` returns
after they are) so a crash can be repaired by truncating to that length.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from core.errors import PathNotFound, StorageError

#: Read size for streaming: 1 MiB chunks are what makes throughput (64 KiB is ~7x slower).
CHUNK_SIZE = 4 << 20

#: Top-level name a driver may use for its own staging area; no key may start with it.
STAGING_NAME = "_tmp"


# The driver's errors live in the one tree (core/errors.py); re-exported for drivers.
__all__ = ["PathNotFound", "StorageError"]


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    modified: float  # POSIX timestamp


class Reader(Protocol):
    size: int

    async def read(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        """Return up to ``max_bytes``; ``b""`` at end of object."""
        ...

    def chunks(self, length: int | None = None) -> AsyncIterator[bytes]:
        """Yield the next ``length`` bytes (all remaining if None) in CHUNK_SIZE pieces."""
        ...


class Writer(Protocol):
    written: int

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> None:
        """Make the object visible under its path atomically (durable when this returns)."""
        ...


class Appender(Protocol):
    size: int
    #: What the caller keeps to reopen this object (``open_appender(..., state=)``) once
    #: ``flush()`` returned; None for a driver whose objects carry their own state.
    state: bytes | None

    async def write(self, data: bytes) -> None: ...

    async def flush(self) -> None:
        """Return once every byte written so far is durable."""
        ...


class StorageDriver(Protocol):
    async def stat(self, path: str) -> FileInfo:
        """Raise PathNotFound when absent."""
        ...

    async def get(self, path: str) -> bytes: ...

    async def put(self, path: str, data: bytes) -> None:
        """Atomic whole-object write."""
        ...

    def open_reader(self, path: str, offset: int = 0) -> AbstractAsyncContextManager[Reader]:
        """Raise PathNotFound (on enter) when absent."""
        ...

    def open_writer(self, path: str) -> AbstractAsyncContextManager[Writer]: ...

    def open_appender(
        self, path: str, truncate_to: int, state: bytes | None = None
    ) -> AbstractAsyncContextManager[Appender]:
        """Open (creating if needed) an appendable object, first truncated to ``truncate_to``.

        ``state`` (not None) says the caller keeps the object's state: ``b""`` for a new
        object, else the ``Appender.state`` of the flush that made it ``truncate_to`` bytes
        long. A driver that needs such state (S3: the list of pieces) then stores nothing
        beside the bytes, and the object is read or moved only after
        :meth:`settle_appended`; the others ignore it.
        """
        ...

    async def settle_appended(self, path: str, state: bytes | None) -> None:
        """Make the appended object at ``path``, as ``state`` describes it, readable, movable
        and deletable like any object (a no-op for drivers that keep no state)."""
        ...

    async def move(self, src: str, dst: str) -> None:
        """Atomically rename; replaces ``dst``. Durable when this returns."""
        ...

    async def delete(self, path: str) -> None:
        """Delete an object, or a whole prefix ("directory"). Missing is not an error."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Direct children names under ``prefix`` (like ``os.listdir``); [] when absent."""
        ...

    async def clean_temporary(
        self, older_than_seconds: float, *, in_use: Callable[[str], bool] | None = None
    ) -> int:
        """Delete abandoned staging files of writers older than the age; return the count.

        ``in_use(path)`` is True for the appendable objects whose state the caller keeps
        and still needs (open upload sessions, from the database): their staged parts are
        spared whatever their age, whichever process wrote them."""
        ...


@runtime_checkable
class PresignedReads(Protocol):
    """A driver whose objects a client can fetch itself, by a short-lived URL (S3)."""

    def presigned_get_url(self, path: str, expires_seconds: int) -> str:
        """A URL that GETs the (plain, committed) object at ``path`` without credentials
        until it expires. No request is made: the caller checked the object exists."""
        ...


def split_path(path: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """Validate a key and return its components; raise ValueError for a bad one.

    Every driver applies the same rule so a key valid for one is valid for all: non-empty
    components separated by single '/', no '.' or '..' (nothing may escape the root), no
    leading '/', no NUL, and not under :data:`STAGING_NAME`. ``""`` names the root and is
    accepted only where ``allow_root`` (listing), so a stray empty key never deletes it all.
    """
    if path == "" and allow_root:
        return ()
    parts = tuple(path.split("/"))
    if any(part in ("", ".", "..") or "\x00" in part for part in parts):
        raise ValueError(f"invalid storage path {path!r}")
    if parts[0] == STAGING_NAME:
        raise ValueError(f"storage path {path!r} is reserved for staging")
    return parts


class ChunkStream:
    """What ``Reader.chunks`` returns for any driver: ``length`` bytes in CHUNK_SIZE reads.

    A class rather than an async generator: a caller that stops early leaves nothing to
    finalise (trio warns about abandoned async generators, an error under our pytest config).
    """

    def __init__(self, read: Callable[[int], Awaitable[bytes]], length: int) -> None:
        self._read = read
        self._remaining = length

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> bytes:
        if self._remaining <= 0:
            raise StopAsyncIteration
        data = await self._read(min(CHUNK_SIZE, self._remaining))
        if not data:
            # Only a file shrunk under an open reader gets here; a short stream must not
            # pass for a complete one.
            raise StorageError(f"object ended {self._remaining} bytes early")
        self._remaining -= len(data)
        return data
