"""Contract of the origin's metadata store, run against SQLite (a file) and PostgreSQL.

PostgreSQL runs on 127.0.0.1:5432, database ``test``; each test gets a schema of its own
(through ``search_path`` in the URL), dropped afterwards. Without a server the PostgreSQL cases
skip locally and fail on CI (``CI=true``).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio

from core.errors import DatabaseError
from origin.metadata.database import Database
from origin.metadata.records import BlobRecord, ManifestRecord, Reference, UploadRecord
from origin.metadata.schema import metadata as registry_tables
from origin.metadata.store import MetadataStore

NOW = 1_700_000_000.0
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def digest_of(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def manifest_record(
    content: bytes,
    *,
    subject: str | None = None,
    artifact_type: str | None = None,
    annotations: str | None = None,
) -> ManifestRecord:
    return ManifestRecord(
        digest=digest_of(content),
        media_type="application/vnd.oci.image.manifest.v1+json",
        payload=content,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


@pytest.fixture
def open_store(open_database: Callable[[], Database]) -> Callable[[], MetadataStore]:
    """Opens stores on this test's database, each on a Database of its own (as separate
    processes would); the databases are closed at the end."""
    return lambda: MetadataStore(open_database())


@pytest.fixture
def store(database: Database) -> MetadataStore:
    return MetadataStore(database)


def count_rows(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    finally:
        engine.dispose()


async def blob_in(store: MetadataStore, repository_id: int, content: bytes) -> str:
    digest = digest_of(content)
    await store.add_blob(digest, len(content), NOW)
    await store.link_blob(repository_id, digest, NOW)
    return digest


# -- repositories -----------------------------------------------------------------------------


async def test_ensure_repository_creates_once(store: MetadataStore) -> None:
    with trio.fail_after(20):
        first = await store.ensure_repository("library/alpine", NOW)
        assert await store.ensure_repository("library/alpine", NOW + 1) == first
        other = await store.ensure_repository("library/busybox", NOW)
        assert other != first
        assert await store.repository_id("library/alpine") == first
        assert await store.repository_id("nope") is None


async def test_concurrent_ensure_repository_yields_one_row(
    store: MetadataStore, store_url: str
) -> None:
    with trio.fail_after(20):
        ids: list[int] = []

        async def ensure() -> None:
            ids.append(await store.ensure_repository("race/repo", NOW))

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(ensure)
        assert len(ids) == 16 and len(set(ids)) == 1
        assert count_rows(store_url, "repositories") == 1


NAMES = ["b", "a/b", "B", "a-b", "a"]
BYTEWISE = ["B", "a", "a-b", "a/b", "b"]  # '-' 0x2d < '/' 0x2f; 'B' 0x42 < 'a' 0x61


async def test_list_repositories_bytewise_pages(store: MetadataStore) -> None:
    with trio.fail_after(20):
        for name in NAMES:
            await store.ensure_repository(name, NOW)
        assert await store.list_repositories(None, None) == BYTEWISE
        assert await store.list_repositories(0, None) == []
        assert await store.list_repositories(0, "a") == []
        assert await store.list_repositories(2, None) == ["B", "a"]
        assert await store.list_repositories(2, "a") == ["a-b", "a/b"]
        assert await store.list_repositories(None, "a") == ["a-b", "a/b", "b"]
        assert await store.list_repositories(1, "a-b") == ["a/b"]
        assert await store.list_repositories(10, "b") == []
        assert await store.list_repositories(10, "zzz") == []
        assert await store.list_repositories(100, None) == BYTEWISE
        assert await store.list_repositories(None, "") == BYTEWISE
        assert await store.list_repositories(None, "a.") == ["a/b", "b"]  # last need not exist
        with pytest.raises(ValueError):
            await store.list_repositories(-1, None)


# -- blobs ------------------------------------------------------------------------------------


async def test_blobs_are_global_and_idempotent(store: MetadataStore) -> None:
    with trio.fail_after(20):
        digest = digest_of(b"layer")
        assert await store.blob(digest) is None
        await store.add_blob(digest, 5, NOW)
        await store.add_blob(digest, 5, NOW + 1)
        assert await store.blob(digest) == BlobRecord(digest=digest, size=5)


async def test_a_new_blob_is_placed_inside_its_rows_transaction(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("lib/app", NOW)
        digest = digest_of(b"new")
        placed: list[bool] = []

        async def place() -> None:
            # Inside the transaction: nobody else sees the row yet.
            placed.append(await store.blob(digest) is None)

        assert await store.store_and_link_blob(repository_id, digest, 3, NOW, place)
        assert placed == [True]
        # Known already: linked, never placed again.
        other = await store.ensure_repository("lib/other", NOW)
        assert not await store.store_and_link_blob(other, digest, 3, NOW, place)
        assert placed == [True]
        assert await store.linked_blob("lib/other", digest) is not None


async def test_linked_blob_is_per_repository(store: MetadataStore) -> None:
    with trio.fail_after(20):
        mine = await store.ensure_repository("org-a/app", NOW)
        await store.ensure_repository("org-b/app", NOW)
        digest = await blob_in(store, mine, b"secret layer")
        await store.link_blob(mine, digest, NOW + 1)  # idempotent
        record = BlobRecord(digest=digest, size=len(b"secret layer"))
        assert await store.linked_blob("org-a/app", digest) == record
        assert await store.linked_blob("org-b/app", digest) is None
        assert await store.linked_blob("no/such", digest) is None
        assert await store.linked_blob("org-a/app", digest_of(b"other")) is None

        assert await store.unlink_blob(mine, digest) is True
        assert await store.unlink_blob(mine, digest) is False
        assert await store.linked_blob("org-a/app", digest) is None
        assert await store.blob(digest) == record  # still in the content store


async def test_link_needs_an_added_blob(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        with pytest.raises(DatabaseError):
            await store.link_blob(repository_id, digest_of(b"never added"), NOW)


async def test_concurrent_link_blob_yields_one_row(store: MetadataStore, store_url: str) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        digest = digest_of(b"shared")
        await store.add_blob(digest, 6, NOW)
        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(store.link_blob, repository_id, digest, NOW)
        assert count_rows(store_url, "repo_blobs") == 1
        assert await store.linked_blob("repo", digest) == BlobRecord(digest=digest, size=6)


# -- manifests --------------------------------------------------------------------------------


async def test_put_and_get_manifest_by_digest_and_tag(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        await store.ensure_repository("elsewhere", NOW)
        layer = await blob_in(store, repository_id, b"layer")
        record = manifest_record(b'{"schemaVersion":2}\xff\x00', annotations='{"a":"b"}')
        await store.put_manifest(repository_id, record, [Reference(layer, "blob")], "latest", NOW)
        got = await store.manifest("repo", digest=record.digest)
        assert got == record and type(got.payload) is bytes
        assert await store.manifest("repo", tag="latest") == record
        assert await store.manifest("repo", tag="other") is None
        assert await store.manifest("elsewhere", digest=record.digest) is None
        assert await store.manifest("elsewhere", tag="latest") is None
        assert await store.manifest("no/such", digest=record.digest) is None
        with pytest.raises(ValueError):
            await store.manifest("repo")
        with pytest.raises(ValueError):
            await store.manifest("repo", digest=record.digest, tag="latest")


async def test_put_manifest_is_idempotent_and_moves_tags(
    store: MetadataStore, store_url: str
) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        layer = await blob_in(store, repository_id, b"layer")
        refs = [Reference(layer, "blob"), Reference(layer, "blob")]  # same layer twice
        old, new = manifest_record(b"old"), manifest_record(b"new")
        await store.put_manifest(repository_id, old, refs, "latest", NOW)
        await store.put_manifest(repository_id, old, refs, None, NOW + 1)
        await store.put_manifest(repository_id, new, refs, "latest", NOW + 2)
        assert await store.manifest("repo", tag="latest") == new
        assert await store.manifest("repo", digest=old.digest) == old
        assert count_rows(store_url, "manifests") == 2
        assert count_rows(store_url, "manifest_references") == 2
        assert count_rows(store_url, "tags") == 1


async def test_concurrent_identical_pushes_all_succeed(
    store: MetadataStore, store_url: str
) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        layer = await blob_in(store, repository_id, b"layer")
        record = manifest_record(b"manifest")
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(
                    store.put_manifest,
                    repository_id,
                    record,
                    [Reference(layer, "blob")],
                    "v1",
                    NOW,
                )
        assert await store.manifest("repo", tag="v1") == record
        assert count_rows(store_url, "manifests") == 1
        assert count_rows(store_url, "manifest_references") == 1
        assert count_rows(store_url, "tags") == 1


async def test_delete_manifest_removes_its_tags_and_references(
    store: MetadataStore, store_url: str
) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        layer = await blob_in(store, repository_id, b"layer")
        doomed, kept = manifest_record(b"doomed"), manifest_record(b"kept")
        for tag in ("a", "b"):
            await store.put_manifest(repository_id, doomed, [Reference(layer, "blob")], tag, NOW)
        await store.put_manifest(repository_id, kept, [], "c", NOW)

        assert await store.delete_manifest(repository_id, doomed.digest) is True
        assert await store.delete_manifest(repository_id, doomed.digest) is False
        assert await store.manifest("repo", digest=doomed.digest) is None
        assert await store.manifest("repo", tag="a") is None
        assert await store.list_tags(repository_id, None, None) == ["c"]
        assert count_rows(store_url, "manifest_references") == 0
        # The blob stays linked: unlinking is garbage collection's business.
        assert await store.linked_blob("repo", layer) is not None
        # And the same manifest can be pushed again.
        await store.put_manifest(repository_id, doomed, [Reference(layer, "blob")], "a", NOW)
        assert await store.manifest("repo", tag="a") == doomed


async def test_delete_tag_keeps_the_manifest(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        record = manifest_record(b"m")
        await store.put_manifest(repository_id, record, [], "v1", NOW)
        assert await store.delete_tag(repository_id, "v1") is True
        assert await store.delete_tag(repository_id, "v1") is False
        assert await store.manifest("repo", tag="v1") is None
        assert await store.manifest("repo", digest=record.digest) == record


async def test_list_tags_bytewise_pages(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        other_id = await store.ensure_repository("other", NOW)
        record = manifest_record(b"m")
        await store.put_manifest(other_id, record, [], "zzz-other", NOW)
        for tag in NAMES:
            await store.put_manifest(repository_id, record, [], tag, NOW)
        assert await store.list_tags(repository_id, None, None) == BYTEWISE
        assert await store.list_tags(repository_id, 0, None) == []
        assert await store.list_tags(repository_id, 3, None) == ["B", "a", "a-b"]
        assert await store.list_tags(repository_id, 3, "a-b") == ["a/b", "b"]
        assert await store.list_tags(repository_id, None, "b") == []
        assert await store.list_tags(repository_id, 5, "zzz") == []
        assert await store.list_tags(other_id, None, None) == ["zzz-other"]


async def test_missing_references(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        other_id = await store.ensure_repository("other", NOW)
        linked = await blob_in(store, repository_id, b"linked")
        elsewhere = await blob_in(store, other_id, b"elsewhere")  # exists, not ours
        child = manifest_record(b"child")
        await store.put_manifest(repository_id, child, [Reference(linked, "blob")], None, NOW)
        foreign = manifest_record(b"foreign")
        await store.put_manifest(other_id, foreign, [], None, NOW)

        unknown = digest_of(b"unknown")
        references = [
            Reference(linked, "blob"),
            Reference(elsewhere, "blob"),
            Reference(child.digest, "manifest"),
            Reference(foreign.digest, "manifest"),
            Reference(unknown, "blob"),
            Reference(elsewhere, "blob"),
            Reference(child.digest, "blob"),  # a manifest is not a linked blob
        ]
        assert await store.missing_references(repository_id, references) == [
            Reference(elsewhere, "blob"),
            Reference(foreign.digest, "manifest"),
            Reference(unknown, "blob"),
        ]
        assert await store.missing_references(repository_id, []) == []
        assert await store.missing_references(repository_id, [Reference(linked, "blob")]) == []
        with pytest.raises(ValueError):
            await store.missing_references(repository_id, [Reference(linked, "config")])


async def test_referrers_filtered_and_ordered(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        other_id = await store.ensure_repository("other", NOW)
        subject = manifest_record(b"subject")
        await store.put_manifest(repository_id, subject, [], None, NOW)
        sboms = [
            manifest_record(f"sbom {i}".encode(), subject=subject.digest, artifact_type="sbom")
            for i in range(3)
        ]
        signature = manifest_record(
            b"signature", subject=subject.digest, artifact_type="sig", annotations='{"k":"v"}'
        )
        for record in [*sboms, signature]:
            await store.put_manifest(repository_id, record, [], None, NOW)
        foreign = manifest_record(b"x", subject=subject.digest, artifact_type="sbom")
        await store.put_manifest(other_id, foreign, [], None, NOW)
        await store.put_manifest(repository_id, manifest_record(b"unrelated"), [], None, NOW)

        everything = await store.referrers(repository_id, subject.digest, None)
        expected = sorted([*sboms, signature], key=lambda record: record.digest)
        assert [r.digest for r in everything] == [r.digest for r in expected]
        by_digest = {r.digest: r for r in everything}
        sig = by_digest[signature.digest]
        assert (sig.media_type, sig.size, sig.artifact_type, sig.annotations) == (
            signature.media_type,
            len(b"signature"),
            "sig",
            '{"k":"v"}',
        )
        only_sboms = await store.referrers(repository_id, subject.digest, "sbom")
        assert [r.digest for r in only_sboms] == sorted(r.digest for r in sboms)
        assert await store.referrers(repository_id, subject.digest, "none") == []
        assert await store.referrers(repository_id, digest_of(b"nothing"), None) == []


# -- what builds and metering read (through the registry domain) ----------------------------


async def test_tags_reaching_blob_sizes_and_stored_bytes(store: MetadataStore) -> None:
    repo_name = "acme/p1p1p1p1p1p1"
    with trio.fail_after(60):
        repo = await store.ensure_repository(repo_name, NOW)
        app = await store.ensure_repository("acme/app", NOW)
        other = await store.ensure_repository("other/app", NOW)
        acme0 = await store.ensure_repository("acme0/x", NOW)  # shares the prefix "acme"
        layers = [b"layer-one", b"layer-two!", b"shared-by-orgs"]
        for data in layers:
            await store.add_blob(digest_of(data), len(data), NOW)
        for repository_id, data in (
            (repo, layers[0]),
            (app, layers[0]),
            (app, layers[1]),
            (repo, layers[2]),
            (other, layers[2]),
            (acme0, layers[1]),
        ):
            await store.link_blob(repository_id, digest_of(data), NOW)
        child = ManifestRecord(
            digest_of(b"child"), "application/vnd.oci.image.manifest.v1+json", b"child"
        )
        index = ManifestRecord(
            digest_of(b"index!"), "application/vnd.oci.image.index.v1+json", b"index!"
        )
        await store.put_manifest(repo, child, [Reference(digest_of(layers[0]), "blob")], "c", NOW)
        await store.put_manifest(repo, index, [Reference(child.digest, "manifest")], "latest", NOW)
        await store.put_manifest(app, child, [Reference(digest_of(layers[0]), "blob")], None, NOW)

        assert sorted(await store.tags_reaching(repo_name, child.digest)) == [
            ("c", child.digest),
            ("latest", index.digest),
        ]
        assert await store.tags_reaching(repo_name, index.digest) == [("latest", index.digest)]
        assert await store.tags_reaching("acme/app", child.digest) == []
        sizes = await store.blob_sizes([digest_of(d) for d in layers] + [digest_of(b"missing")])
        assert sizes == {digest_of(d): len(d) for d in layers}
        assert await store.blob_sizes([]) == {}
        # Each blob once per org; the same manifest in two repositories once.
        assert await store.stored_bytes("acme") == 9 + 10 + 14 + 5 + 6
        assert await store.stored_bytes("other") == 14
        assert await store.stored_bytes("acme0") == 10
        assert await store.stored_bytes("nobody") == 0


# -- upload sessions --------------------------------------------------------------------------


async def test_upload_lifecycle_and_compare_and_set(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        await store.create_upload("u1", repository_id, NOW)
        assert await store.upload("u1") == UploadRecord("u1", "repo", 0, NOW, NOW)
        assert await store.upload("nope") is None

        assert await store.advance_upload("u1", 0, 10, NOW + 1) is True
        assert await store.advance_upload("u1", 0, 5, NOW + 2) is False  # stale
        assert await store.advance_upload("u1", 10, 25, NOW + 3) is True
        assert await store.upload("u1") == UploadRecord("u1", "repo", 25, NOW, NOW + 3)
        assert await store.advance_upload("nope", 0, 1, NOW) is False

        assert await store.delete_upload("u1") is True
        assert await store.delete_upload("u1") is False
        assert await store.upload("u1") is None


async def test_concurrent_advance_has_one_winner(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        await store.create_upload("u1", repository_id, NOW)
        results: list[bool] = []

        async def patch(new_size: int) -> None:
            results.append(await store.advance_upload("u1", 0, new_size, NOW + 1))

        async with trio.open_nursery() as nursery:
            for new_size in range(1, 9):
                nursery.start_soon(patch, new_size)
        assert sorted(results) == [False] * 7 + [True]


async def test_upload_constraints(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        await store.create_upload("u1", repository_id, NOW)
        with pytest.raises(DatabaseError):
            await store.create_upload("u1", repository_id, NOW)  # duplicate id
        with pytest.raises(DatabaseError):
            await store.create_upload("u2", repository_id + 1000, NOW)  # no such repository


async def test_expired_uploads(store: MetadataStore) -> None:
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("repo", NOW)
        await store.create_upload("old", repository_id, NOW)
        await store.create_upload("older", repository_id, NOW - 100)
        await store.create_upload("fresh", repository_id, NOW)
        await store.advance_upload("fresh", 0, 1, NOW + 50)
        assert await store.expired_uploads(NOW - 100) == []
        assert await store.expired_uploads(NOW + 1) == ["older", "old"]
        assert await store.expired_uploads(NOW + 51) == ["older", "old", "fresh"]


# -- lifecycle and sharing --------------------------------------------------------------------


async def test_state_survives_reopen(open_store: Callable[[], MetadataStore]) -> None:
    with trio.fail_after(20):
        first = open_store()
        repository_id = await first.ensure_repository("repo", NOW)
        layer = await blob_in(first, repository_id, b"layer")
        record = manifest_record(b"m")
        await first.put_manifest(repository_id, record, [Reference(layer, "blob")], "v1", NOW)
        await first.create_upload("u1", repository_id, NOW)
        first.database.close()

        second = open_store()
        assert await second.repository_id("repo") == repository_id
        assert await second.linked_blob("repo", layer) is not None
        assert await second.manifest("repo", tag="v1") == record
        assert await second.upload("u1") is not None


async def test_two_stores_write_one_database_concurrently(
    open_store: Callable[[], MetadataStore], store_url: str
) -> None:
    # Two stores stand in for two hypercorn workers: separate engines, pools and trio gates,
    # so on SQLite they contend through file locks, BEGIN IMMEDIATE and busy_timeout.
    with trio.fail_after(20):
        stores = [open_store(), open_store()]

        async def push(store: MetadataStore, n: int) -> None:
            repository_id = await store.ensure_repository("shared", NOW)
            layer = await blob_in(store, repository_id, b"common layer")
            mine = await blob_in(store, repository_id, f"layer {n}".encode())
            refs = [Reference(layer, "blob"), Reference(mine, "blob")]
            common, own = manifest_record(b"common"), manifest_record(f"{n}".encode())
            await store.put_manifest(repository_id, common, refs[:1], "c", NOW)
            await store.put_manifest(repository_id, own, refs, f"t{n}", NOW)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(push, stores[n % 2], n)

        assert await stores[0].list_repositories(None, None) == ["shared"]
        repository_id = await stores[1].repository_id("shared")
        assert repository_id is not None
        assert len(await stores[1].list_tags(repository_id, None, None)) == 21
        assert count_rows(store_url, "manifests") == 21
        assert count_rows(store_url, "repo_blobs") == 21


_WRITER_PROCESS = """
import sys, trio
from origin.metadata.database import Database
from origin.metadata.records import ManifestRecord
from origin.metadata.store import MetadataStore

