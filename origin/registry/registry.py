"""The origin registry: the OCI domain objects over one storage driver and metadata store.

Everything outside ``origin/registry/`` that needs the registry's state goes through here:
routes, saved builds (tags they move, sizes they meter) and garbage collection (the graph it
marks and the deletions it asks for). None of them reads or writes the registry's tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from core.storage.driver import StorageDriver
from origin.metadata.store import MetadataStore
from origin.registry.blobs import Blobs
from origin.registry.graph import RegistryGraph
from origin.registry.manifests import Manifests
from origin.registry.uploads import UploadLimits, Uploads


class Registry:
    def __init__(
        self,
        storage: StorageDriver,
        metadata: MetadataStore,
        clock: Callable[[], float] = time.time,
        *,
        upload_limits: UploadLimits | None = None,
    ) -> None:
        self.storage = storage
        self.metadata = metadata
        self.blobs = Blobs(storage, metadata, clock)
        self.uploads = Uploads(storage, metadata, self.blobs, clock, upload_limits)
        self.manifests = Manifests(metadata, clock)
        self.graph = RegistryGraph(storage, metadata)

    async def catalog(
        self,
        n: int,
        last: str | None,
        orgs: frozenset[str] | None = None,
        *,
        names: frozenset[str] | None = None,
    ) -> list[str]:
        """Repositories holding content (starting an upload creates the row too), limited
        to the given orgs' namespaces unless ``orgs`` is None, and to exactly ``names``
        unless that is None."""
        return await self.metadata.list_repositories(
            n, last, with_content=True, orgs=orgs, names=names
        )

    async def stored_bytes(self, namespace: str) -> int:
        """Bytes the repositories under ``<namespace>/`` (an org) hold: each distinct blob
        linked to any of them once, plus each distinct manifest once (storage metering)."""
        return await self.metadata.stored_bytes(namespace)
