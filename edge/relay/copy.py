"""Copying a build to one target registry: blobs, manifests, tags, referrers.

In this order, through one :class:`~core.client.registry.RegistryClient` per registry:

1. **Blobs**, ``concurrency`` at once (largest first). For each blob, the target's
   repositories in turn: a ``HEAD`` first (present: skipped); in every repository after the
   first, a cross-repository mount from the first (which has the blob by then); otherwise an
   upload, monolithic up to ``chunk_bytes`` and in ``PATCH`` chunks above, where a dropped
   connection resumes from the offset the target reports (the client's resume, given
   :data:`RESUME_ATTEMPTS` tries, ~30 s: enough for a restarting registry).
2. **Manifests**, per repository: every child by digest, then the root by digest, then the
   root under each tag (the same bytes: no re-copy per tag).
3. **Referrers**: each by digest. A target that answers ``OCI-Subject`` indexed it; one that
   does not and has no referrers API gets the subject's ``sha256-<hex>`` tag-schema index,
   merged with what it held (see :mod:`edge.relay.plan`).

Requests other than chunked uploads are retried on ``Unavailable`` or ``TooManyRequests``
(a registry restarting, a dropped connection) with backoff, :data:`RETRY_ATTEMPTS` times.
Every other answer fails the copy with the target's own error: its message reaches the user.
Progress goes to ``emit`` as it happens.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import trio

from core import mediatypes
from core.client.registry import RegistryClient
from core.client.uploads import BlobSource
from core.digest import Digest
from core.errors import (
    DepotError,
    ManifestUnknown,
    NotFound,
    RegistryError,
    TooManyRequests,
    Unavailable,
)
from core.reference import Tag
from edge.relay.plan import (
    BuildPlan,
    SourceBlob,
    SourceManifest,
    TargetRegistry,
    TargetRepository,
    fallback_index,
    fallback_tag,
)

log = logging.getLogger("depot.edge.relay")

T = TypeVar("T")

RETRY_ATTEMPTS = 8
RESUME_ATTEMPTS = 10
BACKOFF_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 4.0
#: A blob's progress is reported at most this often.
PROGRESS_SECONDS = 0.5

Emit = Callable[..., None]
#: The source of a blob's bytes: ``sources(digest)``.
Sources = Callable[[Digest], BlobSource]


class TargetFailed(DepotError):
    """A target registry refused or failed: ``error`` is what it answered."""

    def __init__(self, target: str, error: RegistryError) -> None:
        super().__init__(f"{target}: {error.message}")
        self.target = target
        self.error = error


@contextmanager
def _at(repository: TargetRepository) -> Iterator[None]:
    """Registry errors raised inside as :class:`TargetFailed` naming ``repository``."""
    try:
        yield
    except RegistryError as exc:
        raise TargetFailed(repository.label, exc) from exc


@dataclass
class CopyCounters:
    copied: int = 0
    skipped: int = 0
    mounted: int = 0
    bytes_copied: int = 0


@dataclass(frozen=True, slots=True)
class CopyOptions:
    concurrency: int
    chunk_bytes: int


class TargetCopy:
    def __init__(
        self,
        client: RegistryClient,
        target: TargetRegistry,
        plan: BuildPlan,
        sources: Sources,
        emit: Emit,
        options: CopyOptions,
    ) -> None:
        self._client = client
        self._target = target
        self._plan = plan
        self._sources = sources
        self._emit = emit
        self._options = options
        self.counters = CopyCounters()
        self._has_referrers_api: bool | None = None

    async def run(self) -> None:
        await self._blobs()
        for repository in self._target.repositories:
            with _at(repository):
                await self._manifests(repository)
        if self._plan.referrers:
            for repository in self._target.repositories:
                with _at(repository):
                    await self._referrers(repository)

    # -- blobs ---------------------------------------------------------------------------------

    async def _blobs(self) -> None:
        limiter = trio.CapacityLimiter(self._options.concurrency)
        failures: list[BaseException] = []

        async def one(blob: SourceBlob, cancel: trio.CancelScope) -> None:
            async with limiter:
                try:
                    await self._blob(blob)
                except Exception as exc:
                    failures.append(exc)
                    cancel.cancel()  # the first failure ends the copy

        async with trio.open_nursery() as nursery:
            for blob in self._plan.blobs:
                nursery.start_soon(one, blob, nursery.cancel_scope)
        if failures:
            raise failures[0]

    async def _blob(self, blob: SourceBlob) -> None:
        for repository in self._target.repositories:
            with _at(repository):
                await self._blob_to(repository, blob)

    async def _blob_to(self, repository: TargetRepository, blob: SourceBlob) -> None:
        fields = {"target": repository.label, "digest": str(blob.digest), "size": blob.size}
        present = await _retrying(partial(self._client.blob_size, repository.name, blob.digest))
        if present is not None:
            self.counters.skipped += 1
            self._emit("blob", status="skipped", **fields)
            return
        first = self._target.repositories[0]
        session = None
        if repository is not first:  # the first one has it by now: mount it from there
            session = await _retrying(
                partial(self._client.mount_blob, repository.name, blob.digest, first.name)
            )
            if session is None:
                self.counters.mounted += 1
                self._emit("blob", status="mounted", source=first.label, **fields)
                return
        self._emit("blob", status="started", **fields)
        source = self._counted(self._sources(blob.digest), repository, blob)
        if blob.size > self._options.chunk_bytes:
            await self._client.upload_blob_chunked(
                repository.name,
                blob.digest,
                blob.size,
                source,
                chunk_bytes=self._options.chunk_bytes,
                resume_attempts=RESUME_ATTEMPTS,
                session=session,
            )
        else:
            sessions = [session]

            async def upload() -> None:
                # A retry opens a new session: the one a failed PUT used may be gone.
                opened = sessions.pop() if sessions else None
                await self._client.upload_blob(
                    repository.name, blob.digest, blob.size, source, session=opened
                )

            await _retrying(upload)
        self.counters.copied += 1
        self.counters.bytes_copied += blob.size
        self._emit("blob", status="done", **fields)

    def _counted(
        self, source: BlobSource, repository: TargetRepository, blob: SourceBlob
    ) -> BlobSource:
        """``source``, reporting the bytes handed to the target (a resume restarts from the
        offset the target reported)."""
        emit = self._emit
        last = -PROGRESS_SECONDS

        async def read(offset: int) -> AsyncIterator[bytes]:
            nonlocal last
            sent = offset
            async with aclosing(source(offset)) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    yield chunk
                    sent += len(chunk)
                    now = trio.current_time()
                    if now - last >= PROGRESS_SECONDS or sent == blob.size:
                        last = now
                        emit(
                            "bytes",
                            target=repository.label,
                            digest=str(blob.digest),
                            sent=sent,
                            size=blob.size,
                        )

        return read

    # -- manifests -----------------------------------------------------------------------------

    async def _put(
        self, repository: TargetRepository, reference: Tag | Digest, manifest: SourceManifest
    ) -> Digest | None:
        """PUT ``manifest``; the subject the target says it indexed (``OCI-Subject``)."""
        pushed = await _retrying(
            lambda: self._client.put_manifest(
                repository.name, reference, manifest.payload, manifest.media_type
            )
        )
        return pushed.subject

    async def _manifests(self, repository: TargetRepository) -> None:
        root = self._plan.root
        for manifest in (*self._plan.children, root):
            await self._put(repository, manifest.digest, manifest)
            self._emit("manifest", **_manifest_fields(repository, manifest))
        for tag in repository.tags:
            await self._put(repository, tag, root)
            self._emit("tag", target=f"{repository.label}:{tag}", digest=str(root.digest))

    # -- referrers -----------------------------------------------------------------------------

    async def _referrers(self, repository: TargetRepository) -> None:
        unindexed: dict[Digest, list[SourceManifest]] = {}
        for manifest in self._plan.referrers:
            indexed = await self._put(repository, manifest.digest, manifest)
            subject = manifest.parsed.subject
            if subject is None:  # a child of an artifact index
                self._emit("manifest", **_manifest_fields(repository, manifest))
            elif indexed is not None:
                self._emit_referrer(repository, manifest, "referrers-api")
            else:
                unindexed.setdefault(subject.digest, []).append(manifest)
        for subject_digest, manifests in unindexed.items():
            if await self._referrers_api(repository, subject_digest):
                via = "referrers-api"  # indexed although it did not say so
            else:
                await self._tag_schema(repository, subject_digest, manifests)
                via = "tag-schema"
            for manifest in manifests:
                self._emit_referrer(repository, manifest, via)

    async def _referrers_api(self, repository: TargetRepository, subject: Digest) -> bool:
        if self._has_referrers_api is None:
            listed = await _retrying(lambda: self._client.referrers(repository.name, subject))
            self._has_referrers_api = listed is not None
        return self._has_referrers_api

    async def _tag_schema(
        self, repository: TargetRepository, subject: Digest, manifests: list[SourceManifest]
    ) -> None:
        tag = fallback_tag(subject)
        try:
            current = await _retrying(lambda: self._client.get_manifest(repository.name, tag))
            existing: bytes | None = current.payload
        except (ManifestUnknown, NotFound):
            existing = None
        payload = fallback_index(existing, manifests)
        await _retrying(
            lambda: self._client.put_manifest(repository.name, tag, payload, mediatypes.OCI_INDEX)
        )

    def _emit_referrer(
        self, repository: TargetRepository, manifest: SourceManifest, via: str
    ) -> None:
        assert manifest.parsed.subject is not None
        self._emit(
            "referrer",
            **_manifest_fields(repository, manifest),
            subject=str(manifest.parsed.subject.digest),
            artifact_type=manifest.parsed.artifact_type,
            via=via,
        )


def _manifest_fields(repository: TargetRepository, manifest: SourceManifest) -> dict[str, Any]:
    return {
        "target": repository.label,
        "digest": str(manifest.digest),
        "media_type": manifest.media_type,
    }


async def _retrying(operation: Callable[[], Awaitable[T]]) -> T:
    """``operation()``, again after ``Unavailable`` or ``TooManyRequests`` with backoff."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return await operation()
        except (Unavailable, TooManyRequests) as exc:
            if attempt == RETRY_ATTEMPTS:
                raise
            log.info("target failed (%s); retrying (attempt %d)", exc.message, attempt)
            await trio.sleep(min(BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))
    raise AssertionError("unreachable")
