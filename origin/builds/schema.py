"""Tables of builds, build retention and storage usage (SQLAlchemy Core; SQLite and PostgreSQL
alike).

They live in the origin's one database (``origin/metadata/database.py`` creates every table at
start) on a ``MetaData`` of their own. No foreign key points into the registry or tenancy
tables: a build names its repository, project and org by value. Timestamps are POSIX seconds
as floats, supplied by the caller.
"""

from __future__ import annotations

import sqlalchemy as sa

builds_metadata = sa.MetaData()


def _text() -> sa.types.TypeEngine[str]:
    # Byte-wise like the metadata store's names and digests (see origin/metadata/schema.py).
    return sa.String().with_variant(sa.String(collation="C"), "postgresql")


def _time(name: str, *, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Double(), nullable=nullable)


builds = sa.Table(
    "builds",
    builds_metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # also the image's tag
    sa.Column("project_id", sa.String(64), nullable=False),
    sa.Column("org_slug", sa.String(63), nullable=False),
    sa.Column("repository", _text(), nullable=False),
    _time("created_at"),
    _time("expires_at"),
    sa.Column("save_tags", sa.Text(), nullable=False),  # JSON list, as asked at creation
    # Bound when the image is pushed to ``<project>:<id>``.
    sa.Column("digest", _text(), nullable=True),
    sa.Column("media_type", sa.String(), nullable=True),
    sa.Column("platforms", sa.Text(), nullable=True),  # JSON list of "os/arch[/variant]"
    sa.Column("size", sa.BigInteger(), nullable=True),
    _time("bound_at", nullable=True),
    _time("deleted_at", nullable=True),
    # Set once an expired or deleted build's tags were removed, so collection can free it.
    _time("retired_at", nullable=True),
    # Listings are per project, newest first.
    sa.Index("ix_builds_project_created", "project_id", "created_at"),
)

# Save-tags a bound build pointed at its digest: a save-tag resolves while one of the live
# builds bound to it under its current digest does.
build_tags = sa.Table(
    "build_tags",
    builds_metadata,
    sa.Column("repository", _text(), primary_key=True),
    sa.Column("tag", _text(), primary_key=True),
    sa.Column("build_id", sa.String(32), sa.ForeignKey("builds.id"), primary_key=True),
)

# Every manifest a bound build reaches (its root and an index's children): a digest only
# builds reach stops resolving when they all expire.
build_manifests = sa.Table(
    "build_manifests",
    builds_metadata,
    sa.Column("build_id", sa.String(32), sa.ForeignKey("builds.id"), primary_key=True),
    sa.Column("digest", _text(), primary_key=True),
    sa.Column("repository", _text(), nullable=False),
    sa.Index("ix_build_manifests_repository_digest", "repository", "digest"),
)

# Build TTLs set on an org (``project_id`` = '') or on one project of it.
build_retention = sa.Table(
    "build_retention",
    builds_metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("project_id", sa.String(64), primary_key=True),
    sa.Column("build_ttl_seconds", sa.Double(), nullable=False),
    _time("updated_at"),
)

# Byte-hours accrued per org and UTC month.
usage = sa.Table(
    "usage",
    builds_metadata,
    sa.Column("org_slug", sa.String(63), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),  # YYYY-MM
    sa.Column("byte_hours", sa.Double(), nullable=False),
)

# Where accrual stands per org: byte-hours are added for [accrued_at, now) at the bytes stored
# when accrued_at was recorded. Moving accrued_at is a compare-and-set, so a crashed or
# concurrent round never counts an interval twice.
usage_accrual = sa.Table(
    "usage_accrual",
    builds_metadata,
    sa.Column("org_slug", sa.String(63), primary_key=True),
    _time("accrued_at"),
    sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
)
