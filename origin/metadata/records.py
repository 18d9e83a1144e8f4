"""Rows of the metadata store as immutable records (what the domain layer sees)."""

from __future__ import annotations

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
