"""Saved builds: creating them, binding the image pushed to ``<project>:<build id>``, listing,
deleting, build retention, and whether a manifest of a project repository still resolves.

A build expires ``build_ttl_seconds`` after it is created (the project's setting, else the
org's, else the origin's; fixed at creation). An expired or deleted build stops resolving at
once, before garbage collection frees anything: in a project repository a manifest GET/HEAD by
the build id, by a save-tag bound only to dead builds, or by a digest only dead builds reach
answers MANIFEST_UNKNOWN. :meth:`BuildService.visible` and :meth:`BuildService.on_tagged` are
the hooks :class:`origin.registry.manifests.Manifests` calls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from core.digest import Digest
from core.errors import RegistryError, Unavailable
from core.manifest import ParsedManifest, parse_manifest
from core.reference import RepositoryName, Tag, is_tag
from core.storage.driver import StorageDriver, StorageError
from origin.auth.records import ProjectRecord
from origin.builds.records import (
    DEFAULT_BUILD_TTL_SECONDS,
    MAX_PLATFORMS,
    BoundImage,
    BuildRecord,
    Retention,
    effective_ttl,
    is_build_id,
    is_project_repository,
    new_build_id,
    platform_string,
)
from origin.builds.store import BuildError, BuildStore
from origin.metadata.records import ManifestRecord
from origin.metadata.store import MetadataStore
from origin.registry.manifests import references_of
from origin.registry.paths import blob_path

log = logging.getLogger("depot.builds")

MAX_SAVE_TAGS = 16
#: An image config larger than this is not read for its platform.
MAX_CONFIG_BYTES = 1 << 20
#: Manifests followed from a build's root (an index's children, nested indexes).
MAX_MANIFESTS = 1024
_MAX_DEPTH = 2


def check_save_tags(save_tags: Sequence[str]) -> tuple[str, ...]:
    """Distinct valid tags, at most :data:`MAX_SAVE_TAGS`, none shaped like a build id (it
    would be ambiguous with the build that has that id); ``ValueError`` otherwise."""
    if len(save_tags) > MAX_SAVE_TAGS:
        raise ValueError(f"at most {MAX_SAVE_TAGS} save-tags")
    for tag in save_tags:
        if not is_tag(tag):
            raise ValueError(f"invalid save-tag {tag[:130]!r}")
        if is_build_id(tag):
            raise ValueError(f"save-tag {tag!r} looks like a build id (12 of a-z, 0-9)")
    if len(set(save_tags)) != len(save_tags):
        raise ValueError("save-tags repeat")
    return tuple(save_tags)


class BuildService:
    def __init__(
        self,
        store: BuildStore,
        metadata: MetadataStore,
        storage: StorageDriver,
        clock: Callable[[], float] = time.time,
        *,
        default_ttl_seconds: float = DEFAULT_BUILD_TTL_SECONDS,
    ) -> None:
        self.store = store
        self._metadata = metadata
        self._storage = storage
        self._clock = clock
        self.default_ttl_seconds = default_ttl_seconds

    # -- builds ---------------------------------------------------------------------------

    async def create(self, project: ProjectRecord, save_tags: Sequence[str] = ()) -> BuildRecord:
        tags = check_save_tags(save_tags)
        now = self._clock()
        retention = await self.store.retention(project.org_id, project.id)
        ttl = effective_ttl(
            self.default_ttl_seconds, retention.org_ttl_seconds, retention.project_ttl_seconds
        )
        record = BuildRecord(
            id=new_build_id(),
            project_id=project.id,
            org_slug=project.org_slug,
            repository=project.repository,
            created_at=now,
            expires_at=now + ttl,
            save_tags=tags,
        )
        await self.store.create_build(record)
        return record

    async def list_builds(self, project: ProjectRecord, limit: int = 100) -> list[BuildRecord]:
        """The project's builds not deleted, newest first (expired ones included)."""
        return await self.store.list_builds(project.id, limit)

    async def get(self, project: ProjectRecord, build_id: str) -> BuildRecord | None:
        """The project's build, None when it has none by that id or it was deleted."""
        build = await self.store.build(build_id) if is_build_id(build_id) else None
        if build is None or build.project_id != project.id or build.deleted_at is not None:
            return None
        return build

    async def delete(self, build: BuildRecord) -> bool:
        """Mark the build deleted and remove its tags (a save-tag stays while another live
        build holds it). False when it was already deleted."""
        now = self._clock()
        if not await self.store.delete_build(build.id, now):
            return False
        repository_id = await self._metadata.repository_id(build.repository)
        if repository_id is None:
            return True
        await self._metadata.delete_tag(repository_id, build.id)
        if build.digest is not None:
            for tag in build.save_tags:
                current = await self._metadata.manifest(build.repository, tag=tag)
                if current is not None and current.digest == build.digest:
                    if not await self._tag_live(build.repository, tag, build.digest, now):
                        await self._metadata.delete_tag(repository_id, tag)
        return True

    def now(self) -> float:
        return self._clock()

    # -- retention ------------------------------------------------------------------------

    async def retention(self, org_id: str, project_id: str | None = None) -> Retention:
        return await self.store.retention(org_id, project_id)

    async def set_retention(
        self, org_id: str, project_id: str | None, ttl_seconds: float | None
    ) -> None:
        await self.store.set_retention(org_id, project_id, ttl_seconds, self._clock())

    # -- hooks of Manifests ---------------------------------------------------------------

    async def on_tagged(
        self, name: RepositoryName, tag: str, record: ManifestRecord, parsed: ParsedManifest
    ) -> None:
        """A manifest was pushed under ``tag``: if that is a pending build of this project
        repository, bind the image to it and point its save-tags at the same digest."""
        if not is_project_repository(name.value) or not is_build_id(tag):
            return
        try:
            build = await self.store.build(tag)
            if build is None or build.repository != name.value or build.digest is not None:
                return
            image = await self._image(name.value, record, parsed)
            if not await self.store.bind(build.id, image, self._clock()):
                return
        except BuildError as exc:
            raise Unavailable("the build database is unavailable") from exc
        repository_id = await self._metadata.ensure_repository(name.value, self._clock())
        # With its references: if a collection removed the manifest meanwhile, it comes back
        # whole (its blobs protected again), never as a row pointing at nothing.
        references = references_of(parsed)
        for save_tag in build.save_tags:
            await self._metadata.put_manifest(
                repository_id, record, references, save_tag, self._clock()
            )
        log.info("build %s bound to %s (%d bytes)", build.id, record.digest, image.size)

    async def retire_expired(self) -> int:
        """Remove the tags of expired and deleted builds (a save-tag only when no live build
        holds it), so the next garbage collection frees what only they kept. They already
        stopped resolving when they expired; this is about storage."""
        now = self._clock()
        retired = 0
        try:
            dead = await self.store.dead_unretired(now)
            for build in dead:
                repository_id = await self._metadata.repository_id(build.repository)
                if build.digest is not None and repository_id is not None:
                    await self._metadata.delete_tag(repository_id, build.id)
                    for tag in build.save_tags:
                        record = await self._metadata.manifest(build.repository, tag=tag)
                        if record is not None and not await self._tag_live(
                            build.repository, tag, record.digest, now
                        ):
                            await self._metadata.delete_tag(repository_id, tag)
                await self.store.mark_retired(build.id, now)
                retired += 1
        except BuildError as exc:
            raise Unavailable("the build database is unavailable") from exc
        if retired:
            log.info("retired the tags of %d expired or deleted builds", retired)
        return retired

    async def visible(self, name: RepositoryName, reference: Tag | Digest, digest: str) -> bool:
        """Whether a manifest found by ``reference`` may be served: False when only dead
        (expired or deleted) builds hold it. Repositories not shaped like a project's are
        never asked about (one regex match)."""
        if not is_project_repository(name.value):
            return True
        now = self._clock()
        try:
            if isinstance(reference, Tag):
                return await self._tag_live(name.value, reference.value, digest, now)
            return await self._digest_live(name.value, digest, now)
        except BuildError as exc:
            raise Unavailable("the build database is unavailable") from exc

    async def _tag_live(self, repository: str, tag: str, digest: str, now: float) -> bool:
        found = await self.store.builds_for_tag(repository, tag)
        if not found:
            return True  # a plain tag
        own = [b for b in found if b.id == tag]
        if own:
            return own[0].live(now)
        holders = [b for b in found if b.digest == digest]
        # None hold the digest the tag now names: a plain push moved it, it is a plain tag.
        return not holders or any(b.live(now) for b in holders)

    async def _digest_live(self, repository: str, digest: str, now: float) -> bool:
        holders = await self.store.builds_for_digest(repository, digest)
        if not holders or any(b.live(now) for b in holders):
            return True
        for tag, tag_digest in await self.store.tags_reaching(repository, digest):
            if await self._tag_live(repository, tag, tag_digest, now):
                return True
        return False

    # -- what a pushed image is -----------------------------------------------------------

    async def _image(
        self, repository: str, root: ManifestRecord, parsed: ParsedManifest
    ) -> BoundImage:
        manifests = {root.digest: root.size}
        blobs: set[str] = set()
        platforms: list[str] = []
        pending = [(root, parsed, 0)]
        while pending:
            record, current, depth = pending.pop()
            blobs.update(str(d.digest) for d in current.blobs)
            if depth == 0:
                platforms = await self._platforms(record, current)
            for descriptor in current.manifests:
                digest = str(descriptor.digest)
                if digest in manifests or len(manifests) >= MAX_MANIFESTS:
                    continue
                child = await self._metadata.manifest(repository, digest=digest)
                if child is None:
                    continue
                manifests[digest] = child.size
                try:
                    child_parsed = parse_manifest(child.payload, child.media_type)
                except RegistryError:
                    continue
                if depth < _MAX_DEPTH:
                    pending.append((child, child_parsed, depth + 1))
        sizes = await self.store.blob_sizes(blobs)
        return BoundImage(
            digest=root.digest,
            media_type=root.media_type,
            platforms=tuple(platforms),
            size=sum(manifests.values()) + sum(sizes.values()),
            manifests=frozenset(manifests),
        )

    async def _platforms(self, record: ManifestRecord, parsed: ParsedManifest) -> list[str]:
        """An index's ``platform`` fields; an image's config ``os``/``architecture``."""
        if parsed.manifests:
            try:
                entries = json.loads(record.payload).get("manifests") or []
            except (ValueError, AttributeError):
                return []
            found = (platform_string(e.get("platform")) for e in entries if isinstance(e, dict))
            return list(dict.fromkeys(p for p in found if p))[:MAX_PLATFORMS]
        if not parsed.blobs or parsed.blobs[0].size > MAX_CONFIG_BYTES:
            return []
        config = parsed.blobs[0]
        try:
            document = json.loads(await self._storage.get(blob_path(config.digest)))
        except (StorageError, ValueError):
            return []
        platform = platform_string(document)
        return [platform] if platform else []