async def main(store):
    repository_id = await store.ensure_repository("shared", 1.0)
    for n in range(40):
        payload = f"child {n}".encode()
        await store.put_manifest(
            repository_id, ManifestRecord(f"sha256:child{n:04}", "mt", payload), [], f"c{n}", 1.0
        )

database = Database.open(sys.argv[1])
try:
    trio.run(main, MetadataStore(database))
finally:
    database.close()
"""


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_another_process_writes_the_same_file(store: MetadataStore, store_url: str) -> None:
    # A real second process: SQLite file locks between processes, not just between connections.
    with trio.fail_after(20):
        repository_id = await store.ensure_repository("shared", NOW)

        async def write_here() -> None:
            for n in range(40):
                record = manifest_record(f"parent {n}".encode())
                await store.put_manifest(repository_id, record, [], f"p{n}", NOW)

        async with trio.open_nursery() as nursery:
            command = [sys.executable, "-c", _WRITER_PROCESS, store_url]
            nursery.start_soon(partial(trio.run_process, command, cwd=_PROJECT_ROOT))
            nursery.start_soon(write_here)
        assert len(await store.list_tags(repository_id, None, None)) == 80


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_postgres_names_compare_bytewise(store: MetadataStore, store_url: str) -> None:
    # The test database may already collate as "C"; check the columns carry it themselves.
    # (The tenancy tables of the same database have names of their own: not listings.)
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT table_name, collation_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND column_name = 'name'"
                    " AND table_name IN :tables"
                ).bindparams(sa.bindparam("tables", expanding=True)),
                {"tables": [table.name for table in registry_tables.sorted_tables]},
            ).all()
    finally:
        engine.dispose()
    assert sorted(rows) == [("repositories", "C"), ("tags", "C")]


async def test_closed_store_refuses_calls(store: MetadataStore) -> None:
    with trio.fail_after(20):
        store.database.close()
        with pytest.raises(DatabaseError):
            await store.repository_id("repo")
        with pytest.raises(DatabaseError):
            await store.linked_blob("repo", digest_of(b"x"))  # the inline path too
