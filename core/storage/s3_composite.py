"""Appendable objects on S3 ("composites"): how an upload session appends to an object store.

S3 objects cannot be appended to, and the parts of an unfinished multipart upload cannot be
read, yet an upload session must be readable at every durable length (an origin that did not
see the earlier chunks, or restarted, re-hashes them: hashlib state cannot be saved). So an
appendable object is a list of immutable *pieces*, each an ordinary object, and a small JSON
*manifest* naming them in order, stored under the object's own key (flagged by the user
metadata ``depot-composite: 1`` and ``depot-size: N``, so a HEAD gives stat its size):

::

    uploads/<id>/data                                 the manifest (what list/stat/delete see)
    _tmp/pieces/uploads/<id>/data/<session>-<n>       its pieces, named by the appender
                                                      session that wrote them

Manifest (the appender's whole state; keys are relative to the driver's root)::

    {"format": 1,
     "pieces": [{"key": "_tmp/pieces/uploads/<id>/data/<session>-000001",
                 "size": 8388608, "etag": "\\"<md5>\\""}, ...]}

Rules that keep it cheap:

- A composite is always *big* pieces (each at least ``min_part_size``, S3's 5 MiB minimum
  part) followed by a run of at most ``MAX_SMALL_PIECES`` *small* ones (under 5 MiB in all).
  So it becomes one object server-side: ``move`` starts a multipart upload on the destination,
  UploadPartCopy's each big piece into it and sends the small run as the last part (read
  back, under 5 MiB; a single small piece is copied too), and CompleteMultipartUpload
  publishes it atomically. No byte of a big piece crosses the origin again.
- Writes are buffered; a ``part_size`` piece is sent only while another minimum part stays
  buffered, so memory per appender is bounded (``part_size + min_part_size``) and a chunk of
  5 MiB or more always ends in a big piece. A multipart upload has at most 10,000 parts, so
  a composite concatenates up to ~10,000 x ``part_size`` bytes (78 GiB with 8 MiB parts).
- ``flush()`` writes what is buffered as a piece and then the manifest, conditionally
  (``If-Match`` on the manifest's ETag, ``If-None-Match: *`` when creating): of two origins
  appending to one session at once, one loses with a StorageError instead of overwriting the
  other's manifest.
- Small chunks (under 5 MiB) are staged as small pieces without reading anything back. When
  the small run would reach 5 MiB (or ``MAX_SMALL_PIECES`` pieces) it is merged: its pieces
  are read back (under 5 MiB) and sent again with the new bytes as one piece. So each byte of
  a small chunk is read back through the origin at most once (for chunks over 5 MiB /
  ``MAX_SMALL_PIECES``), bytes of chunks of 5 MiB or more never: S3 cannot concatenate objects
  under 5 MiB server-side, and this is the documented price. An origin on S3 should advertise
  ``OCI-Chunk-Min-Length: 5242880`` (``chunk_min_length_bytes``) so clients that honour it
  never pay it.
- Truncation to a recorded durable length keeps the whole pieces below it and copies the
  first bytes of the piece it cuts server-side (UploadPartCopy with a range).
- Pieces that no manifest names (a crash between uploading a piece and writing the manifest,
  an appender that failed) are deleted by ``clean_temporary`` once older than its age, and
  with their composite.

The manifest in the shared bucket is what lets an upload started on one origin continue on
another, and survive a restart: the metadata database only has to record the durable size
(as with the filesystem), and it does.

What a metadata-database version needs (the database helper's part of issue 14), to keep the
state in the upload's row instead (one source of truth, two S3 requests fewer per chunk): the
state is exactly the manifest above (``Manifest.to_json``; ~120 bytes a piece, ~15 KiB per GiB
with 8 MiB pieces).

1. ``StorageDriver.open_appender(path, truncate_to, state=None)`` takes the row's manifest
   (None: a new session, or a driver without state such as the filesystem's) and the appender
   gains ``state() -> bytes | None``, read after ``flush()``. Given a state, the S3 driver skips
   ``load``/``save`` of the manifest object here, and the conditional manifest write becomes
   the database's compare-and-set: the same UPDATE that records the new durable size
   (``advance_upload``) stores the state, so size and manifest never disagree.
2. Reading and committing a session then need the state too: ``open_reader`` of the session
   is a :class:`CompositeReader` over the manifest's pieces, and ``move`` is
   ``concatenate_pieces`` into the blob's key (or: write the manifest object once, at
   ``finish``, and keep ``move`` as it is).
3. Discarding a session deletes ``_tmp/pieces/<path>/`` (``delete(upload_dir)`` already does);
   ``clean_temporary`` cannot read manifests from the bucket any more, so it must be given the
   piece keys the database still references, or skip the pieces of sessions the database knows.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from core.exceptiongroups import single_exception
from core.storage.driver import CHUNK_SIZE, STAGING_NAME, ChunkStream, StorageError
from core.storage.s3_client import ListedObject, ObjectHead, ObjectStream, S3Client

logger = logging.getLogger(__name__)

MANIFEST_CONTENT_TYPE = "application/vnd.depot.composite.v1+json"
MANIFEST_FORMAT = 1
#: User metadata (``x-amz-meta-...``) marking a manifest, and carrying its logical size.
COMPOSITE_FLAG = "depot-composite"
COMPOSITE_SIZE = "depot-size"
#: Where pieces live, relative to the driver's root (inside the reserved staging name).
PIECES_DIR = f"{STAGING_NAME}/pieces"
#: Part copies of one ``concatenate`` in flight at once.
COPY_CONCURRENCY = 8
#: Small pieces (each under 5 MiB) a composite may end with before they are merged into one.
MAX_SMALL_PIECES = 32


@dataclass(frozen=True, slots=True)
class Piece:
    key: str  # relative to the driver's root
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class Manifest:
    pieces: tuple[Piece, ...] = ()

    @property
    def size(self) -> int:
        return sum(piece.size for piece in self.pieces)

    def to_json(self) -> bytes:
        document = {
            "format": MANIFEST_FORMAT,
            "pieces": [{"key": p.key, "size": p.size, "etag": p.etag} for p in self.pieces],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, label: str) -> Manifest:
        try:
            document = json.loads(data)
            if document["format"] != MANIFEST_FORMAT:
                raise ValueError(f"format {document['format']!r}")
            pieces = tuple(_piece(item) for item in document["pieces"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{label}: unreadable composite manifest ({exc})") from exc
        return cls(pieces)

    def cut(self, length: int) -> tuple[tuple[Piece, ...], Piece | None, int]:
        """Split at ``length``: the whole pieces before it, and the piece it falls inside
        (None at a boundary) with how many of its bytes to keep."""
        kept: list[Piece] = []
        position = 0
        for piece in self.pieces:
            if position + piece.size <= length:
                kept.append(piece)
                position += piece.size
                continue
            remainder = length - position
            return tuple(kept), (piece if remainder else None), remainder
        return tuple(kept), None, 0


@dataclass(frozen=True, slots=True)
class CopyRange:
    """Bytes ``first..last`` (inclusive) of the object at bucket key ``key``."""

    key: str
    first: int
    last: int
    etag: str | None = None


#: One part of a multipart upload: copied server-side, or uploaded.
Part = CopyRange | bytes


def split_small_tail(
    pieces: Sequence[Piece], min_part_size: int
) -> tuple[Sequence[Piece], Sequence[Piece]]:
    """The pieces before the trailing run of pieces under ``min_part_size``, and that run."""
    cut = len(pieces)
    while cut and pieces[cut - 1].size < min_part_size:
        cut -= 1
    return pieces[:cut], pieces[cut:]


def _piece(item: Any) -> Piece:
    key, size, etag = item["key"], item["size"], item["etag"]
    if not isinstance(key, str) or not key.startswith(PIECES_DIR + "/"):
        raise ValueError(f"piece key {key!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"piece size {size!r}")
    if not isinstance(etag, str):
        raise ValueError(f"piece etag {etag!r}")
    return Piece(key, size, etag)


def is_composite(head: ObjectHead) -> bool:
    return head.metadata.get(COMPOSITE_FLAG) == "1"


def logical_size(head: ObjectHead) -> int:
    """The size an object has for the driver's callers (a manifest stands for its pieces)."""
    if not is_composite(head):
        return head.size
    try:
        return int(head.metadata[COMPOSITE_SIZE])
    except (KeyError, ValueError) as exc:
        raise StorageError("composite manifest without a valid size") from exc


