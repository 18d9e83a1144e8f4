"""Saved builds: creating them, binding the image pushed to ``<project>:<build id>``, listing,
deleting, build retention, and whether a manifest of a project repository still resolves.

A build expires ``build_ttl_seconds`` after it is created (the project's setting, else the
org's, else the origin's; fixed at creation). An expired or deleted build stops resolving at
once, before garbage collection frees anything: in a project repository a manifest GET/HEAD by
the build id, by a save-tag bound only to dead builds, or by a digest only dead builds reach
answers MANIFEST_UNKNOWN. :meth:`BuildService.visible` and :meth:`BuildService.on_tagged` are
the hooks :class:`origin.registry.manifests.Manifests` calls.

Builds keep their own records in :class:`~origin.builds.store.BuildStore`; the registry's
state (tags they move, manifests they follow, blob sizes) is read and changed only through the
registry domain (:class:`~origin.registry.registry.Registry`). Database failures pass through
as :class:`core.errors.DatabaseError` (a 503 with ``Retry-After`` on any route).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from core.digest import Digest
from core.errors import InputError, RegistryError, StorageError
from core.manifest import ParsedManifest, parse_manifest
from core.reference import RepositoryName, Tag, is_tag, parse_repository_name, parse_tag
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
from origin.builds.store import BuildStore
from origin.metadata.records import ManifestRecord
from origin.registry.registry import Registry

log = logging.getLogger("depot.builds")

MAX_SAVE_TAGS = 16
#: An image config larger than this is not read for its platform.
MAX_CONFIG_BYTES = 1 << 20
#: Manifests followed from a build's root (an index's children, nested indexes).
MAX_MANIFESTS = 1024
_MAX_DEPTH = 2


def check_save_tags(save_tags: Sequence[str]) -> tuple[str, ...]:
    """Distinct valid tags, at most :data:`MAX_SAVE_TAGS`, none shaped like a build id (it
    would be ambiguous with the build that has that id); ``InputError`` otherwise."""
    if len(save_tags) > MAX_SAVE_TAGS:
        raise InputError(f"at most {MAX_SAVE_TAGS} save-tags")
    for tag in save_tags:
        if not is_tag(tag):
            raise InputError(f"invalid save-tag {tag[:130]!r}")
        if is_build_id(tag):
            raise InputError(f"save-tag {tag!r} looks like a build id (12 of a-z, 0-9)")
    if len(set(save_tags)) != len(save_tags):
        raise InputError("save-tags repeat")
    return tuple(save_tags)


class BuildService:
    def __init__(
        self,
        store: BuildStore,
        registry: Registry,
        clock: Callable[[], float] = time.time,
        *,
        default_ttl_seconds: float = DEFAULT_BUILD_TTL_SECONDS,
    ) -> None:
        self.store = store
        self._registry = registry
        self._manifests = registry.manifests
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
        name = parse_repository_name(build.repository)
        await self._manifests.untag(name, parse_tag(build.id))
        if build.digest is not None:
            for tag in build.save_tags:
                current = await self._manifests.lookup(name, parse_tag(tag))
                if current is not None and current.digest == build.digest:
                    if not await self._tag_live(build.repository, tag, build.digest, now):
                        await self._manifests.untag(name, parse_tag(tag))
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
        build = await self.store.build(tag)
        if build is None or build.repository != name.value or build.digest is not None:
            return
        image = await self._image(name, record, parsed)
        if not await self.store.bind(build.id, image, self._clock()):
            return
        for save_tag in build.save_tags:
            await self._manifests.retag(name, parse_tag(save_tag), record, parsed)
        log.info("build %s bound to %s (%d bytes)", build.id, record.digest, image.size)

    async def retire_expired(self) -> int:
        """Remove the tags of expired and deleted builds (a save-tag only when no live build
        holds it), so the next garbage collection frees what only they kept. They already
        stopped resolving when they expired; this is about storage."""
        now = self._clock()
        retired = 0
        for build in await self.store.dead_unretired(now):
            for name, tag, _ in await self._retirable(build, now):
                await self._manifests.untag(name, tag)
            await self.store.mark_retired(build.id, now)
            retired += 1
        if retired:
            log.info("retired the tags of %d expired or deleted builds", retired)
        return retired

    async def retirable(self) -> tuple[int, list[tuple[str, str]]]:
        """What :meth:`retire_expired` would do now, changing nothing: how many builds it
        would retire and the (repository, manifest digest) of each tag it would remove (a
        dry-run garbage collection leaves those tags out of its roots)."""
        now = self._clock()
        dead = await self.store.dead_unretired(now)
        tags = [
            (name.value, digest)
            for build in dead
            for name, _, digest in await self._retirable(build, now)
        ]
        return len(dead), tags

    async def _retirable(
        self, build: BuildRecord, now: float
    ) -> list[tuple[RepositoryName, Tag, str]]:
        """The tags of a dead build to remove: its own (the build id) and each save-tag no
        live build holds; with the manifest digest each points at."""
        if build.digest is None:
            return []
        name = parse_repository_name(build.repository)
        found = []
        for text in (build.id, *build.save_tags):
            tag = parse_tag(text)
            record = await self._manifests.lookup(name, tag)
            if record is None:
                continue
            if text != build.id and await self._tag_live(
                build.repository, text, record.digest, now
            ):
                continue
            found.append((name, tag, record.digest))
        return found

    async def visible(self, name: RepositoryName, reference: Tag | Digest, digest: str) -> bool:
        """Whether a manifest found by ``reference`` may be served: False when only dead
        (expired or deleted) builds hold it. Repositories not shaped like a project's are
        never asked about (one regex match)."""
        if not is_project_repository(name.value):
            return True
        now = self._clock()
        if isinstance(reference, Tag):
            return await self._tag_live(name.value, reference.value, digest, now)
        return await self._digest_live(name, digest, now)

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

    async def _digest_live(self, name: RepositoryName, digest: str, now: float) -> bool:
        holders = await self.store.builds_for_digest(name.value, digest)
        if not holders or any(b.live(now) for b in holders):
            return True
        for tag, tag_digest in await self._manifests.tags_reaching(name, digest):
            if await self._tag_live(name.value, tag, tag_digest, now):
                return True
        return False

    # -- what a pushed image is -----------------------------------------------------------

    async def _image(
        self, name: RepositoryName, root: ManifestRecord, parsed: ParsedManifest
    ) -> BoundImage:
        manifests = {root.digest: root.size}
        blobs: set[Digest] = set()
        platforms: list[str] = []
        pending = [(root, parsed, 0)]
        while pending:
            record, current, depth = pending.pop()
            blobs.update(d.digest for d in current.blobs)
            if depth == 0:
                platforms = await self._platforms(record, current)
            for descriptor in current.manifests:
                digest = str(descriptor.digest)
                if digest in manifests or len(manifests) >= MAX_MANIFESTS:
                    continue
                child = await self._manifests.lookup(name, descriptor.digest)
                if child is None:
                    continue
                manifests[digest] = child.size
                try:
                    child_parsed = parse_manifest(child.payload, child.media_type)
                except RegistryError:
                    continue
                if depth < _MAX_DEPTH:
                    pending.append((child, child_parsed, depth + 1))
        sizes = await self._registry.blobs.sizes(blobs)
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
            document = json.loads(await self._registry.blobs.read(config.digest))
        except (StorageError, ValueError):
            return []
        platform = platform_string(document)
        return [platform] if platform else []
