"""Fixtures for the contract suites: every SQL store runs on SQLite and on PostgreSQL; the
S3 storage driver runs against a real S3 server (moto, started once per session).

PostgreSQL (127.0.0.1:5432, database ``test``) is a real peer: absent, its tests skip on a
laptop and fail in CI (``CI=true``). Each test gets a schema of its own, dropped after.

Stores are built on a :class:`Database` opened once per test (``database``); a test that plays
several processes opens more with ``open_database`` (each its own engines and write gate).

The S3 storage driver runs against moto (from the test extras); each S3 test gets a bucket
of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.storage.location import S3Location
from origin.metadata.database import Database
from tests.postgres import fresh_schema, require_postgres
from tests.s3server import S3Server, create_bucket, moto_server, require_moto


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_schema(require_postgres()) as url:
        yield url


@pytest.fixture
def open_database(store_url: str) -> Iterator[Callable[[], Database]]:
    """Opens databases on this test's URL, as separate processes would; closes them all at
    the end."""
    opened: list[Database] = []

    def open_one() -> Database:
        opened.append(Database.open(store_url))
        return opened[-1]

    yield open_one
    for database in opened:
        database.close()


@pytest.fixture
def database(open_database: Callable[[], Database]) -> Database:
    return open_database()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto server (a real S3 REST endpoint on 127.0.0.1) for the whole session."""
    require_moto()
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_location(s3_server: S3Server) -> Iterator[S3Location]:
    """A fresh bucket on the shared moto server; everything is forgotten after the test."""
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    create_bucket(s3_server, bucket)
    yield S3Location(bucket=bucket, endpoint=s3_server.endpoint)
    s3_server.reset()  # moto keeps objects in memory: free them
