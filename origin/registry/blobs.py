"""Blobs of a repository: stat, stream, link (push/mount), unlink (delete)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager

from core.digest import Digest
from core.errors import BlobUnknown, Unavailable
from core.reference import RepositoryName
from core.storage.driver import PathNotFound, PresignedReads, StorageDriver, StorageError
from core.storage.filesystem import FilesystemDriver
from core.web.blobs import BlobInfo
from core.web.file_body import FileChunks
from origin.metadata.store import MetadataStore
from origin.registry.paths import blob_path


class Blobs:
    def __init__(
        self, storage: StorageDriver, metadata: MetadataStore, clock: Callable[[], float]
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._clock = clock

    async def stat(self, name: RepositoryName, digest: Digest) -> BlobInfo:
        """The blob as this repository may serve it; BlobUnknown when not linked here."""
        record = await self._metadata.linked_blob(name.value, str(digest))
        if record is None:
            raise BlobUnknown(detail={"digest": str(digest)})
        return BlobInfo(str(digest), record.size)

    def redirect_url(self, digest: Digest, expires_seconds: int) -> str | None:
        """A short-lived URL fetching the blob from the storage itself, or None when the
        driver has none (the filesystem). Call only after :meth:`stat` allowed the read."""
        if not isinstance(self._storage, PresignedReads):
            return None
        return self._storage.presigned_get_url(blob_path(digest), expires_seconds)

    @asynccontextmanager
    async def open(
        self, digest: Digest, offset: int, length: int
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """``length`` bytes from ``offset``, as chunks. Call only after :meth:`stat`.

        From the filesystem driver the chunks are :class:`FileChunks`: the open blob file,
        which the connection layer sends zero-copy (sendfile) where the server can.
        """
        try:
            if isinstance(self._storage, FilesystemDriver):
                async with self._storage.open_file(blob_path(digest)) as opened:
                    if offset + length > opened.size:
                        raise StorageError(f"blob file has {opened.size} bytes")
                    yield FileChunks(opened.fd, offset, length, opened.limiter)
            else:
                async with self._storage.open_reader(blob_path(digest), offset) as reader:
                    yield reader.chunks(length)
        except PathNotFound as exc:
            # Metadata says it exists but the bytes are gone: only a crash mid-GC does that.
            raise BlobUnknown(detail={"digest": str(digest)}) from exc
        except StorageError as exc:
            raise Unavailable("storage read failed") from exc

    async def sizes(self, digests: Collection[Digest]) -> dict[str, int]:
        """Sizes of the blobs the content store holds, by digest (any repository's)."""
        return await self._metadata.blob_sizes([str(digest) for digest in digests])

    async def read(self, digest: Digest) -> bytes:
        """The whole blob, for a small one the origin reads itself (an image config). Raises
        ``StorageError`` (``PathNotFound`` when its bytes are absent)."""
        return await self._storage.get(blob_path(digest))

    async def exists(self, digest: Digest) -> bool:
        if await self._metadata.blob(str(digest)) is None:
            return False
        try:
            await self._storage.stat(blob_path(digest))
        except PathNotFound:
            return False
        return True

    async def commit(self, name: RepositoryName, staged: str, digest: Digest, size: int) -> None:
        """Move verified staged bytes into the content store and link them to ``name``.

        Safe against a garbage collection sweeping the same blob: the store links an existing
        row (whose bytes the link then protects) or re-adds row and bytes in one transaction
        (see :meth:`MetadataStore.store_and_link_blob`).
        """
        now = self._clock()
        repository_id = await self._metadata.ensure_repository(name.value, now)
        path = blob_path(digest)

        async def place() -> None:
            await self._storage.move(staged, path)

        if await self._metadata.store_and_link_blob(repository_id, str(digest), size, now, place):
            return
        try:
            await self._storage.stat(path)
        except PathNotFound:
            # Row without bytes: only a crash mid-collection leaves that. Now linked, the row
            # is safe from collection, so the staged bytes repair it.
            await self._storage.move(staged, path)
            return
        await self._storage.delete(staged)

    async def mount(self, name: RepositoryName, source: RepositoryName, digest: Digest) -> bool:
        """Link a blob of ``source`` into ``name``; False when ``source`` lacks it."""
        if await self._metadata.linked_blob(source.value, str(digest)) is None:
            return False
        now = self._clock()
        repository_id = await self._metadata.ensure_repository(name.value, now)
        # False when a garbage collection deleted the blob since: the client uploads it.
        return await self._metadata.link_blob_if_present(repository_id, str(digest), now)

    async def delete(self, name: RepositoryName, digest: Digest) -> None:
        """Unlink from the repository; bytes are freed by garbage collection."""
        repository_id = await self._metadata.repository_id(name.value)
        if repository_id is None or not await self._metadata.unlink_blob(
            repository_id, str(digest)
        ):
            raise BlobUnknown(detail={"digest": str(digest)})
