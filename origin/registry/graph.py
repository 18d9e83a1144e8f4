"""The registry as a graph, for garbage collection (``origin/retention/``): a snapshot to mark,
and deletions that re-check themselves.

The collector plans on :meth:`RegistryGraph.snapshot` and then asks for each deletion; each one
runs in a write transaction of its own that locks its row and re-checks, against what the
database holds by then, that nothing uses it any more (``origin/metadata/collection.py``). A
deletion that no longer holds is refused (False or None), never forced. A blob's row goes
first and its bytes after, in a second transaction (``origin/metadata/collection.py``): a
collector stopped in between leaves bytes without a row (harmless; :meth:`finish_collected`
deletes them next time), never a row without bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from core.digest import Digest, parse_digest
from core.storage.driver import StorageDriver
from origin.metadata.records import Graph
from origin.metadata.store import MetadataStore
from origin.registry.paths import blob_path


class RegistryGraph:
    def __init__(self, storage: StorageDriver, metadata: MetadataStore) -> None:
        self._storage = storage
        self._metadata = metadata

    async def snapshot(self) -> tuple[Graph, dict[int, str]]:
        """Manifests, tags, links and blobs, and repository names by id. Read statement by
        statement, not as one snapshot: what changes meanwhile is either young (kept by the
        grace period) or caught by the re-checks of the deletions."""
        return await self._metadata.graph()

    async def expired_uploads(self, updated_before: float) -> int:
        """Upload sessions last advanced before ``updated_before``."""
        return len(await self._metadata.expired_uploads(updated_before))

    async def remove_manifest(self, repository_id: int, digest: str, cutoff: float) -> bool:
        """Delete a manifest older than ``cutoff`` that no tag and no other manifest names."""
        return await self._metadata.collect_manifest(repository_id, digest, cutoff)

    async def remove_link(self, repository_id: int, digest: str, cutoff: float) -> bool:
        """Unlink a blob, linked before ``cutoff``, that no manifest of the repository
        references."""
        return await self._metadata.collect_link(repository_id, digest, cutoff)

    async def remove_blob(self, digest: Digest, cutoff: float, now: float) -> int | None:
        """Delete a blob, stored before ``cutoff``, that no repository links: its row, then
        its bytes. The size freed, or None when refused."""
        return await self._metadata.collect_blob(str(digest), cutoff, now, self._remover(digest))

    async def finish_collected(self) -> int:
        """Delete the bytes of blobs an earlier collection removed the rows of but was
        stopped before their bytes; how many bytes deletions were done."""
        finished = 0
        for text in await self._metadata.collected_blobs():
            digest = parse_digest(text)
            finished += await self._metadata.collect_blob_bytes(text, self._remover(digest))
        return finished

    def _remover(self, digest: Digest) -> Callable[[], Awaitable[None]]:
        # The directory holding the blob's ``data`` object, removed whole.
        directory = blob_path(digest).rsplit("/", 1)[0]
        return partial(self._storage.delete, directory)