class Composites:
    """Pieces, manifests and server-side concatenation, for one driver's root."""

    def __init__(
        self,
        client: S3Client,
        prefix: str,
        *,
        part_size: int,
        min_part_size: int,
        live: set[str],
    ) -> None:
        if not 0 < min_part_size <= part_size:
            raise ValueError("need 0 < min_part_size <= part_size")
        self.client = client
        self.part_size = part_size
        self.min_part_size = min_part_size
        self._prefix = prefix
        self._live = live  # sessions and upload ids of this process: clean_temporary spares them

    def bucket_key(self, relative: str) -> str:
        return self._prefix + relative

    def pieces_prefix(self, path: str) -> str:
        """Bucket prefix of every piece of the composite at ``path`` (or below it)."""
        return self.bucket_key(f"{PIECES_DIR}/{path}/")

    @staticmethod
    def piece_name(path: str, session: str, sequence: int) -> str:
        """Key (relative to the root) of piece ``sequence`` of a session appending to ``path``."""
        return f"{PIECES_DIR}/{path}/{session}-{sequence:06d}"

    def start_session(self) -> str:
        session = secrets.token_hex(8)
        self._live.add(session)
        return session

    def end_session(self, session: str) -> None:
        self._live.discard(session)

    # --- manifests ------------------------------------------------------------------------

    async def load(self, key: str, head: ObjectHead) -> tuple[Manifest, str]:
        """The manifest at ``key`` as of ``head`` (a later change fails: ConditionFailed)."""
        data, current = await self.client.get(key, if_match=head.etag)
        return Manifest.from_json(data, key), current.etag

    async def publish(self, key: str, manifest: Manifest) -> None:
        """Write the manifest at ``key`` whatever is there (the caller's state is the truth)."""
        await self.client.put(
            key,
            manifest.to_json(),
            metadata={COMPOSITE_FLAG: "1", COMPOSITE_SIZE: str(manifest.size)},
            content_type=MANIFEST_CONTENT_TYPE,
        )

    async def save(self, key: str, manifest: Manifest, *, replacing: str | None) -> str:
        """Write the manifest if ``key`` is still at ETag ``replacing`` (absent when None)."""
        return await self.client.put(
            key,
            manifest.to_json(),
            metadata={COMPOSITE_FLAG: "1", COMPOSITE_SIZE: str(manifest.size)},
            content_type=MANIFEST_CONTENT_TYPE,
            if_match=replacing,
            if_none_match=replacing is None,
        )

    # --- pieces ---------------------------------------------------------------------------

    async def upload_piece(self, relative: str, data: bytes) -> Piece:
        etag = await self.client.put(self.bucket_key(relative), data)
        return Piece(relative, len(data), etag)

    async def copy_piece(
        self, source: str, source_head: ObjectHead, length: int, relative: str
    ) -> Piece:
        """A new piece holding the first ``length`` bytes of object ``source``, server-side."""
        target = self.bucket_key(relative)
        if length == source_head.size:
            await self.client.copy(source, target, if_match=source_head.etag)
        else:
            await self.concatenate([CopyRange(source, 0, length - 1, source_head.etag)], target)
        head = await self.client.head(target)
        return Piece(relative, length, head.etag)

    async def read_pieces(self, pieces: Sequence[Piece]) -> bytes:
        """The bytes of (small) pieces, fetched concurrently: the only read-back there is."""
        found: list[bytes] = [b""] * len(pieces)

        async def fetch(index: int) -> None:
            piece = pieces[index]
            found[index], _ = await self.client.get(self.bucket_key(piece.key), if_match=piece.etag)

        with single_exception():
            async with trio.open_nursery() as nursery:
                for index in range(len(pieces)):
                    nursery.start_soon(fetch, index)
        return b"".join(found)

    async def delete_pieces(self, pieces: Sequence[Piece]) -> None:
        await self.client.delete_many([self.bucket_key(p.key) for p in pieces])

    async def concatenate(self, sources: Sequence[Part], target: str) -> None:
        """Make ``target`` the concatenation of ``sources`` in one multipart upload, one part
        each: a :class:`CopyRange` is copied server-side (UploadPartCopy), ``bytes`` uploaded.
        Every part but the last must be >= 5 MiB and none over 5 GiB. Nothing is visible at
        ``target`` before it is whole; on failure the upload is aborted."""
        if not sources:
            await self.client.put(target, b"")
            return
        upload_id = await self.client.create_multipart(target)
        self._live.add(upload_id)
        try:
            etags: list[str] = [""] * len(sources)
            limit = trio.Semaphore(COPY_CONCURRENCY)

            async def send(index: int) -> None:
                source = sources[index]
                async with limit:
                    if isinstance(source, CopyRange):
                        etags[index] = await self.client.upload_part_copy(
                            target,
                            upload_id,
                            index + 1,
                            source.key,
                            source.first,
                            source.last,
                            if_match=source.etag,
                        )
                    else:
                        etags[index] = await self.client.upload_part(
                            target, upload_id, index + 1, source
                        )

            with single_exception():
                async with trio.open_nursery() as nursery:
                    for index in range(len(sources)):
                        nursery.start_soon(send, index)
            await self.client.complete_multipart(target, upload_id, list(enumerate(etags, 1)))
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self.client.abort_multipart(target, upload_id)
                except StorageError:
                    logger.warning("could not abort upload to %s", target, exc_info=True)
            raise
        finally:
            self._live.discard(upload_id)

    async def concatenate_pieces(self, manifest: Manifest, target: str) -> None:
        """Publish a composite's bytes as one object: its big pieces copied server-side, its
        small tail (several pieces under 5 MiB in all) read back and sent as the last part."""
        big, small = split_small_tail(manifest.pieces, self.min_part_size)
        parts: list[Part] = [CopyRange(self.bucket_key(p.key), 0, p.size - 1, p.etag) for p in big]
        if len(small) == 1:
            parts.append(
                CopyRange(self.bucket_key(small[0].key), 0, small[0].size - 1, small[0].etag)
            )
        elif small:
            parts.append(await self.read_pieces(small))
        await self.concatenate(parts, target)

    # --- housekeeping ---------------------------------------------------------------------

    async def sweep(self, cutoff: float, in_use: Callable[[str], bool] | None = None) -> int:
        """Delete pieces last modified before ``cutoff`` that no manifest names, no live
        session of this process wrote and whose composite is not ``in_use`` (a session the
        caller's database still holds, on whichever origin); return how many."""
        base = self.bucket_key(PIECES_DIR + "/")
        candidates: dict[str, list[ListedObject]] = {}
        for item in (await self.client.list(base)).objects:
            owner, _, name = item.key[len(base) :].rpartition("/")
            if item.modified > cutoff or name.partition("-")[0] in self._live or not owner:
                continue
            if in_use is not None and in_use(owner):
                continue
            candidates.setdefault(owner, []).append(item)
        removed = 0
        for owner, items in candidates.items():
            referenced = await self._referenced(self.bucket_key(owner))
            doomed = [item.key for item in items if item.key not in referenced]
            await self.client.delete_many(doomed)
            removed += len(doomed)
        return removed

    async def _referenced(self, key: str) -> set[str]:
        try:
            head = await self.client.head(key)
            if not is_composite(head):
                return set()
            manifest, _ = await self.load(key, head)
        except StorageError:  # gone, replaced meanwhile, or unreadable: keep nothing
            return set()
        return {self.bucket_key(piece.key) for piece in manifest.pieces}

    def open_reader(self, manifest: Manifest, offset: int) -> CompositeReader:
        return CompositeReader(self, manifest, offset)


