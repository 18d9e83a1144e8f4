"""Statements of the metadata store, built once at import (SQLAlchemy caches their compiled form).

The hot-path reads (``LINKED_BLOB`` for every blob GET/HEAD, ``MANIFEST_BY_*`` for every
manifest GET/HEAD) are each one statement keyed by repository *name*: one round trip, with no
separate repository lookup first.

Idempotent inserts use ``INSERT … ON CONFLICT`` (the same SQL on SQLite ≥ 3.24 and PostgreSQL,
through each dialect's construct): racing inserters all succeed, and no failed statement aborts
a PostgreSQL transaction the way catching an IntegrityError would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from origin.metadata.schema import (
    blobs,
    manifest_references,
    manifests,
    repo_blobs,
    repositories,
    tags,
    upload_states,
    uploads,
)

LINKED_BLOB = (
    sa.select(blobs.c.digest, blobs.c.size)
    .select_from(
        repositories.join(repo_blobs, repo_blobs.c.repository_id == repositories.c.id).join(
            blobs, blobs.c.digest == repo_blobs.c.digest
        )
    )
    .where(repositories.c.name == sa.bindparam("repository"))
    .where(repo_blobs.c.digest == sa.bindparam("digest"))
)
MANIFEST_COLUMNS = (
    manifests.c.digest,
    manifests.c.media_type,
    manifests.c.payload,
    manifests.c.subject,
    manifests.c.artifact_type,
    manifests.c.annotations,
)
MANIFEST_BY_DIGEST = (
    sa.select(*MANIFEST_COLUMNS)
    .select_from(repositories.join(manifests, manifests.c.repository_id == repositories.c.id))
    .where(repositories.c.name == sa.bindparam("repository"))
    .where(manifests.c.digest == sa.bindparam("digest"))
)
MANIFEST_BY_TAG = (
    sa.select(*MANIFEST_COLUMNS)
    .select_from(
        repositories.join(tags, tags.c.repository_id == repositories.c.id).join(
            manifests,
            sa.and_(
                manifests.c.repository_id == tags.c.repository_id,
                manifests.c.digest == tags.c.digest,
            ),
        )
    )
    .where(repositories.c.name == sa.bindparam("repository"))
    .where(tags.c.name == sa.bindparam("tag"))
)
REPOSITORY_ID = sa.select(repositories.c.id).where(repositories.c.name == sa.bindparam("name"))
BLOB = sa.select(blobs.c.digest, blobs.c.size).where(blobs.c.digest == sa.bindparam("digest"))
PRESENT_REFERENCES = sa.union_all(
    sa.select(repo_blobs.c.digest, sa.literal_column("'blob'", sa.String)).where(
        repo_blobs.c.repository_id == sa.bindparam("repository_id"),
        repo_blobs.c.digest.in_(sa.bindparam("blob_digests", expanding=True)),
    ),
    sa.select(manifests.c.digest, sa.literal_column("'manifest'", sa.String)).where(
        manifests.c.repository_id == sa.bindparam("repository_id"),
        manifests.c.digest.in_(sa.bindparam("manifest_digests", expanding=True)),
    ),
)
# Row locks for the writes that race garbage collection (origin/retention/): FOR SHARE here
# against GC's FOR UPDATE on PostgreSQL; SQLite renders no FOR clause, its write transactions
# (BEGIN IMMEDIATE) are serialised already.
BLOB_FOR_SHARE = (
    sa.select(blobs.c.digest)
    .where(blobs.c.digest == sa.bindparam("digest"))
    .with_for_update(read=True)
)
LINKS_FOR_SHARE = (
    sa.select(repo_blobs.c.digest)
    .where(
        repo_blobs.c.repository_id == sa.bindparam("repository_id"),
        repo_blobs.c.digest.in_(sa.bindparam("digests", expanding=True)),
    )
    .order_by(repo_blobs.c.digest)
    .with_for_update(read=True)
)
MANIFESTS_FOR_SHARE = (
    sa.select(manifests.c.digest)
    .where(
        manifests.c.repository_id == sa.bindparam("repository_id"),
        manifests.c.digest.in_(sa.bindparam("digests", expanding=True)),
    )
    .order_by(manifests.c.digest)
    .with_for_update(read=True)
)
REFERRERS = (
    sa.select(
        manifests.c.digest,
        manifests.c.media_type,
        sa.func.length(manifests.c.payload),  # bytes on both backends; payloads stay put
        manifests.c.artifact_type,
        manifests.c.annotations,
    )
    .where(manifests.c.repository_id == sa.bindparam("repository_id"))
    .where(manifests.c.subject == sa.bindparam("subject"))
    .order_by(manifests.c.digest)
)
# Tags of the repository pointing at the digest, or at a manifest (an index) that lists it.
TAGS_REACHING = (
    sa.select(tags.c.name, tags.c.digest)
    .select_from(tags.join(repositories, repositories.c.id == tags.c.repository_id))
    .where(repositories.c.name == sa.bindparam("repository"))
    .where(
        sa.or_(
            tags.c.digest == sa.bindparam("digest"),
            tags.c.digest.in_(
                sa.select(manifest_references.c.manifest_digest).where(
                    manifest_references.c.repository_id == tags.c.repository_id,
                    manifest_references.c.child_digest == sa.bindparam("digest"),
                )
            ),
        )
    )
    .limit(100)
)
BLOB_SIZES = sa.select(blobs.c.digest, blobs.c.size)


def stored_bytes(namespace: str) -> sa.Select[tuple[int, int]]:
    """``(blob bytes, manifest bytes)`` of the repositories under ``<namespace>/``: each
    distinct blob linked to any of them once, each distinct manifest digest once."""
    # A byte range ('/' + 1 == '0'): no LIKE escaping, uses the index on the name.
    name = repositories.c.name
    repos = sa.select(repositories.c.id).where(name > f"{namespace}/", name < f"{namespace}0")
    linked = sa.select(repo_blobs.c.digest).where(repo_blobs.c.repository_id.in_(repos))
    blob_bytes = (
        sa.select(sa.func.coalesce(sa.func.sum(blobs.c.size), 0))
        .where(blobs.c.digest.in_(linked))
        .scalar_subquery()
    )
    distinct_manifests = (
        sa.select(manifests.c.digest, sa.func.length(manifests.c.payload).label("n"))
        .where(manifests.c.repository_id.in_(repos))
        .distinct()
        .subquery()
    )
    manifest_bytes = sa.select(
        sa.func.coalesce(sa.func.sum(distinct_manifests.c.n), 0)
    ).scalar_subquery()
    return sa.select(blob_bytes, manifest_bytes)


def upload_usage(namespace: str) -> sa.Select[tuple[int, int]]:
    """``(sessions, staged bytes)`` of the upload sessions of repositories under
    ``<namespace>/``."""
    name = repositories.c.name
    repos = sa.select(repositories.c.id).where(name > f"{namespace}/", name < f"{namespace}0")
    return sa.select(
        sa.func.count(uploads.c.id), sa.func.coalesce(sa.func.sum(uploads.c.size), 0)
    ).where(uploads.c.repository_id.in_(repos))


UPLOAD = (
    sa.select(
        uploads.c.id,
        repositories.c.name,
        uploads.c.size,
        uploads.c.created_at,
        uploads.c.updated_at,
        upload_states.c.state,
    )
    .select_from(
        uploads.join(repositories, repositories.c.id == uploads.c.repository_id).outerjoin(
            upload_states, upload_states.c.upload_id == uploads.c.id
        )
    )
    .where(uploads.c.id == sa.bindparam("upload_id"))
)


@dataclass(frozen=True, slots=True)
class WriteStatements:
    """Dialect-specific inserts; execute with a dict (or a list of dicts) of column values."""

    insert_repository: sa.Insert  # ignores an existing name
    insert_blob: sa.Insert  # ignores an existing digest
    insert_link: sa.Insert  # ignores an existing link
    insert_manifest: sa.Insert  # ignores an existing (repository, digest)
    insert_reference: sa.Insert  # ignores an existing reference row
    upsert_tag: sa.Insert  # points an existing tag at the new digest

    @classmethod
    def for_dialect(cls, dialect: str) -> WriteStatements:
        upsert_tag: sa.Insert
        if dialect == "sqlite":
            tag = sqlite.insert(tags)
            moved: Any = tag.excluded
            upsert_tag = tag.on_conflict_do_update(
                index_elements=[tags.c.repository_id, tags.c.name],
                set_={"digest": moved.digest, "updated_at": moved.updated_at},
            )
        elif dialect == "postgresql":
            pg_tag = postgresql.insert(tags)
            moved = pg_tag.excluded
            upsert_tag = pg_tag.on_conflict_do_update(
                index_elements=[tags.c.repository_id, tags.c.name],
                set_={"digest": moved.digest, "updated_at": moved.updated_at},
            )
        else:
            raise ValueError(f"unsupported dialect {dialect!r}")
        return cls(
            insert_repository=_insert_ignoring_conflicts(dialect, repositories),
            insert_blob=_insert_ignoring_conflicts(dialect, blobs),
            insert_link=_insert_ignoring_conflicts(dialect, repo_blobs),
            insert_manifest=_insert_ignoring_conflicts(dialect, manifests),
            insert_reference=_insert_ignoring_conflicts(dialect, manifest_references),
            upsert_tag=upsert_tag,
        )


def _insert_ignoring_conflicts(dialect: str, table: sa.Table) -> sa.Insert:
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return postgresql.insert(table).on_conflict_do_nothing()
