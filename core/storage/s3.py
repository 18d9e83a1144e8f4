"""Storage driver on an S3-compatible object store: the scale-out choice.

Object ``a/b/c`` is the key ``<prefix>a/b/c`` of one bucket. The S3 calls go through
:mod:`core.storage.s3_client` (boto3 in worker threads, measured against httpx + botocore's
signer: see that module), appendable objects through :mod:`core.storage.s3_composite`.

How the driver contract maps onto S3:

- ``put`` is one PutObject (atomic; up to 5 GiB). ``open_writer`` streams through a multipart
  upload on the final key, started lazily once ``part_size`` bytes are buffered (memory stays
  at one part), and ``commit()`` is CompleteMultipartUpload, which makes the object appear
  whole and at once; a writer left without ``commit()`` aborts its upload. A small object
  (under one part) is a single PutObject at commit. No staging key, no copy: a multipart
  upload is invisible until completed, which is exactly the staging the contract asks for.
- ``move`` is a server-side copy and a delete: CopyObject (``CopySourceIfMatch`` on the ETag
  just read) up to ``max_copy_size`` (5 GiB, S3's limit), UploadPartCopy ranges beyond it, and
  for an appended object the concatenation of its pieces. The destination appears atomically;
  a crash between copy and delete leaves the source too (a leftover, not a loss).
- Directories: S3 has none, but the contract wants the filesystem's (an object and a
  directory never share a path; a directory outlives its last object). A directory is kept as
  a zero-byte marker key ``<dir>/`` written (with its ancestors) when the first object goes
  below it, after checking no ancestor is an object; a write also checks its own path is no
  directory. Steady state that is two requests before a write (HEAD of the parent's marker,
  a one-key LIST under the path), made concurrently. S3 cannot make these checks atomic
  with the write: two processes racing to create ``a`` and ``a/b`` could both succeed (the
  registry's layout never does that).
- Readers stream one GetObject (ranged from ``offset``), read 4 MiB per thread hop; an open
  reader keeps reading the version it opened even if the object is deleted or replaced, as a
  POSIX file handle does (the response is already streaming).
- ``open_appender``: see :mod:`core.storage.s3_composite`.
- ``clean_temporary(age)`` aborts multipart uploads initiated more than ``age`` ago
  (ListMultipartUploads) and deletes pieces no manifest names, sparing this process's live
  writers and appenders. Other processes' live uploads are told apart only by age: with
  several origins on one bucket, never call it with a small age (see ``housekeeping``).

:meth:`S3Driver.presigned_get_url` signs a short-lived GET for a (plain) object, for the
redirect mode: the client fetches the bytes from the store, without credentials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from core.exceptiongroups import single_exception
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
from core.storage.location import S3Credentials, S3Location
from core.storage.s3_client import (
    ObjectHead,
    ObjectStream,
    RangeNotSatisfiable,
    S3Client,
)
from core.storage.s3_composite import (
    CompositeAppender,
    CompositeReader,
    Composites,
    CopyRange,
    Manifest,
    Part,
    is_composite,
    logical_size,
)

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
#: S3's minimum size of a multipart upload's parts (but the last).
MIN_PART_SIZE = 5 * MiB
#: Bytes a writer or appender buffers before sending a part: its memory use (an appender
#: holds up to this plus MIN_PART_SIZE), and 10,000 of them (S3's part limit) are the largest
#: object a writer or an appended upload can make (78 GiB).
DEFAULT_PART_SIZE = 8 * MiB
#: CopyObject's limit; larger objects are copied in UploadPartCopy ranges.
MAX_COPY_SIZE = 5 * 1024 * MiB
COPY_PART_SIZE = 1024 * MiB
#: Presigned URLs live this long unless asked otherwise; SigV4 allows at most 7 days.
DEFAULT_PRESIGN_SECONDS = 300
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


async def _concurrently(*calls: Callable[[], Awaitable[object]]) -> None:
    with single_exception():
        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(call)


class _ObjectReader:
    """A plain object's bytes from one streaming GET."""

    def __init__(self, stream: ObjectStream | None, size: int, offset: int) -> None:
        self.size = size
        self._stream = stream
        self._position = offset

    async def read(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        count = min(max_bytes, self.size - self._position)
        if count <= 0 or self._stream is None:
            await trio.lowlevel.checkpoint()
            return b""
        data = await self._stream.read(count)
        self._position += len(data)
        return data

    def chunks(self, length: int | None = None) -> AsyncIterator[bytes]:
        remaining = max(0, self.size - self._position)
        if length is None:
            length = remaining
        elif not 0 <= length <= remaining:
            raise ValueError(f"length {length} outside the {remaining} bytes remaining")
        return ChunkStream(self.read, length)

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()


class _MultipartWriter:
    def __init__(self, driver: S3Driver, path: str, key: str) -> None:
        self.written = 0
        self._driver = driver
        self._client = driver.client
        self._path = path
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str]] = []
        self._usable = True
        self._committed = False

    def _check_usable(self) -> None:
        if not self._usable:
            raise RuntimeError(f"{self._path}: closed, committed or failed earlier")

    async def write(self, data: bytes) -> None:
        self._check_usable()
        self._buffer += data
        self.written += len(data)
        part_size = self._driver.part_size
        if len(self._buffer) < part_size:
            await trio.lowlevel.checkpoint()
            return
        try:
            while len(self._buffer) >= part_size:
                await self._send(bytes(self._buffer[:part_size]))
                del self._buffer[:part_size]
        except BaseException:
            self._usable = False
            raise

    async def _send(self, data: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = await self._client.create_multipart(self._key)
            self._driver.live.add(self._upload_id)
        number = len(self._parts) + 1
        etag = await self._client.upload_part(self._key, self._upload_id, number, data)
        self._parts.append((number, etag))

    async def commit(self) -> None:
        self._check_usable()
        self._usable = False
        await self._driver.prepare_for_object(self._path)
        if self._upload_id is None:
            await self._client.put(self._key, bytes(self._buffer))
        else:
            if self._buffer:
                await self._send(bytes(self._buffer))
            await self._client.complete_multipart(self._key, self._upload_id, self._parts)
        self._committed = True  # no checkpoint since the last hop: a cancel can't skip this
        self._buffer = bytearray()

    async def discard_uncommitted(self) -> None:
        self._usable = False
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            if not self._committed:
                with trio.CancelScope(shield=True):
                    try:
                        await self._client.abort_multipart(self._key, upload_id)
                    except StorageError:
                        # Don't mask the error that brought us here; clean_temporary gets it.
                        logger.warning("could not abort upload to %s", self._key, exc_info=True)
        finally:
            self._driver.live.discard(upload_id)


class S3Driver(StorageDriver):
    def __init__(
        self,
        client: S3Client,
        *,
        prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
        min_part_size: int = MIN_PART_SIZE,
        max_copy_size: int = MAX_COPY_SIZE,
        copy_part_size: int = COPY_PART_SIZE,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError("prefix must be empty or end with '/'")
        if not min_part_size <= copy_part_size <= max_copy_size:
            raise ValueError("need min_part_size <= copy_part_size <= max_copy_size")
        self.client = client
        self.part_size = part_size
        self.prefix = prefix
        self.max_copy_size = max_copy_size
        self.copy_part_size = copy_part_size
        #: Multipart upload ids and appender sessions alive in this process.
        self.live: set[str] = set()
        self.composites = Composites(
            client, prefix, part_size=part_size, min_part_size=min_part_size, live=self.live
        )

    @classmethod
    async def open(
        cls, location: S3Location, credentials: S3Credentials | None, **options: int
    ) -> S3Driver:
        """A driver on ``location``'s bucket; StorageError unless the bucket answers."""
        client = S3Client(location, credentials)
        try:
            await client.check_bucket()
        except BaseException:
            await client.aclose()
            raise
        return cls(client, prefix=location.prefix, **options)

    async def aclose(self) -> None:
        await self.client.aclose()

    def _key(self, path: str) -> str:
        return self.prefix + "/".join(split_path(path))

    def _marker(self, parts: Sequence[str]) -> str:
        return self.prefix + "/".join(parts) + "/"

    async def _head(self, path: str) -> ObjectHead:
        return await self.client.head(self._key(path))

    # --- directories ----------------------------------------------------------------------

    async def prepare_for_object(self, path: str) -> None:
        """Fail as a filesystem would if ``path`` is a directory or below an object; else
        make sure its parent directories exist (markers)."""
        parts = split_path(path)

        async def not_a_directory() -> None:
            below = await self.client.list(self._marker(parts), max_keys=1)
            if below.objects or below.prefixes:
                raise StorageError(f"{path}: is a directory")

        async def parents() -> None:
            if len(parts) > 1:
                await self._make_directories(path, parts[:-1])

        await _concurrently(not_a_directory, parents)

    async def _make_directories(self, path: str, parts: Sequence[str]) -> None:
        if await self.client.exists(self._marker(parts)):
            return  # markers are only ever written after the check below
        ancestors = [parts[:depth] for depth in range(1, len(parts) + 1)]
        found: list[str] = []

        def check(ancestor: Sequence[str]) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                if await self.client.exists(self.prefix + "/".join(ancestor)):
                    found.append("/".join(ancestor))

            return call

        await _concurrently(*(check(a) for a in ancestors))
        if found:
            raise StorageError(f"{path}: {min(found)} is an object, not a directory")

        def mark(ancestor: Sequence[str]) -> Callable[[], Awaitable[str]]:
            return lambda: self.client.put(self._marker(ancestor), b"")

        await _concurrently(*(mark(a) for a in ancestors))

    # --- whole objects --------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        head = await self._head(path)
        return FileInfo(path=path, size=logical_size(head), modified=head.modified)

    async def get(self, path: str) -> bytes:
        key = self._key(path)
        data, head = await self.client.get(key)
        if not is_composite(head):
            return data
        reader = self.composites.open_reader(Manifest.from_json(data, key), 0)
        try:
            return b"".join([piece async for piece in reader.chunks()])
        finally:
            await reader.aclose()

    async def put(self, path: str, data: bytes) -> None:
        key = self._key(path)
        await self.prepare_for_object(path)
        await self.client.put(key, data)

    # --- streams --------------------------------------------------------------------------

    @asynccontextmanager
    async def open_reader(self, path: str, offset: int = 0) -> AsyncIterator[Reader]:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        key = self._key(path)
        stream: ObjectStream | None
        try:
            stream, head = await self.client.open_stream(key, offset)
        except RangeNotSatisfiable:
            # At or past the end of what was fetched (an empty object, or a short manifest).
            stream, head = None, await self.client.head(key)
        reader: _ObjectReader | CompositeReader
        if is_composite(head):
            if stream is not None:
                await stream.aclose()  # a range of the manifest: not what we want
            data, head = await self.client.get(key, if_match=head.etag)
            reader = self.composites.open_reader(Manifest.from_json(data, key), offset)
        else:
            reader = _ObjectReader(stream, head.size, offset)
        try:
            yield reader
        finally:
            with trio.CancelScope(shield=True):
                await reader.aclose()

    @asynccontextmanager
    async def open_writer(self, path: str) -> AsyncIterator[Writer]:
        writer = _MultipartWriter(self, path, self._key(path))
        await trio.lowlevel.checkpoint()
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
        key = self._key(path)
        session = self.composites.start_session()
        etag: str | None
        try:
            if state is None:
                manifest, etag = await self._appendable(path, key, truncate_to, session)
            else:
                manifest, etag = await self._from_state(path, key, truncate_to, state, session)
        except BaseException:
            self.composites.end_session(session)
            raise
        appender = CompositeAppender(
            self.composites,
            path,
            key,
            manifest,
            etag,
            session,
            caller_keeps_state=state is not None,
        )
        try:
            yield appender
        except BaseException:
            await appender.close(keep_pending=False)
            raise
        await appender.close(keep_pending=True)

    async def _from_state(
        self, path: str, key: str, truncate_to: int, state: bytes, session: str
    ) -> tuple[Manifest, None]:
        """The composite a caller's state describes: no request, the pieces are its list.
        ``b""`` with bytes recorded is a session begun before the caller kept state (its
        manifest is in the bucket): read once, from then on kept by the caller."""
        if not state:
            if not truncate_to:
                split_path(path)
                await trio.lowlevel.checkpoint()
                return Manifest(), None
            manifest, _ = await self._appendable(path, key, truncate_to, session)
            return manifest, None
        manifest = Manifest.from_json(state, key)
        if manifest.size != truncate_to:
            raise StorageError(f"{path}: state of {manifest.size} bytes, {truncate_to} recorded")
        await trio.lowlevel.checkpoint()
        return manifest, None

    async def settle_appended(self, path: str, state: bytes | None) -> None:
        """Write the manifest a caller's state describes under ``path`` (once, when the
        session is complete): from then on ``open_reader``, ``move`` and ``stat`` see it."""
        if state is None:
            await trio.lowlevel.checkpoint()
            return
        key = self._key(path)
        manifest = Manifest.from_json(state, key) if state else Manifest()
        await self.prepare_for_object(path)
        await self.composites.publish(key, manifest)

    async def _appendable(
        self, path: str, key: str, truncate_to: int, session: str
    ) -> tuple[Manifest, str]:
        """The composite at ``path`` cut to ``truncate_to`` bytes (stored), creating it or
        turning a plain object into one as needed; its manifest and ETag."""
        store = self.composites
        try:
            head = await self.client.head(key)
        except PathNotFound:
            if truncate_to:
                raise  # bytes were recorded: the object must exist
            await self.prepare_for_object(path)
            return Manifest(), await store.save(key, Manifest(), replacing=None)
        size = logical_size(head)
        if size < truncate_to:
            raise StorageError(f"{path}: {size} bytes, shorter than recorded {truncate_to}")

        if not is_composite(head):
            manifest = Manifest()
            if truncate_to:
                piece = store.piece_name(path, session, 0)
                manifest = Manifest((await store.copy_piece(key, head, truncate_to, piece),))
            return manifest, await store.save(key, manifest, replacing=head.etag)

        manifest, etag = await store.load(key, head)
        if size == truncate_to:
            return manifest, etag
        kept, straddling, keep = manifest.cut(truncate_to)
        truncated = Manifest(kept)
        if straddling is not None:
            source = store.bucket_key(straddling.key)
            source_head = await self.client.head(source)
            piece = store.piece_name(path, session, 0)
            truncated = Manifest((*kept, await store.copy_piece(source, source_head, keep, piece)))
        etag = await store.save(key, truncated, replacing=etag)
        dropped = [p for p in manifest.pieces if p not in truncated.pieces]
        try:
            await store.delete_pieces(dropped)
        except StorageError:
            logger.warning("could not delete pieces cut from %s", path, exc_info=True)
        return truncated, etag

    # --- namespace ------------------------------------------------------------------------

    async def move(self, src: str, dst: str) -> None:
        source, target = self._key(src), self._key(dst)
        head = await self.client.head(source)
        if source == target:
            return
        await self.prepare_for_object(dst)
        if is_composite(head):
            manifest, _ = await self.composites.load(source, head)
            await self.composites.concatenate_pieces(manifest, target)
            await self.delete(src)
            return
        if head.size <= self.max_copy_size:
            await self.client.copy(source, target, if_match=head.etag)
        else:
            ranges: list[Part] = [
                CopyRange(source, first, min(first + self.copy_part_size, head.size) - 1, head.etag)
                for first in range(0, head.size, self.copy_part_size)
            ]
            await self.composites.concatenate(ranges, target)
        await self.client.delete(source)

    async def delete(self, path: str) -> None:
        key = self._key(path)
        doomed: list[str] = [key]

        async def below(prefix: str) -> None:
            doomed.extend(item.key for item in (await self.client.list(prefix)).objects)

        await _concurrently(
            lambda: below(key + "/"), lambda: below(self.composites.pieces_prefix(path))
        )
        await self.client.delete_many(doomed)

    async def clean_temporary(
        self, older_than_seconds: float, *, in_use: Callable[[str], bool] | None = None
    ) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        for upload in await self.client.pending_uploads(self.prefix):
            if upload.upload_id in self.live or upload.initiated > cutoff:
                continue
            await self.client.abort_multipart(upload.key, upload.upload_id)
            removed += 1
        return removed + await self.composites.sweep(cutoff, in_use)

    def presigned_get_url(self, path: str, expires_seconds: int = DEFAULT_PRESIGN_SECONDS) -> str:
        """A URL fetching ``path`` without credentials for ``expires_seconds``.

        Only for plain objects (committed blobs), which is all the redirect mode serves: an
        appendable object's manifest would be fetched instead of its bytes. No request is
        made: the caller checked the object exists."""
        if not 1 <= expires_seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_seconds must be 1..{MAX_PRESIGN_SECONDS}")
        return self.client.presign_get(self._key(path), expires_seconds)

    # Last: inside the class body, the name ``list`` means this method from here on.
    async def list(self, prefix: str) -> list[str]:
        parts = split_path(prefix, allow_root=True)
        base = self._marker(parts) if parts else self.prefix
        listing = await self.client.list(base, delimiter="/")
        names = {item.key[len(base) :] for item in listing.objects}
        names.update(p[len(base) : -1] for p in listing.prefixes)
        names.discard("")  # the directory's own marker
        if not parts:
            names.discard(STAGING_NAME)
        return sorted(names)
