"""The origin's metadata store: SQLAlchemy Core over SQLite (embedded) or PostgreSQL (scale-out).

One code path for both backends; engine set-up lives in ``engine.py``, statements in
``queries.py``, tables in ``schema.py``.

Every blocking call runs in a worker thread through ``trio.to_thread.run_sync`` with this
store's own ``CapacityLimiter``: each sync ``_method`` has a thin async wrapper. SQLAlchemy
errors become :class:`MetadataError` at this boundary and never leak upward. Each read is one
autocommit statement; each write is one transaction. On SQLite the writers of one process also
queue on a trio limiter of one, instead of spinning in SQLite's busy handler against each other
(other processes are still waited for through ``busy_timeout``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar, TypeVarTuple

import sqlalchemy as sa
import trio

from core.errors import ManifestBlobUnknown
from origin.metadata import queries as q
from origin.metadata.engine import open_engines
from origin.metadata.records import (
    BlobRecord,
    ManifestRecord,
    Reference,
    ReferrerRecord,
    UploadRecord,
)
from origin.metadata.schema import (
    manifest_references,
    manifests,
    repo_blobs,
    repositories,
    tags,
    uploads,
)
from origin.metadata.sql_store import SqlStore, describe

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_MAX_THREADS = 8
#: Times a write re-takes a row a concurrent garbage collection deleted under it (PostgreSQL).
_RACE_ATTEMPTS = 3
_KINDS = frozenset({"blob", "manifest"})


class MetadataError(Exception):
    """The metadata database failed or refused an operation: unreachable, locked past the busy
    timeout, or a constraint (linking a blob never added, a duplicate upload id, a repository
    id that does not exist)."""


class MetadataStore(SqlStore):
    """Repositories, blobs and their links, manifests, tags, referrers and upload sessions.

    Mutating methods take ``now`` (POSIX seconds): the caller owns the clock.
    """

    error = MetadataError
    label = "metadata store"

    def __init__(self, reader: sa.Engine, writer: sa.Engine, *, max_threads: int) -> None:
        super().__init__(reader, writer, max_threads=max_threads)
        self._writes = q.WriteStatements.for_dialect(writer.dialect.name)

    @classmethod
    def open(cls, url: str, *, max_threads: int = DEFAULT_MAX_THREADS) -> MetadataStore:
        """Connect to ``url`` (``sqlite:///path/to/file`` or ``postgresql+psycopg://…``) and
        create missing tables. Blocking: call it at start-up, before serving.

        Raises ``ValueError`` for an unusable URL, :class:`MetadataError` if the database fails.
        """
        try:
            reader, writer = open_engines(url, pool_size=max_threads)
        except sa.exc.SQLAlchemyError as exc:
            raise MetadataError(describe(exc)) from exc
        return cls(reader, writer, max_threads=max_threads)

    # -- plumbing -------------------------------------------------------------------------

    def _read_with(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        with self._reader.connect() as conn:
            return fn(conn, *args)

    async def read(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)`` on an autocommit reader connection in a worker thread: for
        modules owning queries of their own (garbage collection, ``origin/retention/``)."""
        return await self._run(self._read_with, fn, *args)

    async def transaction(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)`` in one write transaction, committed when it returns; ``fn``
        runs in a worker thread and may reach trio through ``trio.from_thread.run``."""
        return await self._write(fn, *args)

    # -- repositories ---------------------------------------------------------------------

    async def ensure_repository(self, name: str, now: float) -> int:
        """The id of repository ``name``, created if missing (safe against concurrent creators
        in this and other processes)."""
        existing = await self.repository_id(name)  # usual case: no write lock taken
        if existing is not None:
            return existing
        return await self._write(self._ensure_repository, name, now)

    def _ensure_repository(self, conn: sa.Connection, name: str, now: float) -> int:
        conn.execute(self._writes.insert_repository, {"name": name, "created_at": now})
        # Inserted here or by a racing creator whose commit ON CONFLICT waited for.
        return int(conn.execute(q.REPOSITORY_ID, {"name": name}).scalar_one())

    async def repository_id(self, name: str) -> int | None:
        row = await self._run(self._first, q.REPOSITORY_ID, {"name": name})
        return None if row is None else int(row[0])

    async def list_repositories(
        self,
        n: int | None,
        last: str | None,
        *,
        with_content: bool = False,
        orgs: Collection[str] | None = None,
    ) -> list[str]:
        """Repository names in byte-wise order, after ``last``, at most ``n``; with
        ``with_content``, only those holding a manifest or a blob (starting an upload
        creates the row too); with ``orgs``, only names under ``<org>/``."""
        conditions: list[sa.ColumnElement[bool]] = []
        if with_content:
            conditions.append(
                sa.or_(
                    sa.exists().where(manifests.c.repository_id == repositories.c.id),
                    sa.exists().where(repo_blobs.c.repository_id == repositories.c.id),
                )
            )
        if orgs is not None:
            # A byte range per org ('/' + 1 == '0'): no LIKE escaping, uses the index.
            name = repositories.c.name
            conditions.append(
                sa.or_(sa.false(), *((name > f"{org}/") & (name < f"{org}0") for org in orgs))
            )
        where = sa.and_(sa.true(), *conditions) if conditions else None
        return await self._page(repositories.c.name, where, n, last)

    async def _page(
        self,
        column: sa.Column[str],
        where: sa.ColumnElement[bool] | None,
        n: int | None,
        last: str | None,
    ) -> list[str]:
        if n is not None and n < 0:
            raise ValueError(f"page size must not be negative: {n}")
        if n == 0:
            return []
        stmt = sa.select(column).order_by(column)
        if where is not None:
            stmt = stmt.where(where)
        if last is not None:
            stmt = stmt.where(column > last)
        if n is not None:
            stmt = stmt.limit(n)
        rows = await self._run(self._all, stmt, {})
        return [str(row[0]) for row in rows]

    # -- blobs ----------------------------------------------------------------------------

    async def add_blob(self, digest: str, size: int, now: float) -> None:
        """Record that the content store holds ``digest`` (idempotent)."""
        await self._write(
            self._execute,
            self._writes.insert_blob,
            {"digest": digest, "size": size, "created_at": now},
        )

    async def blob(self, digest: str) -> BlobRecord | None:
        """The blob if the content store holds it, whichever repositories link it."""
        row = await self._run(self._first, q.BLOB, {"digest": digest})
        return None if row is None else BlobRecord(digest=row.digest, size=int(row.size))

    async def link_blob(self, repository_id: int, digest: str, now: float) -> None:
        """Let the repository serve ``digest`` (idempotent). The blob must have been added."""
        params = {"repository_id": repository_id, "digest": digest, "created_at": now}
        await self._write(self._execute, self._writes.insert_link, params)

    async def link_blob_if_present(self, repository_id: int, digest: str, now: float) -> bool:
        """Link ``digest`` if the content store holds it; False if it does not. The blob row is
        locked while the link is added, so a concurrent garbage collection (which deletes only
        unlinked rows, after locking them) cannot delete it meanwhile."""
        return await self._write(self._link_blob_if_present, repository_id, digest, now)

    def _link_blob_if_present(
        self, conn: sa.Connection, repository_id: int, digest: str, now: float
    ) -> bool:
        if conn.execute(q.BLOB_FOR_SHARE, {"digest": digest}).first() is None:
            return False
        params = {"repository_id": repository_id, "digest": digest, "created_at": now}
        conn.execute(self._writes.insert_link, params)
        return True

    async def store_and_link_blob(
        self,
        repository_id: int,
        digest: str,
        size: int,
        now: float,
        place: Callable[[], Awaitable[None]],
    ) -> bool:
        """Link ``digest`` into the repository, first adding it to the content store if it is
        not there: then ``place()`` (which puts the bytes under the blob's path) is awaited
        inside the same transaction, before the new row can be seen. Returns whether it was.

        Garbage collection deletes a blob's row and its bytes in one transaction after locking
        the row (``origin/retention/sweep.py``). So this either links a row whose bytes stay
        (the link keeps the collector off), or re-creates row and bytes after the collector is
        done with them; it never places bytes a collector then deletes.
        """
        return await self._write(self._store_and_link_blob, repository_id, digest, size, now, place)

    def _store_and_link_blob(
        self,
        conn: sa.Connection,
        repository_id: int,
        digest: str,
        size: int,
        now: float,
        place: Callable[[], Awaitable[None]],
    ) -> bool:
        placed = False
        blob = {"digest": digest, "size": size, "created_at": now}
        for _ in range(_RACE_ATTEMPTS):
            if conn.execute(q.BLOB_FOR_SHARE, {"digest": digest}).first() is not None:
                break
            # Waits for a collector deleting this row (PostgreSQL), then inserts it anew.
            if self._execute(conn, self._writes.insert_blob, blob) > 0:
                trio.from_thread.run(place)
                placed = True
                break
        else:
            raise MetadataError("blob row deleted repeatedly while linking it")
        params = {"repository_id": repository_id, "digest": digest, "created_at": now}
        conn.execute(self._writes.insert_link, params)
        return placed

    async def linked_blob(self, repository: str, digest: str) -> BlobRecord | None:
        """The blob if repository ``repository`` (by name) may serve it; one round trip."""
        row = await self._run_hot(
            self._first, q.LINKED_BLOB, {"repository": repository, "digest": digest}
        )
        return None if row is None else BlobRecord(digest=row.digest, size=int(row.size))

    async def unlink_blob(self, repository_id: int, digest: str) -> bool:
        stmt = sa.delete(repo_blobs).where(
            repo_blobs.c.repository_id == repository_id, repo_blobs.c.digest == digest
        )
        return await self._write(self._execute, stmt, {}) > 0

    # -- manifests ------------------------------------------------------------------------

    async def missing_references(
        self, repository_id: int, references: list[Reference]
    ) -> list[Reference]:
        """The references the repository cannot satisfy, in the order given, without repeats:
        blobs it does not link, manifests it does not hold."""
        wanted = _unique(references)
        if not wanted:
            return []
        params = {
            "repository_id": repository_id,
            "blob_digests": [ref.digest for ref in wanted if ref.kind == "blob"],
            "manifest_digests": [ref.digest for ref in wanted if ref.kind == "manifest"],
        }
        rows = await self._run(self._all, q.PRESENT_REFERENCES, params)
        present = {(row[0], row[1]) for row in rows}
        return [ref for ref in wanted if (ref.digest, ref.kind) not in present]

    async def put_manifest(
        self,
        repository_id: int,
        record: ManifestRecord,
        references: list[Reference],
        tag: str | None,
        now: float,
    ) -> None:
        """Store the manifest (if absent) and its references, and point ``tag`` at it, in one
        transaction. Concurrent pushes of the same manifest all succeed.

        Raises ``ManifestBlobUnknown`` if, inside the transaction, the repository no longer
        links every referenced blob or holds every referenced manifest: the caller checked
        before, but a concurrent garbage collection may have removed them since. The rows found
        stay locked until commit, so the collector cannot remove them afterwards either."""
        await self._write(self._put_manifest, repository_id, record, _unique(references), tag, now)

    def _put_manifest(
        self,
        conn: sa.Connection,
        repository_id: int,
        record: ManifestRecord,
        references: list[Reference],
        tag: str | None,
        now: float,
    ) -> None:
        missing = self._lock_references(conn, repository_id, references)
        if missing:
            raise ManifestBlobUnknown(detail={"missing": [ref.digest for ref in missing[:50]]})
        row = {
            "repository_id": repository_id,
            "digest": record.digest,
            "media_type": record.media_type,
            "payload": record.payload,
            "subject": record.subject,
            "artifact_type": record.artifact_type,
            "annotations": record.annotations,
            "created_at": now,
        }
        lock = {"repository_id": repository_id, "digests": [record.digest]}
        for _ in range(_RACE_ATTEMPTS):
            # Inserted, or present and locked: a collector cannot delete it before commit.
            if self._execute(conn, self._writes.insert_manifest, row) > 0:
                break
            if conn.execute(q.MANIFESTS_FOR_SHARE, lock).first() is not None:
                break
        else:
            raise MetadataError("manifest row deleted repeatedly while pushing it")
        if references:
            # A fixed order keeps concurrent writers of overlapping rows from deadlocking.
            rows = [
                {
                    "repository_id": repository_id,
                    "manifest_digest": record.digest,
                    "child_digest": ref.digest,
                    "kind": ref.kind,
                }
                for ref in sorted(references, key=lambda ref: ref.digest)
            ]
            conn.execute(self._writes.insert_reference, rows)
        if tag is not None:
            conn.execute(
                self._writes.upsert_tag,
                {
                    "repository_id": repository_id,
                    "name": tag,
                    "digest": record.digest,
                    "updated_at": now,
                },
            )

    @staticmethod
    def _lock_references(
        conn: sa.Connection, repository_id: int, references: list[Reference]
    ) -> list[Reference]:
        """Lock the links and manifests ``references`` name; return those that are missing."""
        present: set[tuple[str, str]] = set()
        for kind, stmt in (("blob", q.LINKS_FOR_SHARE), ("manifest", q.MANIFESTS_FOR_SHARE)):
            digests = [ref.digest for ref in references if ref.kind == kind]
            if digests:
                params = {"repository_id": repository_id, "digests": digests}
                present.update((row[0], kind) for row in conn.execute(stmt, params))
        return [ref for ref in references if (ref.digest, ref.kind) not in present]

    async def manifest(
        self, repository: str, *, digest: str | None = None, tag: str | None = None
    ) -> ManifestRecord | None:
        """The manifest of repository ``repository`` (by name) by digest or by tag (exactly
        one of them); one round trip."""
        if (digest is None) == (tag is None):
            raise ValueError("give exactly one of digest and tag")
        params: dict[str, Any]
        if digest is not None:
            stmt, params = q.MANIFEST_BY_DIGEST, {"repository": repository, "digest": digest}
        else:
            stmt, params = q.MANIFEST_BY_TAG, {"repository": repository, "tag": tag}
        row = await self._run_hot(self._first, stmt, params)
        if row is None:
            return None
        return ManifestRecord(
            digest=row.digest,
            media_type=row.media_type,
            payload=bytes(row.payload),  # psycopg hands bytea back as memoryview
            subject=row.subject,
            artifact_type=row.artifact_type,
            annotations=row.annotations,
        )

    async def delete_manifest(self, repository_id: int, digest: str) -> bool:
        """Delete the manifest, its reference rows and every tag pointing at it."""
        return await self._write(self._delete_manifest, repository_id, digest)

    def _delete_manifest(self, conn: sa.Connection, repository_id: int, digest: str) -> bool:
        conn.execute(
            sa.delete(tags).where(tags.c.repository_id == repository_id, tags.c.digest == digest)
        )
        conn.execute(
            sa.delete(manifest_references).where(
                manifest_references.c.repository_id == repository_id,
                manifest_references.c.manifest_digest == digest,
            )
        )
        stmt = sa.delete(manifests).where(
            manifests.c.repository_id == repository_id, manifests.c.digest == digest
        )
        return self._execute(conn, stmt, {}) > 0

    async def referrers(
        self, repository_id: int, subject: str, artifact_type: str | None
    ) -> list[ReferrerRecord]:
        """Manifests of the repository whose subject is ``subject``, ordered by digest."""
        stmt = q.REFERRERS
        if artifact_type is not None:
            stmt = stmt.where(manifests.c.artifact_type == artifact_type)
        rows = await self._run(
            self._all, stmt, {"repository_id": repository_id, "subject": subject}
        )
        return [
            ReferrerRecord(
                digest=row[0],
                media_type=row[1],
                size=int(row[2]),
                artifact_type=row[3],
                annotations=row[4],
            )
            for row in rows
        ]

    # -- tags -----------------------------------------------------------------------------

    async def delete_tag(self, repository_id: int, tag: str) -> bool:
        stmt = sa.delete(tags).where(tags.c.repository_id == repository_id, tags.c.name == tag)
        return await self._write(self._execute, stmt, {}) > 0

    async def list_tags(self, repository_id: int, n: int | None, last: str | None) -> list[str]:
        """Tag names in byte-wise order, after ``last``, at most ``n``."""
        return await self._page(tags.c.name, tags.c.repository_id == repository_id, n, last)

    # -- upload sessions ------------------------------------------------------------------

    async def create_upload(self, upload_id: str, repository_id: int, now: float) -> None:
        params = {
            "id": upload_id,
            "repository_id": repository_id,
            "size": 0,
            "created_at": now,
            "updated_at": now,
        }
        await self._write(self._execute, sa.insert(uploads), params)

    async def upload(self, upload_id: str) -> UploadRecord | None:
        row = await self._run(self._first, q.UPLOAD, {"upload_id": upload_id})
        if row is None:
            return None
        return UploadRecord(
            id=row.id,
            repository=row.name,
            size=int(row.size),
            created_at=float(row.created_at),
            updated_at=float(row.updated_at),
        )

    async def advance_upload(
        self, upload_id: str, expected_size: int, new_size: int, now: float
    ) -> bool:
        """Compare-and-set the received size: False if it is no longer ``expected_size`` (a
        concurrent PATCH won) or the upload is gone."""
        stmt = (
            sa.update(uploads)
            .where(uploads.c.id == upload_id, uploads.c.size == expected_size)
            .values(size=new_size, updated_at=now)
        )
        return await self._write(self._execute, stmt, {}) > 0

    async def delete_upload(self, upload_id: str) -> bool:
        stmt = sa.delete(uploads).where(uploads.c.id == upload_id)
        return await self._write(self._execute, stmt, {}) > 0

    async def expired_uploads(self, updated_before: float) -> list[str]:
        """Ids of uploads last advanced before ``updated_before``, oldest first."""
        stmt = (
            sa.select(uploads.c.id)
            .where(uploads.c.updated_at < updated_before)
            .order_by(uploads.c.updated_at, uploads.c.id)
        )
        rows = await self._run(self._all, stmt, {})
        return [str(row[0]) for row in rows]


def _unique(references: list[Reference]) -> list[Reference]:
    """References without repeated digests, first occurrence kept; unknown kinds rejected."""
    seen: dict[str, Reference] = {}
    for ref in references:
        if ref.kind not in _KINDS:
            raise ValueError(f"unknown reference kind: {ref.kind!r}")
        seen.setdefault(ref.digest, ref)
    return list(seen.values())
