"""A failing metadata database, seen by clients of a real origin: 503 ``UNAVAILABLE`` with
``Retry-After`` on ``/v2``, ``/token`` and ``/api/v1`` (never a 500), and the origin serving
again once the database recovers.

Failures made for real: a SQLite file locked by another process past the busy timeout, a
SQLite database that is full (``max_page_count``, which raises SQLITE_FULL as a full disk
does), a PostgreSQL lock held past ``lock_timeout``, and PostgreSQL sessions ended by the server
(``pg_terminate_backend``, as a restart or a failover ends them).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import trio
from sqlalchemy.pool import Pool

from tests.integration.oci import (
    assert_error,
    index_manifest,
    new_image,
    push_manifest,
    put_manifest,
)
from tests.integration.tenants import Tenants, basic, bearer_for, exchange, start_tenants
from tests.postgres import fresh_schema, require_postgres, terminate_sessions

TIMEOUT = 60
#: Short, so that a lock held by the test outlasts it at once.
BUSY_TIMEOUT_SECONDS = 0.5
Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def assert_unavailable(response: httpx.Response) -> None:
    """503, the OCI envelope naming UNAVAILABLE, and when to retry; nothing about the
    database leaks into the message."""
    entry = assert_error(response, 503, "UNAVAILABLE")
    assert response.headers["Retry-After"].isdigit(), response.headers
    assert "sqlite" not in response.text.lower() and "psycopg" not in response.text.lower()
    assert entry["message"]


def client(tenants: Tenants) -> httpx.AsyncClient:
    headers = {**basic(tenants.acme), "Accept-Encoding": "identity"}
    return httpx.AsyncClient(base_url=tenants.url, trust_env=False, timeout=30, headers=headers)


async def start(nursery: trio.Nursery, data_dir: Path, **overrides: Any) -> Tenants:
    tenants = await start_tenants(nursery, data_dir, **overrides)
    async with client(tenants) as http:  # warm: acme's token is used (its touch written)
        assert (await http.get("/api/v1/orgs/acme")).status_code == 200
    return tenants


@pytest.fixture
async def sqlite_tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    tenants = await start(
        nursery, tmp_path / "data", database_busy_timeout_seconds=BUSY_TIMEOUT_SECONDS
    )
    yield tenants
    tenants.origin.shutdown.set()
    tenants.store.close()


@pytest.fixture
async def postgres_tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    with fresh_schema(require_postgres()) as url:
        # The origin's sessions carry a name of their own, for pg_stat_activity.
        application = f"depot-origin-{uuid.uuid4().hex[:12]}"
        tenants = await start(
            nursery,
            tmp_path / "data",
            database_url=f"{url}&application_name={application}",
            database_busy_timeout_seconds=BUSY_TIMEOUT_SECONDS,
        )
        yield tenants
        tenants.origin.shutdown.set()
        tenants.store.close()


# -- what each path asks of the database ------------------------------------------------------


async def start_upload(http: httpx.AsyncClient) -> httpx.Response:  # /v2: writes
    return await http.post("/v2/acme/app/blobs/uploads/")


async def create_project(http: httpx.AsyncClient) -> httpx.Response:  # /api/v1: writes
    return await http.post("/api/v1/orgs/acme/projects", json={"name": "web"})


async def list_orgs(http: httpx.AsyncClient) -> httpx.Response:  # /api/v1: reads
    return await http.get("/api/v1/orgs")


def exchange_token(token: str) -> Request:
    """``/token`` (the token is looked up; its first use is written, ``last_used_at``)."""

    async def request(http: httpx.AsyncClient) -> httpx.Response:
        return await exchange(http, token, "repository:acme/app:pull")

    return request


def get_manifest(tag: str, headers: dict[str, str] | None = None) -> Request:  # /v2: reads
    """With ``headers`` (a bearer token) the gate reads nothing: only the manifest is read."""

    async def request(http: httpx.AsyncClient) -> httpx.Response:
        return await http.get(f"/v2/acme/app/manifests/{tag}", headers=headers)

    return request


# -- SQLite -----------------------------------------------------------------------------------


@contextmanager
def write_locked(data_dir: Path) -> Iterator[None]:
    """A write transaction of another connection (as of another process) on the origin's
    SQLite file, held until exit."""
    holder = sqlite3.connect(data_dir / "registry.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


async def test_sqlite_locked_past_the_busy_timeout(sqlite_tenants: Tenants) -> None:
    tenants = sqlite_tenants
    data_dir = tenants.origin.settings.data_dir
    with trio.fail_after(TIMEOUT):
        async with client(tenants) as http:
            await push_manifest(http, "acme/app", new_image(), "v1")
            _, unused = await tenants.store.create_token("pull", org_id=tenants.acme_id, now=1e9)
            writes = [
                (start_upload, 202),
                (create_project, 201),
                (exchange_token(unused), 200),
            ]
            with write_locked(data_dir):
                for request, _ in writes:
                    assert_unavailable(await request(http))
                # WAL readers never wait for a writer: pulls go on meanwhile.
                assert (await get_manifest("v1")(http)).status_code == 200
            for request, status in writes:
                response = await request(http)
                assert response.status_code == status, response.text


@contextmanager
def page_limit(data_dir: Path) -> Iterator[Callable[[bool], None]]:
    """A switch making the origin's SQLite database full: with it on, the database may not
    grow by a page (SQLITE_FULL, as on a full disk). ``max_page_count`` is a setting of each
    connection, so it is set on every connection of this process to that file as it leaves
    its pool; the switch stays installed until exit so that turning it off reaches them too."""
    path = (data_dir / "registry.db").resolve()
    unlimited = 2**32 - 2  # SQLite lowers it to its own maximum
    limit = [unlimited]

    def switch(full: bool) -> None:
        with sqlite3.connect(path) as conn:
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        limit[0] = pages if full else unlimited

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            files = dbapi_connection.execute("PRAGMA database_list").fetchall()
            if files and files[0][2] == str(path):
                dbapi_connection.execute(f"PRAGMA max_page_count = {limit[0]}")

    sa.event.listen(Pool, "checkout", on_checkout)
    try:
        yield switch
    finally:
        sa.event.remove(Pool, "checkout", on_checkout)


async def test_sqlite_full(sqlite_tenants: Tenants) -> None:
    tenants = sqlite_tenants
    # Each write needs new pages: a manifest of ~24 KiB, a trust of ~24 KiB of conditions.
    big = {f"org.example.{i}": "x" * 1000 for i in range(24)}
    manifest = index_manifest([], annotations=big)

    async def push(http: httpx.AsyncClient) -> httpx.Response:
        return await put_manifest(http, "acme/app", "big", manifest)

    async def trust(http: httpx.AsyncClient) -> httpx.Response:
        document = {
            "issuer": "https://token.actions.githubusercontent.com",
            "audience": "depot",
            "conditions": big,
            "actions": ["pull"],
        }
        return await http.post("/api/v1/orgs/acme/trust-relationships", json=document)

    with trio.fail_after(TIMEOUT), page_limit(tenants.origin.settings.data_dir) as full:
        async with client(tenants) as http:
            full(True)
            for request in (push, trust):
                assert_unavailable(await request(http))
            assert (await list_orgs(http)).status_code == 200  # reads go on
            full(False)
            for request in (push, trust):
                response = await request(http)
                assert response.status_code == 201, response.text
            assert (await get_manifest("big")(http)).content == manifest.payload


# -- PostgreSQL -------------------------------------------------------------------------------


@contextmanager
def tables_locked(url: str, *tables: str) -> Iterator[None]:
    """Another session holding ``tables`` exclusively (no reads, no writes) until exit."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        engine.dispose()


