"""The origin's event log on SQLite and PostgreSQL: appended by the stores' own transactions
(and only when they commit), sequence order equal to commit order under concurrent writers
in separate processes' databases, bounds, pruning, and the expiry pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
import trio
import trio.lowlevel

from core.errors import DatabaseError
from origin.auth.store import TenancyStore
from origin.builds.records import BoundImage, BuildRecord
from origin.builds.store import BuildStore
from origin.metadata.database import Database
from origin.metadata.events import TAG_MOVED, EventLog, append_event
from origin.metadata.records import ManifestRecord
from origin.metadata.store import MetadataStore

NOW = 1_700_000_000.0
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def manifest(digest: str) -> ManifestRecord:
    return ManifestRecord(digest, "application/vnd.oci.image.manifest.v1+json", b"{}")


async def test_store_changes_append_events_when_they_commit(database: Database) -> None:
    log, store, tenancy = EventLog(database), MetadataStore(database), TenancyStore(database)
    repository = await store.ensure_repository("acme/app", NOW)
    await store.put_manifest(repository, manifest(DIGEST_A), [], "v1", NOW)
    await store.put_manifest(repository, manifest(DIGEST_A), [], "v1", NOW)  # not moved
    assert await log.after(0, 10) == []
    woken = database.events_committed.current()
    await store.put_manifest(repository, manifest(DIGEST_B), [], "v1", NOW)
    assert woken.is_set()  # this process's pollers wake at the commit
    await store.delete_tag(repository, "v1")
    assert not await store.delete_tag(repository, "v1")  # nothing deleted: no event
    await store.put_manifest(repository, manifest(DIGEST_A), [], "latest", NOW)
    await store.delete_manifest(repository, DIGEST_A)
    org = await tenancy.create_org("acme", NOW)
    record, _ = await tenancy.create_token("pull", org_id=org.id, now=NOW)
    assert await tenancy.revoke_token(record.token_id, NOW)
    assert not await tenancy.revoke_token(record.token_id, NOW)
    await tenancy.set_public(org.id, "acme/app", True)
    await tenancy.set_public(org.id, "acme/app", True)  # unchanged: no event
    found = [event.document() for event in await log.after(0, 100)]
    assert [(e["kind"], e.get("tag") or e.get("digest") or e.get("token")) for e in found] == [
        ("tag.moved", "v1"),
        ("tag.deleted", "v1"),
        ("tag.deleted", "latest"),
        ("manifest.deleted", DIGEST_A),
        ("token.revoked", record.token_id),
        ("repository.visibility", None),
    ]
    assert found[0]["previous"] == DIGEST_A and found[0]["digest"] == DIGEST_B
    assert [e["seq"] for e in found] == sorted(e["seq"] for e in found)
    assert not await tenancy.token_in_force(record.token_id, NOW)

    # A transaction that fails after appending leaves no event.
    before = (await log.bounds()).last

    def append_then_fail(conn: sa.Connection) -> None:
        append_event(conn, TAG_MOVED, NOW, repository="acme/app", subject="x")
        conn.execute(sa.text("SELECT * FROM no_such_table"))

    with pytest.raises(DatabaseError):
        await database.write(append_then_fail)
    assert (await log.bounds()).last == before


async def test_sequence_order_is_commit_order_across_processes(
    open_database: Callable[[], Database],
) -> None:
    """Appenders of two databases (two processes) and a reader that keeps asking for what
    follows the last sequence it saw: it sees every event, none skipped."""
    writers = [open_database(), open_database()]
    reader = EventLog(open_database())
    per_writer = 40
    seen: list[int] = []

    async def append(database: Database, index: int) -> None:
        for n in range(per_writer):
            await database.write(
                lambda conn, n=n: append_event(
                    conn, TAG_MOVED, NOW, repository="acme/app", subject=f"w{index}-{n}"
                )
            )

    async def follow(done: trio.Event) -> None:
        last = 0
        while True:
            finished = done.is_set()
            batch = await reader.after(last, 7)
            seen.extend(event.seq for event in batch)
            if batch:
                last = batch[-1].seq
            elif finished:
                return
            await trio.lowlevel.checkpoint()

    with trio.fail_after(60):
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, done)
            async with trio.open_nursery() as appenders:
                for index, database in enumerate(writers):
                    appenders.start_soon(append, database, index)
            done.set()
    everything = [event.seq for event in await reader.after(0, 1000)]
    assert len(everything) == 2 * per_writer
    assert seen == everything  # in order, nothing skipped by the follower


async def test_bounds_prune_and_expiries(database: Database) -> None:
    log, tenancy, builds = EventLog(database), TenancyStore(database), BuildStore(database)
    assert (await log.bounds()).last == 0
    org = await tenancy.create_org("acme", NOW - 100)
    expiring, _ = await tenancy.create_token(
        "pull", org_id=org.id, expires_at=NOW + 10, now=NOW - 100
    )
    lasting, _ = await tenancy.create_token("pull", org_id=org.id, now=NOW - 100)
    build = BuildRecord(
        id="aaaaaaaaaaaa",
        project_id="p1p1p1p1p1p1",
        org_slug="acme",
        repository="acme/p1p1p1p1p1p1",
        created_at=NOW - 100,
        expires_at=NOW + 20,
        save_tags=("main",),
    )
    await builds.create_build(build)
    media_type = "application/vnd.oci.image.manifest.v1+json"
    bound = BoundImage(DIGEST_A, media_type, (), 10, frozenset({DIGEST_A}))
    assert await builds.bind(build.id, bound, NOW - 50)
    assert await log.record_expiries(NOW, 3600) == 0  # nothing expired yet
    assert await tenancy.token_in_force(expiring.token_id, NOW)
    assert await log.record_expiries(NOW + 30, 3600) == 2
    assert await log.record_expiries(NOW + 40, 3600) == 0  # recorded once
    assert not await tenancy.token_in_force(expiring.token_id, NOW + 30)
    assert await tenancy.token_in_force(lasting.token_id, NOW + 30)
    found = [event.document() for event in await log.after(0, 10)]
    assert [(e["kind"], e.get("token") or e.get("build")) for e in found] == [
        ("token.expired", expiring.token_id),
        ("build.expired", build.id),
    ]
    assert found[1]["tags"] == [build.id, "main"] and found[1]["manifests"] == [DIGEST_A]
    assert found[1]["repository"] == build.repository
    # Deleted after it expired: an event of its own.
    assert await builds.delete_build(build.id, NOW + 50)
    assert (await log.after(found[-1]["seq"], 10))[0].kind == "build.deleted"

    last = (await log.bounds()).last
    assert await log.prune(older_than=NOW + 35, keep_at_most=100) == 2
    assert await log.bounds() == type(await log.bounds())(found[-1]["seq"], last)
    assert await log.prune(older_than=0, keep_at_most=0) == 1
    bounds = await log.bounds()
    assert bounds.pruned_through == bounds.last == last and await log.after(0, 10) == []
    # A pruned maximum is never handed out again.
    await database.write(lambda conn: append_event(conn, TAG_MOVED, NOW, subject="v9"))
    assert [event.seq for event in await log.after(0, 10)] == [last + 1]


async def test_deletions_by_garbage_collection_and_unlinking_are_events(
    database: Database,
) -> None:
    log, store = EventLog(database), MetadataStore(database)
    repository = await store.ensure_repository("acme/app", NOW)
    for blob in (DIGEST_A, DIGEST_B):
        await store.add_blob(blob, 3, NOW)
        await store.link_blob(repository, blob, NOW)
    await store.put_manifest(repository, manifest("sha256:" + "c" * 64), [], None, NOW)
    removed: list[str] = []

    async def remove() -> None:
        removed.append("bytes")

    assert await store.unlink_blob(repository, DIGEST_A)
    assert await store.collect_link(repository, DIGEST_B, NOW + 1)
    assert await store.collect_blob(DIGEST_B, NOW + 1, NOW + 2, remove) == 3
    assert await store.collect_manifest(repository, "sha256:" + "c" * 64, NOW + 1)
    found = [event.document() for event in await log.after(0, 10)]
    assert [(e["kind"], e.get("repository"), e["digest"]) for e in found] == [
        ("blob.deleted", "acme/app", DIGEST_A),
        ("blob.deleted", "acme/app", DIGEST_B),
        ("blob.deleted", None, DIGEST_B),  # from the content store: every repository
        ("manifest.deleted", "acme/app", "sha256:" + "c" * 64),
    ]
    assert removed == ["bytes"]
