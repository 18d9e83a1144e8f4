"""The registry's metadata store: repositories, blobs, manifests, tags, referrers and upload
sessions in SQL (SQLAlchemy Core over SQLite, embedded, or PostgreSQL, at scale).

One code path for both backends; statements live in ``queries.py`` (garbage collection's in
``collection.py``), tables in ``schema.py``. The store is built on the process's one
:class:`~origin.metadata.database.Database`, with the tenancy and build stores: every blocking
call runs in that database's worker threads, every write is one transaction behind its write
gate (one writer per process on SQLite, whichever store writes), and only the per-request
lookups by key (:meth:`MetadataStore.linked_blob`, :meth:`MetadataStore.manifest`) run inline
on SQLite. Each read is one autocommit statement. Every database failure is a
:class:`core.errors.DatabaseError`.

Only the registry domain (``origin/registry/``) calls this store; builds and garbage
collection reach the registry's tables through it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar, TypeVarTuple

import sqlalchemy as sa
import trio

from core.errors import DatabaseError, ManifestBlobUnknown
from origin.metadata import collection
from origin.metadata import queries as q
from origin.metadata.database import Database, execute
from origin.metadata.events import (
    BLOB_DELETED,
    MANIFEST_DELETED,
    TAG_DELETED,
    TAG_MOVED,
    append_event,
)
from origin.metadata.records import (
    BlobRecord,
    Graph,
    ManifestRecord,
    Reference,
    ReferrerRecord,
    UploadRecord,
)
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
from origin.metadata.sql_store import SqlStore

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Times a write re-takes a row a concurrent garbage collection deleted under it (PostgreSQL).
_RACE_ATTEMPTS = 3
_KINDS = frozenset({"blob", "manifest"})


class MetadataStore(SqlStore):
    """Repositories, blobs and their links, manifests, tags, referrers and upload sessions.

    Mutating methods take ``now`` (POSIX seconds): the caller owns the clock. A constraint the
    caller broke (linking a blob never added, a duplicate upload id, a repository id that does
    not exist) is a :class:`DatabaseError` like any other failure.
    """

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self._writes = q.WriteStatements.for_dialect(database.dialect)

    async def read(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)`` on an autocommit reader connection in a worker thread (for
        tests and one-off inspection; the registry domain has a method for what it needs)."""
        return await self.database.read(fn, *args)

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
        row = await self._first(q.REPOSITORY_ID, {"name": name})
        return None if row is None else int(row[0])

    async def list_repositories(
        self,
        n: int | None,
        last: str | None,
        *,
        with_content: bool = False,
        orgs: Collection[str] | None = None,
        names: Collection[str] | None = None,
    ) -> list[str]:
        """Repository names in byte-wise order, after ``last``, at most ``n``; with
        ``with_content``, only those holding a manifest or a blob (starting an upload
        creates the row too); with ``orgs``, only names under ``<org>/``; with ``names``,
        only those."""
        conditions: list[sa.ColumnElement[bool]] = []
        if names is not None:
            conditions.append(repositories.c.name.in_(sorted(names)) if names else sa.false())
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
        return [str(row[0]) for row in await self._all(stmt)]

    # -- blobs ----------------------------------------------------------------------------

    async def add_blob(self, digest: str, size: int, now: float) -> None:
        """Record that the content store holds ``digest`` (idempotent)."""
        await self._change(
            self._writes.insert_blob, {"digest": digest, "size": size, "created_at": now}
        )

    async def blob(self, digest: str) -> BlobRecord | None:
        """The blob if the content store holds it, whichever repositories link it."""
        row = await self._first(q.BLOB, {"digest": digest})
        return None if row is None else BlobRecord(digest=row.digest, size=int(row.size))

    async def link_blob(self, repository_id: int, digest: str, now: float) -> None:
        """Let the repository serve ``digest`` (idempotent). The blob must have been added."""
        params = {"repository_id": repository_id, "digest": digest, "created_at": now}
        await self._change(self._writes.insert_link, params)

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
        the row (``origin/metadata/collection.py``). So this either links a row whose bytes stay
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
            # Whether it did is what RETURNING says: rowcount is -1 for these inserts on
            # psycopg (the bytes were then always placed after the commit, not inside it).
            inserted = self._writes.insert_blob.returning(blobs.c.digest)
            if conn.execute(inserted, blob).first() is not None:
                trio.from_thread.run(place)
                placed = True
                break
        else:
            raise DatabaseError("blob row deleted repeatedly while linking it")
        params = {"repository_id": repository_id, "digest": digest, "created_at": now}
        conn.execute(self._writes.insert_link, params)
        return placed

    async def linked_blob(self, repository: str, digest: str) -> BlobRecord | None:
        """The blob if repository ``repository`` (by name) may serve it; one round trip."""
        row = await self._lookup(q.LINKED_BLOB, {"repository": repository, "digest": digest})
        return None if row is None else BlobRecord(digest=row.digest, size=int(row.size))

    async def unlink_blob(self, repository_id: int, digest: str) -> bool:
        return await self._write(self._unlink_blob, repository_id, digest)

    @staticmethod
    def _unlink_blob(conn: sa.Connection, repository_id: int, digest: str) -> bool:
        stmt = sa.delete(repo_blobs).where(
            repo_blobs.c.repository_id == repository_id, repo_blobs.c.digest == digest
        )
        if execute(conn, stmt, {}) == 0:
            return False
        name = repository_name(conn, repository_id)
        append_event(conn, BLOB_DELETED, time.time(), repository=name, subject=digest)
        return True

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
        present = {(row[0], row[1]) for row in await self._all(q.PRESENT_REFERENCES, params)}
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
            if execute(conn, self._writes.insert_manifest, row) > 0:
                break
            if conn.execute(q.MANIFESTS_FOR_SHARE, lock).first() is not None:
                break
        else:
            raise DatabaseError("manifest row deleted repeatedly while pushing it")
        if references:
            # A fixed order keeps concurrent writers of overlapping rows from deadlocking.
            reference_rows = [
                {
                    "repository_id": repository_id,
                    "manifest_digest": record.digest,
                    "child_digest": ref.digest,
                    "kind": ref.kind,
                }
                for ref in sorted(references, key=lambda ref: ref.digest)
            ]
            conn.execute(self._writes.insert_reference, reference_rows)
        if tag is not None:
            previous = conn.execute(
                sa.select(tags.c.digest).where(
                    tags.c.repository_id == repository_id, tags.c.name == tag
                )
            ).scalar()
            conn.execute(
                self._writes.upsert_tag,
                {
                    "repository_id": repository_id,
                    "name": tag,
                    "digest": record.digest,
                    "updated_at": now,
                },
            )
            if previous is not None and previous != record.digest:
                # Edges holding the old answer drop it (a new tag: they hold none).
                append_event(
                    conn,
                    TAG_MOVED,
                    now,
                    repository=repository_name(conn, repository_id),
                    subject=tag,
                    digest=record.digest,
                    previous=str(previous),
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
        row = await self._lookup(stmt, params)
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
        on_it = (tags.c.repository_id == repository_id, tags.c.digest == digest)
        tagged = [str(row[0]) for row in conn.execute(sa.select(tags.c.name).where(*on_it))]
        conn.execute(sa.delete(tags).where(*on_it))
        conn.execute(
            sa.delete(manifest_references).where(
                manifest_references.c.repository_id == repository_id,
                manifest_references.c.manifest_digest == digest,
            )
        )
        stmt = sa.delete(manifests).where(
            manifests.c.repository_id == repository_id, manifests.c.digest == digest
        )
        deleted = execute(conn, stmt, {}) > 0
        if deleted or tagged:
            name, now = repository_name(conn, repository_id), time.time()
            for tag in tagged:
                append_event(conn, TAG_DELETED, now, repository=name, subject=tag, digest=digest)
            if deleted:
                append_event(conn, MANIFEST_DELETED, now, repository=name, subject=digest)
        return deleted

    async def referrers(
        self, repository_id: int, subject: str, artifact_type: str | None
    ) -> list[ReferrerRecord]:
        """Manifests of the repository whose subject is ``subject``, ordered by digest."""
        stmt = q.REFERRERS
        if artifact_type is not None:
            stmt = stmt.where(manifests.c.artifact_type == artifact_type)
        found = await self._all(stmt, {"repository_id": repository_id, "subject": subject})
        return [
            ReferrerRecord(
                digest=row[0],
                media_type=row[1],
                size=int(row[2]),
                artifact_type=row[3],
                annotations=row[4],
            )
            for row in found
        ]

    # -- tags -----------------------------------------------------------------------------

    async def delete_tag(self, repository_id: int, tag: str) -> bool:
        return await self._write(self._delete_tag, repository_id, tag)

    @staticmethod
    def _delete_tag(conn: sa.Connection, repository_id: int, tag: str) -> bool:
        mine = (tags.c.repository_id == repository_id, tags.c.name == tag)
        digest = conn.execute(sa.select(tags.c.digest).where(*mine)).scalar()
        if digest is None:
            return False
        conn.execute(sa.delete(tags).where(*mine))
        name = repository_name(conn, repository_id)
        append_event(conn, TAG_DELETED, time.time(), repository=name, subject=tag, digest=digest)
        return True

    async def list_tags(self, repository_id: int, n: int | None, last: str | None) -> list[str]:
        """Tag names in byte-wise order, after ``last``, at most ``n``."""
        return await self._page(tags.c.name, tags.c.repository_id == repository_id, n, last)

    async def tags_reaching(self, repository: str, digest: str) -> list[tuple[str, str]]:
        """``(tag, its digest)`` for the repository's tags on ``digest`` or on an index
        listing it (at most 100)."""
        found = await self._all(q.TAGS_REACHING, {"repository": repository, "digest": digest})
        return [(str(row[0]), str(row[1])) for row in found]

    # -- sizes ----------------------------------------------------------------------------

    async def blob_sizes(self, digests: Collection[str]) -> dict[str, int]:
        """Sizes of the blobs the content store holds, by digest."""
        if not digests:
            return {}
        stmt = q.BLOB_SIZES.where(blobs.c.digest.in_(sorted(digests)))
        return {str(row[0]): int(row[1]) for row in await self._all(stmt)}

    async def stored_bytes(self, namespace: str) -> int:
        """Distinct blobs linked to any repository under ``<namespace>/``, plus their
        distinct manifests (by digest)."""
        row = await self._first(q.stored_bytes(namespace))
        assert row is not None  # two aggregates: always one row
        return int(row[0]) + int(row[1])

    # -- upload sessions ------------------------------------------------------------------

    async def create_upload(self, upload_id: str, repository_id: int, now: float) -> None:
        params = {
            "id": upload_id,
            "repository_id": repository_id,
            "size": 0,
            "created_at": now,
            "updated_at": now,
        }
        await self._change(sa.insert(uploads), params)

    async def upload_usage(self, namespace: str) -> tuple[int, int]:
        """Upload sessions open in the repositories under ``<namespace>/`` (an org), and the
        bytes they have staged."""
        row = await self._first(q.upload_usage(namespace))
        assert row is not None  # two aggregates: always one row
        return int(row[0]), int(row[1])

    async def upload(self, upload_id: str) -> UploadRecord | None:
        row = await self._first(q.UPLOAD, {"upload_id": upload_id})
        if row is None:
            return None
        return UploadRecord(
            id=row.id,
            repository=row.name,
            size=int(row.size),
            created_at=float(row.created_at),
            updated_at=float(row.updated_at),
            state=None if row.state is None else bytes(row.state),
        )

    async def advance_upload(
        self,
        upload_id: str,
        expected_size: int,
        new_size: int,
        now: float,
        state: bytes | None = None,
    ) -> bool:
        """Compare-and-set the received size, and with it the storage driver's ``state`` of
        the staged bytes (one transaction: size and state never disagree). False if the size
        is no longer ``expected_size`` (a concurrent PATCH won) or the upload is gone."""
        return await self._write(
            self._advance_upload, upload_id, expected_size, new_size, now, state
        )

    @staticmethod
    def _advance_upload(
        conn: sa.Connection,
        upload_id: str,
        expected_size: int,
        new_size: int,
        now: float,
        state: bytes | None,
    ) -> bool:
        stmt = (
            sa.update(uploads)
            .where(uploads.c.id == upload_id, uploads.c.size == expected_size)
            .values(size=new_size, updated_at=now)
        )
        if execute(conn, stmt, {}) == 0:
            return False
        if state is not None:
            # The row's size changed under this transaction's lock: no other writer races
            # us for the state row, so delete-then-insert is an upsert on both backends.
            execute(
                conn, sa.delete(upload_states).where(upload_states.c.upload_id == upload_id), {}
            )
            execute(conn, sa.insert(upload_states), {"upload_id": upload_id, "state": state})
        return True

    async def delete_upload(self, upload_id: str) -> bool:
        return await self._write(self._delete_upload, upload_id)

    @staticmethod
    def _delete_upload(conn: sa.Connection, upload_id: str) -> bool:
        execute(conn, sa.delete(upload_states).where(upload_states.c.upload_id == upload_id), {})
        return execute(conn, sa.delete(uploads).where(uploads.c.id == upload_id), {}) > 0

    async def upload_ids(self) -> set[str]:
        """Every open upload session's id: what the storage sweep must spare."""
        return {str(row[0]) for row in await self._all(sa.select(uploads.c.id))}

    async def expired_uploads(self, updated_before: float) -> list[str]:
        """Ids of uploads last advanced before ``updated_before``, oldest first."""
        stmt = (
            sa.select(uploads.c.id)
            .where(uploads.c.updated_at < updated_before)
            .order_by(uploads.c.updated_at, uploads.c.id)
        )
        return [str(row[0]) for row in await self._all(stmt)]

    # -- garbage collection (origin/retention/; the SQL is in collection.py) ---------------

    async def graph(self) -> tuple[Graph, dict[int, str]]:
        """What the mark phase walks, and repository names by id."""
        return await self.database.read(collection.load_graph)

    async def collect_manifest(self, repository_id: int, digest: str, cutoff: float) -> bool:
        """Delete the manifest and its reference rows if, re-checked now, it is garbage."""
        return await self._write(collection.delete_manifest, repository_id, digest, cutoff)

    async def collect_link(self, repository_id: int, digest: str, cutoff: float) -> bool:
        """Unlink the blob from the repository if, re-checked now, nothing references it."""
        return await self._write(collection.delete_link, repository_id, digest, cutoff)

    async def collect_blob(
        self, digest: str, cutoff: float, now: float, remove: Callable[[], Awaitable[None]]
    ) -> int | None:
        """Delete the blob's row if, re-checked now, no repository links it, and then (in
        a transaction of its own: see ``collection.py``) its bytes with ``remove()``: the
        size freed, or None when refused."""
        size = await self._write(collection.delete_blob, digest, cutoff, now)
        if size is not None:
            await self.collect_blob_bytes(digest, remove)
        return size

    async def collect_blob_bytes(self, digest: str, remove: Callable[[], Awaitable[None]]) -> bool:
        """Delete the bytes of a collected blob, unless it was pushed again since."""
        insert = self._writes.insert_blob
        return await self._write(collection.delete_blob_bytes, digest, insert, remove)

    async def collected_blobs(self) -> list[str]:
        """Blobs whose rows were collected but whose bytes may remain (a collector was
        stopped in between): :meth:`collect_blob_bytes` finishes them."""
        return await self.database.read(collection.collected_digests)


def repository_name(conn: sa.Connection, repository_id: int) -> str:
    """The name of repository ``repository_id`` (events name repositories, not ids)."""
    return str(
        conn.execute(
            sa.select(repositories.c.name).where(repositories.c.id == repository_id)
        ).scalar_one()
    )


def _unique(references: list[Reference]) -> list[Reference]:
    """References without repeated digests, first occurrence kept; unknown kinds rejected."""
    seen: dict[str, Reference] = {}
    for ref in references:
        if ref.kind not in _KINDS:
            raise ValueError(f"unknown reference kind: {ref.kind!r}")
        seen.setdefault(ref.digest, ref)
    return list(seen.values())
