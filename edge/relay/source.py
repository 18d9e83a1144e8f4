"""Reading a build for the relay: from the edge's cache, filling misses from origin.

Manifests and blobs come through :class:`edge.pullthrough.PullThrough`, the path pulls take:
a manifest or blob missing from the cache is fetched from origin once (the single-flight
fill) and cached, and the relay reads the blob's bytes from the cache file (or tails the fill
in progress) instead of an HTTP response. Referrers are origin's to list (the edge keeps no
referrers index): asked through :class:`ReferrersSource`, their manifests then fetched like
any other.

Names here are internal (``<org>/<project-id>``): the route resolved and authorised the
caller's name before a job was made.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import trio

from core import mediatypes
from core.client.listings import Referrer
from core.client.uploads import BlobSource
from core.digest import Digest
from core.errors import DigestInvalid, ManifestInvalid, RangeInvalid, Unavailable, Unsupported
from core.manifest import parse_manifest
from core.reference import RepositoryName, Tag
from edge.pullthrough import PullThrough
from edge.relay.plan import BuildPlan, SourceManifest, build_plan

log = logging.getLogger("depot.edge.relay")

#: Manifests one build may have (root, children, referrers and their children).
MAX_MANIFESTS = 1024
#: How deep referrers of referrers are followed (a signature of an SBOM of the image: 2).
MAX_REFERRER_DEPTH = 3


class ReferrersSource(Protocol):
    async def referrers(
        self, repository: RepositoryName, subject: Digest
    ) -> Sequence[Referrer] | None:
        """The manifests whose subject is ``subject`` (None: no referrers API)."""
        ...


class BuildReader:
    def __init__(
        self, pullthrough: PullThrough, origin: ReferrersSource, *, deadline_seconds: float
    ) -> None:
        self._pullthrough = pullthrough
        self._origin = origin
        self._deadline = deadline_seconds

    async def manifest(self, repository: RepositoryName, reference: Tag | Digest) -> SourceManifest:
        """A manifest of ``repository`` (a tag resolves as pulls do); ``Unsupported`` when
        it is not an image, an index or an artifact manifest."""
        served = await self._pullthrough.manifest(repository, reference)
        try:
            parsed = parse_manifest(served.payload, served.media_type)
        except (ManifestInvalid, DigestInvalid) as exc:
            raise Unsupported(
                f"{repository}@{served.digest} is not a manifest the relay can copy",
                detail={"media_type": served.media_type},
            ) from exc
        return SourceManifest(served.digest, served.media_type, served.payload, parsed)

    async def plan(self, repository: RepositoryName, root: SourceManifest) -> BuildPlan:
        """Everything the build at ``root`` consists of, with its referrers."""
        children: list[SourceManifest] = []
        seen = {root.digest}
        pending = [root]
        while pending:  # an index lists manifests; those may be indexes too
            manifest = pending.pop(0)
            for descriptor in manifest.parsed.manifests:
                if descriptor.digest in seen:
                    continue
                self._count(seen, descriptor.digest)
                child = await self.manifest(repository, descriptor.digest)
                children.append(child)
                if child.media_type in mediatypes.INDEXES:
                    pending.append(child)
        referrers = await self._referrers(repository, [root, *children], seen)
        return build_plan(root, children, referrers)

    async def _referrers(
        self, repository: RepositoryName, subjects: list[SourceManifest], seen: set[Digest]
    ) -> list[SourceManifest]:
        found: list[SourceManifest] = []
        for _ in range(MAX_REFERRER_DEPTH):
            following: list[SourceManifest] = []
            for subject in subjects:
                for referrer in await self._list(repository, subject.digest):
                    if referrer.digest in seen:
                        continue
                    self._count(seen, referrer.digest)
                    manifest = await self.manifest(repository, referrer.digest)
                    # An index of artifacts has children that must be pushed with it.
                    found.extend(await self._children_of(repository, manifest, seen))
                    found.append(manifest)
                    following.append(manifest)
            if not following:
                break
            subjects = following
        return found

    async def _children_of(
        self, repository: RepositoryName, manifest: SourceManifest, seen: set[Digest]
    ) -> list[SourceManifest]:
        children = []
        for descriptor in manifest.parsed.manifests:
            if descriptor.digest not in seen:
                self._count(seen, descriptor.digest)
                children.append(await self.manifest(repository, descriptor.digest))
        return children

    async def _list(self, repository: RepositoryName, subject: Digest) -> Sequence[Referrer]:
        try:
            with trio.fail_after(self._deadline):
                listed = await self._origin.referrers(repository, subject)
        except trio.TooSlowError as exc:
            raise Unavailable("origin did not list the build's referrers in time") from exc
        return listed or ()

    @staticmethod
    def _count(seen: set[Digest], digest: Digest) -> None:
        seen.add(digest)
        if len(seen) > MAX_MANIFESTS:
            raise Unsupported(f"the build has more than {MAX_MANIFESTS} manifests")

    def blob_source(self, repository: RepositoryName, digest: Digest) -> BlobSource:
        """The blob's bytes from an offset: from the cache, or the fill that brings it."""

        async def read(offset: int) -> AsyncIterator[bytes]:
            stream = await self._pullthrough.open_blob(repository, digest)
            try:
                if not 0 <= offset <= stream.size:
                    raise RangeInvalid(f"{digest} has {stream.size} bytes, fewer than {offset}")
                async with stream.chunks(offset, stream.size - offset) as chunks:
                    async for chunk in chunks:
                        yield chunk
            finally:
                stream.close()

        return read
