"""Online garbage collection: mark from the metadata, sweep what nothing reaches.

No read-only window: pushes and pulls go on while a collection runs, in this process or in
others (``depot-registry gc`` beside serving origins). The mark phase (``mark.py``) plans on a
snapshot of the registry graph; every deletion then re-checks itself in SQL inside its own
transaction, and the writers that race it (manifest push, blob commit, mount) take row locks
and re-check too. Both the snapshot and the deletions come from the registry domain
(:class:`origin.registry.graph.RegistryGraph`, SQL in ``origin/metadata/collection.py``); this
module touches no table and no storage path. The outcome of a race is therefore either the push
winning (the blob stays: its link or reference now exists) or the push failing cleanly
(``MANIFEST_BLOB_UNKNOWN`` / a mount falling back to an upload) for the client to retry —
never a manifest pointing at a deleted blob.

Order of the sweep: first the bytes of blobs a stopped collection left behind, then
unreachable manifests (indexes before their children), then links no manifest of their
repository references, then blobs no repository links (row, committed, then bytes: a
collection killed at any point leaves no row without its bytes).
Everything younger than the grace period is kept, so a blob uploaded for a manifest that has
not been pushed yet survives. One run also purges abandoned upload sessions.

Saved builds join as roots through ``extra_roots``: an async callable returning
``(repository id, manifest digest)`` pairs of live builds; expired builds are simply not
returned (and their tags removed by their owner).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from core.digest import parse_digest
from core.errors import DatabaseError
from origin.registry.registry import Registry
from origin.retention.mark import Graph, plan

log = logging.getLogger("depot.gc")
T = TypeVar("T")

#: Live saved builds as extra roots: ``(repository id, manifest digest)`` pairs.
ExtraRoots = Callable[[], Awaitable[Iterable[tuple[int, str]]]]

DEFAULT_GRACE_SECONDS = 2 * 3600.0


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a collection deleted, or with ``dry_run`` would delete."""

    dry_run: bool
    manifests: tuple[tuple[str, str], ...] = ()  # (repository, digest)
    links: tuple[tuple[str, str], ...] = ()  # (repository, blob digest)
    blobs: tuple[tuple[str, int], ...] = ()  # (digest, size)
    #: Abandoned upload sessions purged (with ``dry_run``: expired ones found).
    uploads: int = 0
    #: Planned deletions refused on re-check: the database changed since the mark.
    refused: int = 0
    #: Expired or deleted builds whose tags were removed first (with ``dry_run``: would be).
    builds_retired: int = 0

    @property
    def manifests_deleted(self) -> int:
        return len(self.manifests)

    @property
    def links_removed(self) -> int:
        return len(self.links)

    @property
    def blobs_deleted(self) -> int:
        return len(self.blobs)

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.blobs)

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "manifests_deleted": self.manifests_deleted,
            "links_removed": self.links_removed,
            "blobs_deleted": self.blobs_deleted,
            "bytes_freed": self.bytes_freed,
            "uploads_purged": self.uploads,
            "refused": self.refused,
            "builds_retired": self.builds_retired,
            "manifests": [{"repository": r, "digest": d} for r, d in self.manifests],
            "links": [{"repository": r, "digest": d} for r, d in self.links],
            "blobs": [{"digest": d, "size": size} for d, size in self.blobs],
        }


def _without_tags(
    graph: Graph, names: dict[int, str], untagged: Iterable[tuple[str, str]]
) -> Graph:
    """``graph`` with one tag removed per (repository, digest) in ``untagged``."""
    ids = {name: repository_id for repository_id, name in names.items()}
    tags = list(graph.tags)
    for repository, digest in untagged:
        key = (ids.get(repository, -1), digest)
        if key in tags:
            tags.remove(key)
    if len(tags) == len(graph.tags):
        return graph
    return dataclasses.replace(graph, tags=tags)


async def collect(
    registry: Registry,
    *,
    now: float,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    extra_roots: ExtraRoots | None = None,
    upload_timeout_seconds: float | None = None,
    untagged: Iterable[tuple[str, str]] = (),
) -> GcReport:
    """Collect garbage as of ``now`` (POSIX seconds): anything created before
    ``now - grace_seconds`` that nothing live reaches. With ``upload_timeout_seconds``, also
    purge upload sessions idle that long (by the registry's clock). ``untagged``: tags, as
    (repository, manifest digest), to plan as if already removed (a dry run of a collection
    that first retires expired builds' tags)."""
    if grace_seconds < 0:
        raise ValueError(f"grace period must not be negative: {grace_seconds}")
    registry_graph = registry.graph
    cutoff = now - grace_seconds
    graph, names = await registry_graph.snapshot()
    graph = _without_tags(graph, names, untagged)
    roots = list(await extra_roots()) if extra_roots is not None else []
    planned = plan(graph, roots, cutoff)

    def name(repository_id: int) -> str:
        return names.get(repository_id, f"#{repository_id}")

    if dry_run:
        uploads = 0
        if upload_timeout_seconds is not None:
            uploads = await registry_graph.expired_uploads(now - upload_timeout_seconds)
        return GcReport(
            dry_run=True,
            manifests=tuple((name(r), d) for r, d in planned.manifests),
            links=tuple((name(r), d) for r, d in planned.links),
            blobs=tuple((d, graph.blobs[d].size) for d in planned.blobs),
            uploads=uploads,
        )

    await registry_graph.finish_collected()
    refused = 0

    async def attempt(fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        """One deletion; None when refused (a failed transaction rolled back whole)."""
        nonlocal refused
        try:
            done = await fn(*args)
        except DatabaseError as exc:  # e.g. a writer that takes no lock won a race
            log.warning("garbage collection: %s%s refused: %s", fn.__name__, args[:2], exc)
            done = None
        if done is None or done is False:
            refused += 1
            return None
        return done

    manifests: list[tuple[str, str]] = []
    for repository_id, digest in planned.manifests:
        if await attempt(registry_graph.remove_manifest, repository_id, digest, cutoff):
            manifests.append((name(repository_id), digest))
    links: list[tuple[str, str]] = []
    for repository_id, digest in planned.links:
        if await attempt(registry_graph.remove_link, repository_id, digest, cutoff):
            links.append((name(repository_id), digest))
    blobs: list[tuple[str, int]] = []
    for digest in planned.blobs:
        size = await attempt(registry_graph.remove_blob, parse_digest(digest), cutoff, now)
        if size is not None:
            blobs.append((digest, size))
    uploads = 0
    if upload_timeout_seconds is not None:
        uploads = await registry.uploads.purge(upload_timeout_seconds, orphans=False)
    report = GcReport(False, tuple(manifests), tuple(links), tuple(blobs), uploads, refused)
    log.info(
        "garbage collection: %d manifests, %d links, %d blobs (%d bytes), %d uploads; "
        "%d refused on re-check",
        report.manifests_deleted,
        report.links_removed,
        report.blobs_deleted,
        report.bytes_freed,
        report.uploads,
        report.refused,
    )
    return report
