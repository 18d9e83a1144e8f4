"""Tables of the registry's metadata store (SQLAlchemy Core; SQLite and PostgreSQL alike),
created with the tenancy and build tables by ``database.py``.

Timestamps are POSIX seconds as floats, supplied by the caller: the caller owns the clock.

Foreign keys hold the invariants the domain relies on: a repository links only blobs known to
the content store (``repo_blobs`` → ``blobs``), and tag and reference rows exist only for a
manifest of their repository. Nothing cascades: deletes are explicit, in ``store.py``.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def _text() -> sa.types.TypeEngine[str]:
    """Text compared byte-wise on every backend.

    Listings (``_catalog``, tags) page with ``name > last`` and must order exactly alike on
    SQLite (BINARY collation: memcmp of UTF-8) and PostgreSQL, whose database collation may be
    locale-aware ("B" beside "b"). ``COLLATE "C"`` on the column makes PostgreSQL compare bytes
    as well, and lets its indexes serve those ordered range scans without re-sorting.
    """
    return sa.String().with_variant(sa.String(collation="C"), "postgresql")


def _time(name: str) -> sa.Column[float]:
    return sa.Column(name, sa.Double(), nullable=False)


def _repository_id(*, primary_key: bool) -> sa.Column[int]:
    return sa.Column(
        "repository_id",
        sa.Integer(),
        sa.ForeignKey("repositories.id"),
        primary_key=primary_key,
        nullable=False,
    )


repositories = sa.Table(
    "repositories",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("name", _text(), nullable=False, unique=True),
    _time("created_at"),
)

# Blobs present in the content store, whichever repositories may serve them.
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("digest", _text(), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    _time("created_at"),
)

# Blobs whose row garbage collection deleted and whose bytes it has yet to delete: a
# collector killed between the two leaves the digest here, and the next one finishes it.
collected_blobs = sa.Table(
    "collected_blobs",
    metadata,
    sa.Column("digest", _text(), primary_key=True),
    _time("collected_at"),
)

# Which repository may serve which blob: never serve org A's bytes to org B by digest.
repo_blobs = sa.Table(
    "repo_blobs",
    metadata,
    _repository_id(primary_key=True),
    sa.Column("digest", _text(), sa.ForeignKey("blobs.digest"), primary_key=True),
    _time("created_at"),
)

manifests = sa.Table(
    "manifests",
    metadata,
    _repository_id(primary_key=True),
    sa.Column("digest", _text(), primary_key=True),
    sa.Column("media_type", sa.String(), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),  # exact bytes as pushed
    sa.Column("subject", _text(), nullable=True),
    sa.Column("artifact_type", sa.String(), nullable=True),
    sa.Column("annotations", sa.Text(), nullable=True),  # JSON text
    _time("created_at"),
    # The referrers API asks "which manifests of this repository name this subject?".
    sa.Index("ix_manifests_subject", "repository_id", "subject"),
)

# Descriptors a manifest points at. ``kind`` is not part of the key: a digest names one piece of
# content, and a manifest listing the same layer twice still stores one row.
manifest_references = sa.Table(
    "manifest_references",
    metadata,
    sa.Column("repository_id", sa.Integer(), primary_key=True),
    sa.Column("manifest_digest", _text(), primary_key=True),
    sa.Column("child_digest", _text(), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.CheckConstraint("kind IN ('blob', 'manifest')", name="ck_manifest_references_kind"),
    sa.ForeignKeyConstraint(
        ["repository_id", "manifest_digest"],
        ["manifests.repository_id", "manifests.digest"],
    ),
    # Garbage collection asks the reverse question: "does anything still point at this digest?".
    sa.Index("ix_manifest_references_child", "repository_id", "child_digest"),
)

tags = sa.Table(
    "tags",
    metadata,
    _repository_id(primary_key=True),
    sa.Column("name", _text(), primary_key=True),
    sa.Column("digest", _text(), nullable=False),
    _time("updated_at"),
    sa.ForeignKeyConstraint(
        ["repository_id", "digest"],
        ["manifests.repository_id", "manifests.digest"],
    ),
    # delete_manifest removes every tag pointing at the manifest.
    sa.Index("ix_tags_digest", "repository_id", "digest"),
)

uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    _repository_id(primary_key=False),
    sa.Column("size", sa.BigInteger(), nullable=False),  # bytes durably received so far
    _time("created_at"),
    _time("updated_at"),
    # The expiry sweep scans by age.
    sa.Index("ix_uploads_updated_at", "updated_at"),
)

# The storage driver's state of an upload session's staged bytes, beside its row in ``uploads``
# (a table of its own so databases created before it need no ALTER: ``create_all`` adds it).
# For the S3 driver it is the session's list of pieces (their keys, sizes and ETags); the
# filesystem driver keeps none. Written in the same transaction as the size it describes
# (``advance_upload``), so any origin on the database continues the session where it stands.
upload_states = sa.Table(
    "upload_states",
    metadata,
    sa.Column("upload_id", sa.String(), sa.ForeignKey("uploads.id"), primary_key=True),
    sa.Column("state", sa.LargeBinary(), nullable=False),
)
