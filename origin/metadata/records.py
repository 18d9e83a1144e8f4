"""Rows of the metadata store as immutable records (what the domain layer sees), and the
registry graph garbage collection marks (``origin/retention/mark.py``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlobRecord:
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    payload: bytes  # exact bytes as pushed
    subject: str | None = None  # digest of the subject manifest, if any
    artifact_type: str | None = None  # artifactType, or config.mediaType for images
    annotations: str | None = None  # JSON text of the manifest's annotations, if any

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True, slots=True)
class Reference:
    """One descriptor a manifest points at."""

    digest: str
    kind: str  # "blob" or "manifest"


@dataclass(frozen=True, slots=True)
class ReferrerRecord:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: str | None  # JSON text


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repository: str
    size: int  # bytes durably received so far
    created_at: float
    updated_at: float
    #: The storage driver's state of the staged bytes (``StorageDriver.open_appender``).
    state: bytes | None = None


# -- the graph of garbage collection -----------------------------------------------------------

#: (repository id, manifest digest)
ManifestKey = tuple[int, str]
#: (repository id, blob digest)
LinkKey = tuple[int, str]


@dataclass(frozen=True, slots=True)
class ManifestNode:
    created_at: float
    subject: str | None = None
    children: frozenset[str] = frozenset()  # digests of child manifests (an index's entries)
    blobs: frozenset[str] = frozenset()  # digests of blobs (config, layers)


@dataclass(frozen=True, slots=True)
class BlobNode:
    size: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Graph:
    manifests: Mapping[ManifestKey, ManifestNode]
    tags: Collection[ManifestKey]  # the manifest each tag points at
    links: Mapping[LinkKey, float]  # creation time of each repository↔blob link
    blobs: Mapping[str, BlobNode]
