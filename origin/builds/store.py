"""The build store: builds, their save-tags and manifests, build retention and storage usage.

Built like ``origin/metadata/store.py``: SQLAlchemy Core on the process's one
:class:`~origin.metadata.database.Database` (tables in ``origin/builds/schema.py``), each
blocking call in the database's worker threads, each read one autocommit statement, each write
one transaction behind the database's write gate (shared with the metadata and tenancy
stores). Only :meth:`BuildStore.build` (a primary-key lookup) runs inline on SQLite. Every
database failure is a :class:`core.errors.DatabaseError`.

Nothing here reads or writes the registry's tables: what builds need of them (tags, manifests,
blob sizes, stored bytes) comes through the registry domain (``origin/registry/``).
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from origin.builds.records import BoundImage, BuildRecord, Retention, UsageRecord, split_by_month
from origin.builds.schema import (
    build_manifests,
    build_retention,
    build_tags,
    builds,
    usage,
    usage_accrual,
)
from origin.metadata.database import Database, Row, execute
from origin.metadata.events import BUILD_DELETED, append_event, build_event_fields
from origin.metadata.sql_store import SqlStore

_ORG_PROJECT = ""  # build_retention.project_id of an org-wide setting


def _upsert(dialect: str, table: sa.Table, keys: list[str], set_: dict[str, Any]) -> sa.Insert:
    """An insert that updates ``set_`` (built from the ``excluded`` row) on a key conflict."""
    stmt: Any = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
    values = {name: value(stmt.excluded) for name, value in set_.items()}
    result: sa.Insert = stmt.on_conflict_do_update(index_elements=keys, set_=values)
    return result


# Two indexed lookups (the build's primary key; the save-tag's), not an OR that would scan.
_BUILD_FOR_TAG = sa.union_all(
    sa.select(*builds.c).where(
        builds.c.id == sa.bindparam("tag"), builds.c.repository == sa.bindparam("repository")
    ),
    sa.select(*builds.c)
    .select_from(build_tags.join(builds, builds.c.id == build_tags.c.build_id))
    .where(
        build_tags.c.repository == sa.bindparam("repository"),
        build_tags.c.tag == sa.bindparam("tag"),
    ),
)
_BUILD_FOR_DIGEST = (
    sa.select(builds)
    .select_from(builds.join(build_manifests, build_manifests.c.build_id == builds.c.id))
    .where(
        build_manifests.c.repository == sa.bindparam("repository"),
        build_manifests.c.digest == sa.bindparam("digest"),
    )
)


class BuildStore(SqlStore):
    """Builds, build retention and usage. Mutating methods take ``now``: the caller owns the
    clock."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        dialect = database.dialect
        self._upsert_retention = _upsert(
            dialect,
            build_retention,
            ["org_id", "project_id"],
            {
                "build_ttl_seconds": lambda e: e.build_ttl_seconds,
                "updated_at": lambda e: e.updated_at,
            },
        )
        self._add_usage = _upsert(
            dialect,
            usage,
            ["org_slug", "month"],
            {"byte_hours": lambda e: usage.c.byte_hours + e.byte_hours},
        )

    async def _builds(self, stmt: sa.Executable) -> list[BuildRecord]:
        return [_build_record(row) for row in await self._all(stmt)]

    # -- builds ---------------------------------------------------------------------------

    async def create_build(self, record: BuildRecord) -> None:
        values = {
            "id": record.id,
            "project_id": record.project_id,
            "org_slug": record.org_slug,
            "repository": record.repository,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "save_tags": json.dumps(list(record.save_tags)),
        }
        await self._change(sa.insert(builds), values)

    async def build(self, build_id: str) -> BuildRecord | None:
        """One primary-key lookup (inline on SQLite: asked on manifest pushes by tag)."""
        row = await self._lookup(sa.select(builds).where(builds.c.id == build_id))
        return None if row is None else _build_record(row)

    async def list_builds(self, project_id: str, limit: int) -> list[BuildRecord]:
        """The project's builds not deleted, newest first."""
        stmt = (
            sa.select(builds)
            .where(builds.c.project_id == project_id, builds.c.deleted_at.is_(None))
            .order_by(builds.c.created_at.desc(), builds.c.id.desc())
            .limit(limit)
        )
        return await self._builds(stmt)

    async def bind(self, build_id: str, image: BoundImage, now: float) -> bool:
        """Bind the pushed image to the build if it is still pending and live; record its
        manifests and save-tags. False when it was not (already bound, expired, deleted)."""
        return await self._write(self._bind, build_id, image, now)

    def _bind(self, conn: sa.Connection, build_id: str, image: BoundImage, now: float) -> bool:
        stmt = (
            sa.update(builds)
            .where(
                builds.c.id == build_id,
                builds.c.digest.is_(None),
                builds.c.deleted_at.is_(None),
                builds.c.expires_at > now,
            )
            .values(
                digest=image.digest,
                media_type=image.media_type,
                platforms=json.dumps(list(image.platforms)),
                size=image.size,
                bound_at=now,
            )
        )
        if execute(conn, stmt, {}) == 0:
            return False
        row = conn.execute(
            sa.select(builds.c.repository, builds.c.save_tags).where(builds.c.id == build_id)
        ).one()
        conn.execute(
            sa.insert(build_manifests),
            [
                {"build_id": build_id, "digest": digest, "repository": row.repository}
                for digest in sorted(image.manifests)
            ],
        )
        save_tags = json.loads(row.save_tags)
        if save_tags:
            conn.execute(
                sa.insert(build_tags),
                [{"repository": row.repository, "tag": t, "build_id": build_id} for t in save_tags],
            )
        return True

    async def delete_build(self, build_id: str, now: float) -> bool:
        """Mark the build deleted; False when it already was (or does not exist)."""
        return await self._write(_delete_build, build_id, now)

    async def dead_unretired(self, now: float) -> list[BuildRecord]:
        """Expired or deleted builds whose tags have not been retired yet."""
        dead = sa.or_(builds.c.deleted_at.is_not(None), builds.c.expires_at <= now)
        stmt = sa.select(builds).where(dead, builds.c.retired_at.is_(None)).order_by(builds.c.id)
        return await self._builds(stmt)

    async def mark_retired(self, build_id: str, now: float) -> None:
        stmt = sa.update(builds).where(builds.c.id == build_id).values(retired_at=now)
        await self._change(stmt)

    async def builds_for_tag(self, repository: str, tag: str) -> list[BuildRecord]:
        """Builds of the repository whose id is ``tag`` or bound ``tag`` as a save-tag (as
        many as bound it: through the thread pool, not inline)."""
        found = await self._all(_BUILD_FOR_TAG, {"repository": repository, "tag": tag})
        return [_build_record(row) for row in found]

    async def builds_for_digest(self, repository: str, digest: str) -> list[BuildRecord]:
        """Bound builds of the repository that reach manifest ``digest``."""
        found = await self._all(_BUILD_FOR_DIGEST, {"repository": repository, "digest": digest})
        return [_build_record(row) for row in found]

    # -- retention ------------------------------------------------------------------------

    async def retention(self, org_id: str, project_id: str | None = None) -> Retention:
        keys = [_ORG_PROJECT] if project_id is None else [_ORG_PROJECT, project_id]
        stmt = sa.select(build_retention.c.project_id, build_retention.c.build_ttl_seconds).where(
            build_retention.c.org_id == org_id, build_retention.c.project_id.in_(keys)
        )
        found = {row[0]: float(row[1]) for row in await self._all(stmt)}
        project = None if project_id is None else found.get(project_id)
        return Retention(found.get(_ORG_PROJECT), project)

    async def set_retention(
        self, org_id: str, project_id: str | None, ttl_seconds: float | None, now: float
    ) -> None:
        """Set the build TTL of the org (``project_id`` None) or of one project; None unsets."""
        key = {"org_id": org_id, "project_id": project_id or _ORG_PROJECT}
        if ttl_seconds is None:
            stmt: sa.Executable = sa.delete(build_retention).where(
                build_retention.c.org_id == key["org_id"],
                build_retention.c.project_id == key["project_id"],
            )
            await self._change(stmt)
            return
        values = {**key, "build_ttl_seconds": ttl_seconds, "updated_at": now}
        await self._change(self._upsert_retention, values)

    # -- usage ----------------------------------------------------------------------------

    async def accrue(self, org_slug: str, stored_bytes: int, now: float) -> float:
        """Add byte-hours for the time since the org's last accrual (at the bytes stored then),
        split by UTC month, and record ``stored_bytes`` as of ``now``. The first call for an
        org only starts the clock. Returns the byte-hours added."""
        return await self._write(self._accrue, org_slug, stored_bytes, now)

    def _accrue(self, conn: sa.Connection, org_slug: str, stored_bytes: int, now: float) -> float:
        row = conn.execute(
            sa.select(usage_accrual.c.accrued_at, usage_accrual.c.stored_bytes).where(
                usage_accrual.c.org_slug == org_slug
            )
        ).first()
        if row is None:
            values = {"org_slug": org_slug, "accrued_at": now, "stored_bytes": stored_bytes}
            conn.execute(_insert_ignoring_conflicts(conn, usage_accrual), values)
            return 0.0
        previous, measured = float(row.accrued_at), int(row.stored_bytes)
        # Compare-and-set first: a concurrent round that got here first wins, this one adds
        # nothing (PostgreSQL re-checks the WHERE once the winner commits).
        moved = sa.update(usage_accrual).where(
            usage_accrual.c.org_slug == org_slug, usage_accrual.c.accrued_at == previous
        )
        if now <= previous:  # no time passed: only the measurement is newer
            execute(conn, moved.values(stored_bytes=stored_bytes), {})
            return 0.0
        if execute(conn, moved.values(accrued_at=now, stored_bytes=stored_bytes), {}) == 0:
            return 0.0
        added = 0.0
        for month, seconds in split_by_month(previous, now):
            byte_hours = measured * seconds / 3600.0
            conn.execute(
                self._add_usage, {"org_slug": org_slug, "month": month, "byte_hours": byte_hours}
            )
            added += byte_hours
        return added

    async def usage(self, org_slug: str, month: str) -> UsageRecord:
        stmt = sa.select(
            sa.select(usage.c.byte_hours)
            .where(usage.c.org_slug == org_slug, usage.c.month == month)
            .scalar_subquery(),
            sa.select(usage_accrual.c.accrued_at)
            .where(usage_accrual.c.org_slug == org_slug)
            .scalar_subquery(),
        )
        row = (await self._all(stmt))[0]
        accrued_at = None if row[1] is None else float(row[1])
        return UsageRecord(org_slug, month, float(row[0] or 0.0), accrued_at)


