"""Blob upload sessions: monolithic, chunked and streamed, resumable across restarts.

The bytes of a session are staged in the storage driver at ``uploads/<id>/data``; the
metadata store records how many of them are durable. A chunk is appended (after
truncating the staging file to that durable length, which repairs a crash mid-chunk),
fsynced, and only then is the new length recorded, with a compare-and-set so two
concurrent PATCHes cannot both win.

hashlib state cannot be saved, so the running sha256 of each session is kept in memory;
a session continued by another process or after a restart re-hashes the staged bytes.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable
from dataclasses import replace
from functools import partial

import trio

from core.digest import Digest
from core.errors import BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid
from core.exceptiongroups import single_exception
from core.ranges import ByteRange
from core.reference import RepositoryName
from core.storage.driver import CHUNK_SIZE, Appender, PathNotFound, StorageDriver
from origin.metadata.records import UploadRecord
from origin.metadata.store import MetadataStore
from origin.registry.blobs import Blobs
from origin.registry.keyed_lock import KeyedLock
from origin.registry.paths import UPLOADS, upload_dir, upload_path

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_CACHED_HASHES = 4096
#: Batches (of CHUNK_SIZE) received ahead of the hashing and writing.
_WRITE_QUEUE_BATCHES = 4


class UploadOutOfOrder(RangeInvalid):
    """416: a chunk does not start where the session's bytes end. ``session`` is the
    session as it stands, for the answer's ``Range`` and ``Location`` (which name the
    repository as the client addressed it: only the route knows that name)."""

    def __init__(self, session: UploadRecord) -> None:
        super().__init__("chunk out of order", detail={"expected_offset": session.size})
        self.session = session


class Uploads:
    def __init__(
        self,
        storage: StorageDriver,
        metadata: MetadataStore,
        blobs: Blobs,
        clock: Callable[[], float],
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._blobs = blobs
        self._clock = clock
        self._locks = KeyedLock()
        self._hashes: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()

    async def start(self, name: RepositoryName) -> UploadRecord:
        now = self._clock()
        repository_id = await self._metadata.ensure_repository(name.value, now)
        upload_id = uuid.uuid4().hex
        await self._metadata.create_upload(upload_id, repository_id, now)
        return UploadRecord(upload_id, name.value, 0, now, now)

    async def status(self, name: RepositoryName, upload_id: str) -> UploadRecord:
        record = None
        if _UPLOAD_ID.match(upload_id):
            record = await self._metadata.upload(upload_id)
        if record is None or record.repository != name.value:
            raise BlobUploadUnknown(detail={"upload": upload_id[:100]})
        return record

    async def append(
        self,
        name: RepositoryName,
        upload_id: str,
        body: AsyncIterable[bytes],
        content_range: ByteRange | None,
        content_length: int | None,
    ) -> UploadRecord:
        async with self._locks.hold(upload_id):
            record = await self.status(name, upload_id)
            expected = _expected_length(record, content_range, content_length)
            new_size = await self._ingest(upload_id, record.size, body, expected)
            if new_size == record.size:
                return record
            if not await self._metadata.advance_upload(
                upload_id, record.size, new_size, self._clock()
            ):
                # Another process appended concurrently; the client must re-sync.
                self._hashes.pop(upload_id, None)
                current = await self.status(name, upload_id)
                raise UploadOutOfOrder(current)
            return replace(record, size=new_size)

    async def finish(
        self,
        name: RepositoryName,
        upload_id: str,
        digest: Digest,
        body: AsyncIterable[bytes],
        content_range: ByteRange | None,
        content_length: int | None,
    ) -> None:
        """Append the optional last chunk, verify the digest, commit the blob."""
        async with self._locks.hold(upload_id):
            record = await self.status(name, upload_id)
            expected = _expected_length(record, content_range, content_length)
            size = await self._ingest(upload_id, record.size, body, expected)
            actual = await self._digest_of(upload_id, size, digest.algorithm)
            if actual != digest.encoded:
                await self._discard(upload_id)
                raise DigestInvalid(detail={"expected": str(digest), "size": size})
            await self._blobs.commit(name, upload_path(upload_id), digest, size)
            await self._discard(upload_id)

    async def cancel(self, name: RepositoryName, upload_id: str) -> None:
        async with self._locks.hold(upload_id):
            await self.status(name, upload_id)
            await self._discard(upload_id)

    async def purge(self, idle_seconds: float, *, orphans: bool) -> int:
        """Delete sessions idle for ``idle_seconds``; with ``orphans``, also staged
        directories no session owns (only safe when no other process is uploading)."""
        purged = 0
        for upload_id in await self._metadata.expired_uploads(self._clock() - idle_seconds):
            await self._discard(upload_id)
            purged += 1
        if orphans:
            for upload_id in await self._storage.list(UPLOADS):
                if await self._metadata.upload(upload_id) is None:
                    await self._storage.delete(upload_dir(upload_id))
                    purged += 1
        return purged

    async def _discard(self, upload_id: str) -> None:
        self._hashes.pop(upload_id, None)
        await self._metadata.delete_upload(upload_id)
        await self._storage.delete(upload_dir(upload_id))

    async def _ingest(
        self, upload_id: str, start: int, body: AsyncIterable[bytes], expected: int | None
    ) -> int:
        """Append the body to the staged bytes; return the new durable size.

        Receiving and hashing+writing run as two tasks joined by a small channel, so the
        socket keeps being read while a batch is hashed and written in worker threads.
        """
        hasher = await self._take_hasher(upload_id, start)
        send, receive = trio.open_memory_channel[bytes](_WRITE_QUEUE_BATCHES)
        async with self._storage.open_appender(upload_path(upload_id), start) as appender:
            with single_exception():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_hash_and_write_all, appender, hasher, receive)
                    async with send:
                        received = await _batch(body, expected, send)
            await appender.flush()
        self._keep_hasher(upload_id, start + received, hasher)
        return start + received

    async def _take_hasher(self, upload_id: str, size: int) -> hashlib._Hash:
        cached = self._hashes.pop(upload_id, None)
        if cached is not None and cached[0] == size:
            return cached[1]
        return await self._rehash(upload_id, size, "sha256")

    def _keep_hasher(self, upload_id: str, size: int, hasher: hashlib._Hash) -> None:
        self._hashes[upload_id] = (size, hasher)
        while len(self._hashes) > _MAX_CACHED_HASHES:
            self._hashes.popitem(last=False)

    async def _digest_of(self, upload_id: str, size: int, algorithm: str) -> str:
        if algorithm == "sha256":
            cached = self._hashes.get(upload_id)
            if cached is not None and cached[0] == size:
                return cached[1].copy().hexdigest()
        return (await self._rehash(upload_id, size, algorithm)).hexdigest()

    async def _rehash(self, upload_id: str, size: int, algorithm: str) -> hashlib._Hash:
        hasher = hashlib.new(algorithm)
        if size == 0:
            return hasher
        try:
            async with self._storage.open_reader(upload_path(upload_id)) as reader:
                if reader.size < size:
                    raise BlobUploadUnknown("staged upload data is missing")
                async for chunk in reader.chunks(size):
                    await trio.to_thread.run_sync(hasher.update, chunk)
        except PathNotFound as exc:
            raise BlobUploadUnknown("staged upload data is missing") from exc
        return hasher


async def _batch(
    body: AsyncIterable[bytes], expected: int | None, out: trio.MemorySendChannel[bytes]
) -> int:
    """Forward the body in CHUNK_SIZE batches (thread hops per 64 KiB halve throughput)."""
    received = 0
    pending = bytearray()
    async for chunk in body:
        received += len(chunk)
        if expected is not None and received > expected:
            raise SizeInvalid(detail={"expected": expected})
        pending += chunk
        if len(pending) >= CHUNK_SIZE:
            await out.send(bytes(pending))
            pending.clear()
    if expected is not None and received != expected:
        raise SizeInvalid(detail={"expected": expected, "received": received})
    if pending:
        await out.send(bytes(pending))
    return received


async def _hash_and_write_all(
    appender: Appender, hasher: hashlib._Hash, batches: trio.MemoryReceiveChannel[bytes]
) -> None:
    async with batches:
        async for data in batches:
            # hashlib releases the GIL on large buffers: hash in a thread beside the write.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(trio.to_thread.run_sync, hasher.update, data))
                await appender.write(data)


def _expected_length(
    record: UploadRecord, content_range: ByteRange | None, content_length: int | None
) -> int | None:
    if content_range is None:
        return content_length
    if content_range.first != record.size:
        raise UploadOutOfOrder(record)
    if content_length is not None and content_length != content_range.length:
        raise SizeInvalid("Content-Length does not match Content-Range")
    return content_range.length