async def reads_and_writes(http: httpx.AsyncClient, tenants: Tenants) -> list[tuple[Request, int]]:
    """A request per path, with the status each answers when the database is well: a manifest
    GET with a bearer token (the gate reads nothing), a token exchange, an org listing, an
    upload start."""
    await push_manifest(http, "acme/app", new_image(), "v1")
    pull = await bearer_for(http, tenants.acme, "repository:acme/app:pull")
    return [
        (get_manifest("v1", pull), 200),
        (exchange_token(tenants.acme), 200),
        (list_orgs, 200),
        (start_upload, 202),
    ]


async def test_postgres_lock_held_past_the_lock_timeout(postgres_tenants: Tenants) -> None:
    tenants = postgres_tenants
    with trio.fail_after(TIMEOUT):
        async with client(tenants) as http:
            requests = await reads_and_writes(http, tenants)
            tables = ("tokens", "manifests", "uploads")
            with tables_locked(tenants.origin.settings.database_url, *tables):
                for request, _ in requests:
                    assert_unavailable(await request(http))
            for request, status in requests:
                response = await request(http)
                assert response.status_code == status, response.text


async def test_postgres_connection_lost(postgres_tenants: Tenants) -> None:
    tenants = postgres_tenants
    url = sa.make_url(tenants.origin.settings.database_url)
    application = str(url.query["application_name"])
    with trio.fail_after(TIMEOUT):
        async with client(tenants) as http:
            for request, status in await reads_and_writes(http, tenants):
                server = url.difference_update_query(["application_name"])
                assert terminate_sessions(server.render_as_string(False), application) >= 1
                # The request that meets the dead connection fails; the pool reconnects.
                assert_unavailable(await request(http))
                response = await request(http)
                assert response.status_code == status, response.text