def _delete_build(conn: sa.Connection, build_id: str, now: float) -> bool:
    stmt = (
        sa.update(builds)
        .where(builds.c.id == build_id, builds.c.deleted_at.is_(None))
        .values(deleted_at=now)
    )
    if conn.execute(stmt).rowcount == 0:
        return False
    build = conn.execute(sa.select(builds).where(builds.c.id == build_id)).one()
    if build.digest is not None:  # never bound: nothing ever resolved
        append_event(conn, BUILD_DELETED, now, **build_event_fields(conn, build))
    return True


def _insert_ignoring_conflicts(conn: sa.Connection, table: sa.Table) -> sa.Insert:
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return postgresql.insert(table).on_conflict_do_nothing()


def _build_record(row: Row) -> BuildRecord:
    return BuildRecord(
        id=row.id,
        project_id=row.project_id,
        org_slug=row.org_slug,
        repository=row.repository,
        created_at=float(row.created_at),
        expires_at=float(row.expires_at),
        save_tags=tuple(json.loads(row.save_tags)),
        digest=row.digest,
        media_type=row.media_type,
        platforms=tuple(json.loads(row.platforms)) if row.platforms else (),
        size=None if row.size is None else int(row.size),
        deleted_at=None if row.deleted_at is None else float(row.deleted_at),
    )
