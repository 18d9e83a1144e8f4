"""Fixtures for the contract suites: every SQL store runs on SQLite and on PostgreSQL; the
S3 storage driver runs against a real S3 server (moto, started once per session).

PostgreSQL (127.0.0.1:5432, database ``test``) is a real peer: absent, its tests skip on a
laptop and fail in CI (``CI=true``). Each test gets a schema of its own, dropped after. moto
comes with the test extras; each S3 test gets a bucket of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.storage.location import S3Location
from tests.s3server import S3Server, create_bucket, moto_server, require_moto

_PG_CANDIDATES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)


@pytest.fixture(scope="session")
def postgres_url() -> str | None:
    """A URL on which PostgreSQL answers, or None."""
    for url in _PG_CANDIDATES:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                return url
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if postgres_url is None:
        message = "PostgreSQL is not reachable on 127.0.0.1:5432 (database test)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    schema = f"contract_{uuid.uuid4().hex}"
    admin = sa.create_engine(postgres_url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()


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
