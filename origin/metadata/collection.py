"""Garbage collection's SQL: reading the graph, and deletions that re-check themselves.

The collector (``origin/retention/``) reaches these through the registry domain
(:class:`origin.registry.graph.RegistryGraph`) and :class:`MetadataStore`, whose
``collect_*`` methods run each deletion in a write transaction of its own. A deletion first
locks its row, then re-checks against what the database holds *now* that nothing may still
use it; a deletion that no longer holds is refused, never forced:

* a manifest: older than the cutoff, no tag points at it, no other manifest names it;
* a link: older than the cutoff, no manifest of its repository references the digest;
* a blob: older than the cutoff, no repository links it. Its row is deleted (and the digest
  noted in ``collected_blobs``) in one transaction; its bytes in a second one, which first
  inserts the blob's row again as a placeholder — a push of the same digest inserts that row
  before placing the bytes, so whichever comes second waits for the first, and a re-pushed
  blob's bytes are never deleted — then deletes the bytes, the placeholder and the note.
  A collector killed anywhere leaves no row without bytes: after the first commit there is
  no row (bytes and note remain: the next collection deletes them); inside the second the
  placeholder rolls back with it.

On PostgreSQL the lock is ``FOR UPDATE`` and, under READ COMMITTED, each later statement sees
every transaction committed meanwhile; the writers that race a collection (manifest push, blob
commit, cross-repository mount, in ``MetadataStore``) lock the same rows ``FOR SHARE``, so one
waits for the other. On SQLite write transactions are serialised whole (``BEGIN IMMEDIATE``).
Foreign keys are the last line: a link cannot outlive its blob row, a tag its manifest.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
import trio

from origin.metadata.events import BLOB_DELETED, MANIFEST_DELETED, append_event
from origin.metadata.records import BlobNode, Graph, ManifestKey, ManifestNode
from origin.metadata.schema import (
    blobs,
    collected_blobs,
    manifest_references,
    manifests,
    repo_blobs,
    repositories,
    tags,
)


def load_graph(conn: sa.Connection) -> tuple[Graph, dict[int, str]]:
    """The graph the mark phase walks, and repository names by id.

    Read statement by statement, not as one snapshot: what changes meanwhile is either young
    (kept by the grace period) or caught by the re-checks of the deletions.
    """
    names = {int(row.id): str(row.name) for row in conn.execute(sa.select(repositories))}
    blob_nodes = {
        str(row.digest): BlobNode(int(row.size), float(row.created_at))
        for row in conn.execute(sa.select(blobs.c.digest, blobs.c.size, blobs.c.created_at))
    }
    links = {
        (int(row.repository_id), str(row.digest)): float(row.created_at)
        for row in conn.execute(sa.select(repo_blobs))
    }
    children: dict[ManifestKey, set[str]] = defaultdict(set)
    blob_refs: dict[ManifestKey, set[str]] = defaultdict(set)
    rows = conn.execute(
        sa.select(
            manifests.c.repository_id,
            manifests.c.digest,
            manifests.c.created_at,
            manifests.c.subject,
        )
    )
    manifest_rows = [
        (int(r.repository_id), str(r.digest), float(r.created_at), r.subject) for r in rows
    ]
    for row in conn.execute(sa.select(manifest_references)):
        key = (int(row.repository_id), str(row.manifest_digest))
        (children if row.kind == "manifest" else blob_refs)[key].add(str(row.child_digest))
    nodes = {
        (repository_id, digest): ManifestNode(
            created_at,
            subject,
            frozenset(children.get((repository_id, digest), ())),
            frozenset(blob_refs.get((repository_id, digest), ())),
        )
        for repository_id, digest, created_at, subject in manifest_rows
    }
    tagged = [
        (int(row.repository_id), str(row.digest))
        for row in conn.execute(sa.select(tags.c.repository_id, tags.c.digest))
    ]
    return Graph(nodes, tagged, links, blob_nodes), names


def _exists(conn: sa.Connection, *where: sa.ColumnElement[bool]) -> bool:
    return bool(conn.execute(sa.select(sa.exists().where(*where))).scalar())


def delete_manifest(conn: sa.Connection, repository_id: int, digest: str, cutoff: float) -> bool:
    """Delete the manifest and its reference rows if it is still garbage."""
    mine = (manifests.c.repository_id == repository_id, manifests.c.digest == digest)
    created_at = conn.execute(
        sa.select(manifests.c.created_at).where(*mine).with_for_update()
    ).scalar()
    if created_at is None or created_at >= cutoff:
        return False
    if _exists(conn, tags.c.repository_id == repository_id, tags.c.digest == digest):
        return False
    if _exists(
        conn,
        manifest_references.c.repository_id == repository_id,
        manifest_references.c.child_digest == digest,
        manifest_references.c.kind == "manifest",
    ):
        return False
    conn.execute(
        sa.delete(manifest_references).where(
            manifest_references.c.repository_id == repository_id,
            manifest_references.c.manifest_digest == digest,
        )
    )
    conn.execute(sa.delete(manifests).where(*mine))
    name = _repository_name(conn, repository_id)
    append_event(conn, MANIFEST_DELETED, time.time(), repository=name, subject=digest)
    return True


def delete_link(conn: sa.Connection, repository_id: int, digest: str, cutoff: float) -> bool:
    """Unlink the blob from the repository if no manifest of it references the blob."""
    mine = (repo_blobs.c.repository_id == repository_id, repo_blobs.c.digest == digest)
    created_at = conn.execute(
        sa.select(repo_blobs.c.created_at).where(*mine).with_for_update()
    ).scalar()
    if created_at is None or created_at >= cutoff:
        return False
    if _exists(
        conn,
        manifest_references.c.repository_id == repository_id,
        manifest_references.c.child_digest == digest,
    ):
        return False
    conn.execute(sa.delete(repo_blobs).where(*mine))
    name = _repository_name(conn, repository_id)
    append_event(conn, BLOB_DELETED, time.time(), repository=name, subject=digest)
    return True


def delete_blob(conn: sa.Connection, digest: str, cutoff: float, now: float) -> int | None:
    """Delete the blob's row if no repository links it, noting that its bytes are to go
    (:func:`delete_blob_bytes`, in a transaction of its own once this one committed); the
    size freed, or None when refused."""
    row = conn.execute(
        sa.select(blobs.c.size, blobs.c.created_at)
        .where(blobs.c.digest == digest)
        .with_for_update()
    ).first()
    if row is None or row.created_at >= cutoff:
        return None
    if _exists(conn, repo_blobs.c.digest == digest):
        return None
    conn.execute(sa.delete(blobs).where(blobs.c.digest == digest))
    conn.execute(sa.delete(collected_blobs).where(collected_blobs.c.digest == digest))
    conn.execute(sa.insert(collected_blobs), {"digest": digest, "collected_at": now})
    append_event(conn, BLOB_DELETED, now, subject=digest)  # from every repository
    return int(row.size)


def delete_blob_bytes(
    conn: sa.Connection,
    digest: str,
    insert_placeholder: sa.Insert,
    remove: Callable[[], Awaitable[None]],
) -> bool:
    """Delete the bytes of a blob :func:`delete_blob` collected (``remove()``), unless it
    was pushed again since; whether they were deleted. ``insert_placeholder`` inserts a
    ``blobs`` row unless one exists (it waits for a push inserting one right now)."""
    noted = collected_blobs.c.digest == digest
    if not _exists(conn, noted):
        return False  # another collector finished it
    placeholder = {"digest": digest, "size": 0, "created_at": 0.0}
    # RETURNING, not rowcount: that is -1 for these inserts on psycopg.
    inserted = insert_placeholder.returning(blobs.c.digest)
    deleted = conn.execute(inserted, placeholder).first() is not None
    if deleted:  # no row: nobody pushed it again, and nobody can until we commit
        trio.from_thread.run(remove)
        conn.execute(sa.delete(blobs).where(blobs.c.digest == digest))
    conn.execute(sa.delete(collected_blobs).where(noted))
    return deleted


def _repository_name(conn: sa.Connection, repository_id: int) -> str:
    name = conn.execute(sa.select(repositories.c.name).where(repositories.c.id == repository_id))
    return str(name.scalar_one())


def collected_digests(conn: sa.Connection) -> list[str]:
    """Digests whose rows were collected and whose bytes may remain (a collector stopped
    between the two), oldest first."""
    rows = conn.execute(
        sa.select(collected_blobs.c.digest).order_by(collected_blobs.c.collected_at)
    )
    return [str(row.digest) for row in rows]
