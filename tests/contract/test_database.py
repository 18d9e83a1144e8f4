"""Contract of the origin's one database object: one write gate for every store built on it,
inline lookups on a connection of their own, and every failure a DatabaseError.

Run on SQLite (a file) and PostgreSQL like the stores' suites (``conftest.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio
import trio.testing

from core.errors import DatabaseError, InputError
from origin.auth.store import TenancyStore
from origin.builds.store import BuildStore
from origin.metadata.database import Database, first
from origin.metadata.store import MetadataStore
from tests.postgres import terminate_sessions

NOW = 1_700_000_000.0


def _busy_timeout(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one())


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_inline_lookups_wait_briefly_for_locks(store_url: str) -> None:
    # They run on the event loop's thread: the whole process waits while they do.
    database = Database.open(store_url, busy_timeout_seconds=30)
    try:
        with trio.fail_after(20):
            row = await database.lookup(sa.text("PRAGMA busy_timeout"))
            assert row is not None and row[0] == 1500
            assert await database.read(_busy_timeout) == 30_000

            def in_transaction(conn: sa.Connection) -> int:
                return _busy_timeout(conn)

            assert await database.write(in_transaction) == 30_000
    finally:
        database.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_every_store_writes_through_one_writer(store_url: str) -> None:
    # Busy timeout 0: a writer reaching SQLite while another transaction holds the file fails
    # at once with "database is locked" (as stores with engines of their own did). Writers of
    # the three stores on one database wait their turn instead: the write gate, and behind it
    # the one writer connection.
    database = Database.open(store_url, busy_timeout_seconds=0)
    try:
        metadata, tenancy, builds = (
            MetadataStore(database),
            TenancyStore(database),
            BuildStore(database),
        )
        holding, release = trio.Event(), trio.Event()
        finished: list[str] = []

        def hold(conn: sa.Connection) -> None:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
            trio.from_thread.run_sync(holding.set)
            trio.from_thread.run(release.wait)

        async def write(what: str, fn: Callable[[], Awaitable[object]]) -> None:
            await fn()
            finished.append(what)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(database.write, hold)
                await holding.wait()
                nursery.start_soon(write, "org", lambda: tenancy.create_org("acme", NOW))
                nursery.start_soon(write, "repo", lambda: metadata.ensure_repository("a/b", NOW))
                nursery.start_soon(
                    write, "ttl", lambda: builds.set_retention("org_a", None, 60.0, NOW)
                )
                await trio.testing.wait_all_tasks_blocked()
                assert finished == []  # all three wait for the transaction in progress
                release.set()
        assert sorted(finished) == ["org", "repo", "ttl"]
        assert await tenancy.org_by_slug("acme") is not None
    finally:
        database.close()


async def test_failures_are_database_errors_and_the_database_goes_on(
    database: Database,
) -> None:
    missing = sa.text("SELECT x FROM no_such_table WHERE x = 1")

    def write_missing(conn: sa.Connection) -> None:
        conn.execute(sa.text("INSERT INTO no_such_table VALUES (1)"))

    with trio.fail_after(20):
        with pytest.raises(DatabaseError, match="no_such_table"):
            await database.lookup(missing)  # the inline path on SQLite
        with pytest.raises(DatabaseError, match="no_such_table"):
            await database.read(first, missing, {})
        with pytest.raises(DatabaseError, match="no_such_table"):
            await database.write(write_missing)
        assert await MetadataStore(database).ensure_repository("still/works", NOW) > 0


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_a_lost_postgres_connection_fails_one_call(store_url: str) -> None:
    # The server ends every session of this database object (a restart, a failover, an
    # operator's pg_terminate_backend): the next call fails, the pool reconnects after it.
    application = f"depot-test-{uuid.uuid4().hex[:12]}"
    url = f"{store_url}&application_name={application}"
    database = Database.open(url)
    store = MetadataStore(database)
    try:
        with trio.fail_after(20):
            assert await store.ensure_repository("a/b", NOW) > 0
            assert terminate_sessions(store_url, application) >= 1
            with pytest.raises(DatabaseError):
                await store.repository_id("a/b")
            assert await store.repository_id("a/b") is not None
    finally:
        database.close()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_a_postgres_lock_held_too_long_is_a_database_error(store_url: str) -> None:
    # lock_timeout is PostgreSQL's busy timeout.
    database = Database.open(store_url, busy_timeout_seconds=0.2)
    store = MetadataStore(database)
    admin = sa.create_engine(store_url)
    try:
        with trio.fail_after(20):
            with admin.begin() as conn:
                conn.exec_driver_sql("LOCK TABLE repositories IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(DatabaseError, match="lock timeout"):
                    await store.repository_id("a/b")
            assert await store.repository_id("a/b") is None
    finally:
        admin.dispose()
        database.close()


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "mysql://x@localhost/db", "not a url"]
)
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(InputError):
        Database.open(url)


def test_a_missing_directory_is_a_database_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError):
        Database.open(f"sqlite:///{tmp_path / 'missing-dir' / 'metadata.db'}")


async def test_one_process_at_a_time_runs_a_named_pass(
    store_url: str, open_database: Callable[[], Database]
) -> None:
    """``exclusive``: the holder runs, every other try (another origin on PostgreSQL; this
    process on SQLite, which means one host) is refused at once, and it is free again after."""
    first_db = open_database()
    # PostgreSQL: another origin (its own engines); SQLite: the same process.
    other = open_database() if store_url.startswith("postgresql") else first_db
    with trio.fail_after(20):
        async with first_db.exclusive("garbage-collection") as mine:
            assert mine
            async with other.exclusive("garbage-collection") as theirs:
                assert not theirs
            async with other.exclusive("upload-sweep") as different:
                assert different  # another pass is another lock
        async with other.exclusive("garbage-collection") as theirs:
            assert theirs
