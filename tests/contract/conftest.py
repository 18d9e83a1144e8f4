"""Fixtures for the contract suites: every SQL store runs on SQLite and on PostgreSQL.

PostgreSQL (127.0.0.1:5432, database ``test``) is a real peer: absent, its tests skip on a
laptop and fail in CI (``CI=true``). Each test gets a schema of its own, dropped after.

Stores are built on a :class:`Database` opened once per test (``database``); a test that plays
several processes opens more with ``open_database`` (each its own engines and write gate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from origin.metadata.database import Database
from tests.postgres import fresh_schema, require_postgres


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
