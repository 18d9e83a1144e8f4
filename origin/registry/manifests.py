"""Manifests, tags and referrers of a repository.

Manifests are stored as the exact bytes pushed; they are parsed only to check that every
descriptor they reference exists in the repository (a ``subject`` may be absent) and to
index referrers.

Optional :class:`ManifestHooks` (saved builds, ``origin/builds/``) see every manifest pushed by
tag and may hide a manifest found by a GET/HEAD (an expired build's image). The hooks decide
with the methods that bypass them: :meth:`Manifests.lookup`, :meth:`Manifests.retag`,
:meth:`Manifests.untag` and :meth:`Manifests.tags_reaching`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from core.digest import Digest
from core.errors import DigestInvalid, ManifestBlobUnknown, ManifestUnknown, NameUnknown
from core.manifest import ParsedManifest, parse_manifest
from core.reference import RepositoryName, Tag
from origin.metadata.records import ManifestRecord, Reference, ReferrerRecord
from origin.metadata.store import MetadataStore


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    subject: str | None


class ManifestHooks(Protocol):
    async def on_tagged(
        self, name: RepositoryName, tag: str, record: ManifestRecord, parsed: ParsedManifest
    ) -> None:
        """Called after a manifest was stored and ``tag`` points at it."""
        ...

    async def visible(self, name: RepositoryName, reference: Tag | Digest, digest: str) -> bool:
        """Whether the manifest ``digest`` found by ``reference`` may be served."""
        ...


class Manifests:
    def __init__(
        self,
        metadata: MetadataStore,
        clock: Callable[[], float],
        hooks: ManifestHooks | None = None,
    ) -> None:
        self._metadata = metadata
        self._clock = clock
        self.hooks = hooks

    async def put(
        self,
        name: RepositoryName,
        reference: Tag | Digest,
        payload: bytes,
        content_type: str | None,
    ) -> PushedManifest:
        parsed = parse_manifest(payload, content_type)
        if isinstance(reference, Digest):
            actual = hashlib.new(reference.algorithm, payload).hexdigest()
            if actual != reference.encoded:
                raise DigestInvalid(
                    "manifest digest does not match its content",
                    detail={"digest": str(reference)},
                )
            digest = str(reference)
        else:
            digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        references = references_of(parsed)
        existing_id = await self._metadata.repository_id(name.value)
        missing = references
        if existing_id is not None:
            missing = await self._metadata.missing_references(existing_id, references)
        if missing:
            raise ManifestBlobUnknown(detail={"missing": [m.digest for m in missing[:50]]})
        now = self._clock()
        repository_id = existing_id or await self._metadata.ensure_repository(name.value, now)
        record = ManifestRecord(
            digest=digest,
            media_type=parsed.media_type,
            payload=payload,
            subject=str(parsed.subject.digest) if parsed.subject else None,
            artifact_type=parsed.artifact_type,
            annotations=json.dumps(parsed.annotations) if parsed.annotations else None,
        )
        tag = reference.value if isinstance(reference, Tag) else None
        await self._metadata.put_manifest(repository_id, record, references, tag, now)
        if tag is not None and self.hooks is not None:
            await self.hooks.on_tagged(name, tag, record, parsed)
        return PushedManifest(digest, record.subject)

    async def get(self, name: RepositoryName, reference: Tag | Digest) -> ManifestRecord:
        if isinstance(reference, Tag):
            record = await self._metadata.manifest(name.value, tag=reference.value)
        else:
            record = await self._metadata.manifest(name.value, digest=str(reference))
        if record is None:
            await self._require_repository(name)
            raise ManifestUnknown(detail={"reference": str(reference)})
        if self.hooks is not None and not await self.hooks.visible(name, reference, record.digest):
            raise ManifestUnknown(detail={"reference": str(reference)})
        return record

    async def delete(self, name: RepositoryName, reference: Tag | Digest) -> None:
        repository_id = await self._require_repository(name)
        if isinstance(reference, Tag):
            deleted = await self._metadata.delete_tag(repository_id, reference.value)
        else:
            deleted = await self._metadata.delete_manifest(repository_id, str(reference))
        if not deleted:
            raise ManifestUnknown(detail={"reference": str(reference)})

    # -- for the hooks (saved builds): the repository as stored, no hook consulted ----------

    async def lookup(self, name: RepositoryName, reference: Tag | Digest) -> ManifestRecord | None:
        """The manifest ``reference`` names in the repository, or None; hooks not asked."""
        if isinstance(reference, Tag):
            return await self._metadata.manifest(name.value, tag=reference.value)
        return await self._metadata.manifest(name.value, digest=str(reference))

    async def retag(
        self, name: RepositoryName, tag: Tag, record: ManifestRecord, parsed: ParsedManifest
    ) -> None:
        """Point ``tag`` at a manifest pushed to the repository, with its references: if a
        collection removed the manifest meanwhile, it comes back whole (its blobs protected
        again), never as a tag pointing at nothing. Hooks are not called."""
        now = self._clock()
        repository_id = await self._metadata.ensure_repository(name.value, now)
        references = references_of(parsed)
        await self._metadata.put_manifest(repository_id, record, references, tag.value, now)

    async def untag(self, name: RepositoryName, tag: Tag) -> bool:
        """Remove the tag (the manifest stays); False when there was none."""
        repository_id = await self._metadata.repository_id(name.value)
        if repository_id is None:
            return False
        return await self._metadata.delete_tag(repository_id, tag.value)

    async def tags_reaching(self, name: RepositoryName, digest: str) -> list[tuple[str, str]]:
        """``(tag, its digest)`` for the repository's tags on ``digest`` or on an index that
        lists it (at most 100)."""
        return await self._metadata.tags_reaching(name.value, digest)

    async def tags(self, name: RepositoryName, n: int | None, last: str | None) -> list[str]:
        repository_id = await self._require_repository(name)
        return await self._metadata.list_tags(repository_id, n, last)

    async def referrers(
        self, name: RepositoryName, subject: Digest, artifact_type: str | None
    ) -> list[ReferrerRecord]:
        # The spec forbids a 404 from the referrers API: an unknown repository has none.
        repository_id = await self._metadata.repository_id(name.value)
        if repository_id is None:
            return []
        return await self._metadata.referrers(repository_id, str(subject), artifact_type)

    async def _require_repository(self, name: RepositoryName) -> int:
        repository_id = await self._metadata.repository_id(name.value)
        if repository_id is None:
            raise NameUnknown(detail={"name": name.value})
        return repository_id


def references_of(parsed: ParsedManifest) -> list[Reference]:
    """The blobs and child manifests a manifest needs, each once."""
    seen: dict[str, Reference] = {}
    for descriptor in parsed.blobs:
        seen.setdefault(str(descriptor.digest), Reference(str(descriptor.digest), "blob"))
    for descriptor in parsed.manifests:
        seen.setdefault(str(descriptor.digest), Reference(str(descriptor.digest), "manifest"))
    return list(seen.values())
