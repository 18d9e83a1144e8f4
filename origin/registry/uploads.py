"""Blob upload sessions: monolithic, chunked and streamed, resumable across restarts.

The bytes of a session are staged in the storage driver at ``uploads/<id>/data``; the
metadata store records how many of them are durable. A chunk is appended (after
truncating the staging file to that durable length, which repairs a crash mid-chunk),
fsynced, and only then is the new length recorded, with a compare-and-set so two
concurrent PATCHes cannot both win.

Everything a session needs lives in the database row, so any origin on the database (and
the same storage) continues it, and a restart loses nothing: its durable size and, for a
driver that needs it, the driver's state of the staged bytes (S3: the list of staged pieces,
see ``core/storage/s3_composite.py``), written in one compare-and-set.

hashlib state cannot be saved, so the running sha256 of a session is kept in memory by the
process that received its bytes. A chunk arriving at a process without that hash (the session
moved, or the process restarted) is not hashed at all; the digest is then computed once, at
the end, by reading the staged bytes back. Re-hashing on every move instead would read the
whole upload back at each chunk of a client alternating between origins (quadratic); a hash
checkpointed at piece boundaries would need a serialisable sha256 (a pure-Python one hashed
0.46 MB/s here, hashlib 1.7 GB/s). So a session that moves costs one read-back of its bytes,
at commit.

Abandoned sessions hold staged bytes until the upload timeout purges them, so each org may
have only so many sessions open and so many bytes staged (:class:`UploadLimits`): past
either, 429 ``TOOMANYREQUESTS`` — a new session is refused, and a chunk is cut off the moment
it would exceed the budget. Staged bytes are what the database records plus what this process
is receiving right now (several origin processes each count their own in-flight bytes).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, replace
from functools import partial

import trio

from core.digest import Digest
from core.errors import (
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
    TooManyRequests,
)
from core.exceptiongroups import single_exception
from core.ranges import ByteRange
from core.reference import RepositoryName
from core.storage.driver import CHUNK_SIZE, Appender, PathNotFound, StorageDriver
from core.tenancy import org_of
from origin.metadata.records import UploadRecord
from origin.metadata.store import MetadataStore
from origin.registry.blobs import Blobs
from origin.registry.keyed_lock import KeyedLock
from origin.registry.paths import UPLOADS, upload_dir, upload_path

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_CACHED_HASHES = 4096
#: Batches (of CHUNK_SIZE) received ahead of the hashing and writing.
_WRITE_QUEUE_BATCHES = 4
#: Retry-After on a 429 for an org over its upload limits: sessions are purged slowly.
LIMIT_RETRY_AFTER_SECONDS = 60


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """Per org; 0 means no limit."""

    sessions: int = 0
    staged_bytes: int = 0


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
        limits: UploadLimits | None = None,
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._blobs = blobs
        self._clock = clock
        self._limits = limits or UploadLimits()
        self._locks = KeyedLock()
        self._hashes: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()
        self._receiving: dict[str, int] = {}  # org -> bytes being received, not yet recorded

    async def start(self, name: RepositoryName) -> UploadRecord:
        if self._limits.sessions:
            sessions, _ = await self._metadata.upload_usage(org_of(name))
            if sessions >= self._limits.sessions:
                raise _over_limit(f"at most {self._limits.sessions} uploads open per org")
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
            staged = await self._ingest(name, record, body, expected)
            if staged.size == record.size:
                return record
            if not await self._metadata.advance_upload(
                upload_id, record.size, staged.size, self._clock(), staged.state
            ):
                # Another process appended concurrently; the client must re-sync.
                current = await self.status(name, upload_id)
                raise UploadOutOfOrder(current)
            self._keep_hasher(upload_id, staged.size, staged.hasher)
            return replace(record, size=staged.size, state=staged.state)

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
            staged = await self._ingest(name, record, body, expected)
            size = staged.size
            await self._storage.settle_appended(upload_path(upload_id), staged.state)
            self._keep_hasher(upload_id, size, staged.hasher)
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

    async def clean_storage(self, older_than_seconds: float) -> int:
        """The storage's abandoned temporary objects older than the age (``clean_temporary``),
        sparing the staged parts of every session the database still holds, whichever origin
        is receiving it."""
        open_sessions = {upload_path(upload_id) for upload_id in await self._metadata.upload_ids()}
        return await self._storage.clean_temporary(
            older_than_seconds, in_use=open_sessions.__contains__
        )

    async def _discard(self, upload_id: str) -> None:
        self._hashes.pop(upload_id, None)
        await self._metadata.delete_upload(upload_id)
        await self._storage.delete(upload_dir(upload_id))

    async def _ingest(
        self,
        name: RepositoryName,
        record: UploadRecord,
        body: AsyncIterable[bytes],
        expected: int | None,
    ) -> _Staged:
        """Append the body to the staged bytes; the new durable size and driver state, and
        the running hash when this process had it.

        Receiving and hashing+writing run as two tasks joined by a small channel, so the
        socket keeps being read while a batch is hashed and written in worker threads.
        """
        upload_id, start = record.id, record.size
        org = org_of(name)
        budget = await self._staging_budget(org)
        counted = self._counted(org, body, budget)
        hasher = self._take_hasher(upload_id, start)
        send, receive = trio.open_memory_channel[bytes](_WRITE_QUEUE_BATCHES)
        path = upload_path(upload_id)
        state = record.state if record.state is not None else b""
        try:
            async with self._storage.open_appender(path, start, state) as appender:
                with single_exception():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_hash_and_write_all, appender, hasher, receive)
                        async with send:
                            received = await _batch(counted, expected, send)
                await appender.flush()
        finally:
            self._count_receiving(org, -counted.received)
        return _Staged(start + received, appender.state, hasher)

    def _count_receiving(self, org: str, change: int) -> None:
        left = self._receiving.get(org, 0) + change
        if left:
            self._receiving[org] = left
        else:
            self._receiving.pop(org, None)

    async def _staging_budget(self, org: str) -> int | None:
        """Bytes the org may still stage (None: no limit)."""
        if not self._limits.staged_bytes:
            return None
        _, staged = await self._metadata.upload_usage(org)
        return self._limits.staged_bytes - staged - self._receiving.get(org, 0)

    def _counted(self, org: str, body: AsyncIterable[bytes], budget: int | None) -> _Counted:
        return _Counted(
            body, budget, partial(self._count_receiving, org), self._limits.staged_bytes
        )

    def _take_hasher(self, upload_id: str, size: int) -> hashlib._Hash | None:
        """This process's running hash of the session at ``size`` bytes, or None (the
        session moved here, or the process restarted: hashed at the end instead)."""
        cached = self._hashes.pop(upload_id, None)
        if cached is not None and cached[0] == size:
            return cached[1]
        return None

    def _keep_hasher(self, upload_id: str, size: int, hasher: hashlib._Hash | None) -> None:
        if hasher is None:
            return
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


@dataclass(frozen=True, slots=True)
class _Staged:
    size: int
    state: bytes | None
    hasher: hashlib._Hash | None


class _Counted:
    """A request body counted into its org's bytes being received, cut off (429) past the
    org's budget."""

    def __init__(
        self,
        body: AsyncIterable[bytes],
        budget: int | None,
        count: Callable[[int], None],
        limit: int,
    ) -> None:
        self._chunks = aiter(body)
        self._budget = budget
        self._count, self._limit = count, limit
        self.received = 0

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self._chunks)
        self.received += len(chunk)
        self._count(len(chunk))
        if self._budget is not None and self.received > self._budget:
            raise _over_limit(f"at most {self._limit} bytes staged in uploads per org")
        return chunk


def _over_limit(message: str) -> TooManyRequests:
    return TooManyRequests(message, headers={"Retry-After": str(LIMIT_RETRY_AFTER_SECONDS)})


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
    appender: Appender, hasher: hashlib._Hash | None, batches: trio.MemoryReceiveChannel[bytes]
) -> None:
    async with batches:
        async for data in batches:
            if hasher is None:
                await appender.write(data)
                continue
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