class CompositeReader:
    """Reads a composite's pieces in order, one ranged GET per piece, as one object.

    Unlike a plain object's reader it does not survive the composite being deleted or
    truncated while it reads (its later pieces are gone: StorageError). Composites are upload
    sessions, read only under the session's lock."""

    def __init__(self, store: Composites, manifest: Manifest, offset: int) -> None:
        self.size = manifest.size
        self._store = store
        self._pieces = list(manifest.pieces)
        self._position = offset
        self._stream: ObjectStream | None = None
        self._stream_end = 0  # position where the open stream's piece ends

    async def read(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        wanted = min(max_bytes, self.size - self._position)
        if wanted <= 0:
            await trio.lowlevel.checkpoint()
            return b""
        parts: list[bytes] = []
        while wanted > 0:
            if self._stream is None:
                await self._open_at(self._position)
            assert self._stream is not None
            data = await self._stream.read(min(wanted, self._stream_end - self._position))
            if not data:
                raise StorageError("composite piece ended early")
            parts.append(data)
            self._position += len(data)
            wanted -= len(data)
            if self._position >= self._stream_end:
                await self._close_stream()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def chunks(self, length: int | None = None) -> AsyncIterator[bytes]:
        remaining = max(0, self.size - self._position)
        if length is None:
            length = remaining
        elif not 0 <= length <= remaining:
            raise ValueError(f"length {length} outside the {remaining} bytes remaining")
        return ChunkStream(self.read, length)

    async def _open_at(self, position: int) -> None:
        start = 0
        for piece in self._pieces:
            if position < start + piece.size:
                self._stream, _ = await self._store.client.open_stream(
                    self._store.bucket_key(piece.key), position - start, if_match=piece.etag
                )
                self._stream_end = start + piece.size
                return
            start += piece.size
        raise AssertionError("position past the composite's end")

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    async def aclose(self) -> None:
        await self._close_stream()


class CompositeAppender:
    """Appends to a composite (see the module docstring); made by ``S3Driver.open_appender``."""

    def __init__(
        self,
        store: Composites,
        path: str,
        key: str,
        manifest: Manifest,
        etag: str | None,
        session: str,
        *,
        caller_keeps_state: bool = False,
    ) -> None:
        self.size = manifest.size
        # Kept by the caller (the upload's database row): no manifest object is written, and
        # ``state`` after each flush is what the caller records with the new size.
        self._caller_keeps_state = caller_keeps_state
        self.state: bytes | None = manifest.to_json() if caller_keeps_state else None
        self._store = store
        self._path = path
        self._key = key
        self._session = session
        self._saved = manifest  # what the stored manifest says
        self._etag = etag  # ... and its ETag
        self._pieces = list(manifest.pieces)  # what it will say at the next flush
        self._unreferenced: list[Piece] = []  # saved pieces the next manifest drops
        self._sent: list[Piece] = []  # pieces this session uploaded
        self._buffer = bytearray()
        self._sequence = 0
        self._usable = True

    def _check_usable(self) -> None:
        if not self._usable:
            raise RuntimeError(f"{self._path}: closed or failed earlier")

    async def write(self, data: bytes) -> None:
        self._check_usable()
        self._buffer += data
        self.size += len(data)
        # Send a part only while at least a minimum part would stay buffered: then the bytes
        # left for flush() make a piece of 5 MiB or more unless the whole chunk was smaller.
        part_size = self._store.part_size
        hold = part_size + self._store.min_part_size
        if len(self._buffer) < hold:
            await trio.lowlevel.checkpoint()
            return
        try:
            while len(self._buffer) >= hold:
                await self._send(bytes(self._buffer[:part_size]), merge_small_tail=True)
                del self._buffer[:part_size]
        except BaseException:
            self._usable = False  # what reached the store is unknown
            raise

    async def flush(self) -> None:
        self._check_usable()
        try:
            if self._buffer:
                _, small = split_small_tail(self._pieces, self._store.min_part_size)
                total = sum(p.size for p in small) + len(self._buffer)
                merge = total >= self._store.min_part_size or len(small) >= MAX_SMALL_PIECES
                await self._send(bytes(self._buffer), merge_small_tail=merge)
                self._buffer.clear()
            if tuple(self._pieces) == self._saved.pieces:
                await trio.lowlevel.checkpoint()
                return
            manifest = Manifest(tuple(self._pieces))
            if self._caller_keeps_state:
                self.state = manifest.to_json()
                self._saved = manifest
                # Merged small pieces stay until the session ends (deleted with it): the
                # caller may yet lose the race to record this state, and then the state it
                # keeps still names them.
                return
            self._etag = await self._store.save(self._key, manifest, replacing=self._etag)
            self._saved = manifest
        except BaseException:
            self._usable = False
            raise
        dropped, self._unreferenced = self._unreferenced, []
        await _delete_quietly(self._store, dropped)

    async def _send(self, data: bytes, *, merge_small_tail: bool) -> None:
        """Store ``data`` as the next piece; with ``merge_small_tail``, as one piece with the
        trailing small pieces before it (read back: under 5 MiB, each byte once when the run
        reaches 5 MiB). A piece of 5 MiB or more never follows a small one, so a composite
        is always ``big pieces + a run of small ones`` and concatenates server-side."""
        if merge_small_tail:
            big, small = split_small_tail(self._pieces, self._store.min_part_size)
            if small:
                data = await self._store.read_pieces(small) + data
                self._unreferenced.extend(small)
                self._pieces = list(big)
        self._sequence += 1
        name = self._store.piece_name(self._path, self._session, self._sequence)
        piece = await self._store.upload_piece(name, data)
        self._sent.append(piece)
        self._pieces.append(piece)

    async def close(self, *, keep_pending: bool) -> None:
        """Flush (``keep_pending``) or drop what is not yet in the manifest; end the session."""
        try:
            if keep_pending and self._usable:
                await self.flush()
        finally:
            self._usable = False
            self._buffer.clear()
            saved = set(self._saved.pieces)
            with trio.CancelScope(shield=True):
                await _delete_quietly(self._store, [p for p in self._sent if p not in saved])
            self._store.end_session(self._session)


async def _delete_quietly(store: Composites, pieces: Sequence[Piece]) -> None:
    # A piece left behind is garbage clean_temporary collects; failing the caller for it
    # would hide the outcome that matters (the manifest is written, or the real error).
    if not pieces:
        return
    try:
        await store.delete_pieces(pieces)
    except StorageError:
        logger.warning("could not delete %d unreferenced pieces", len(pieces), exc_info=True)
