"""PostgreSQL on 127.0.0.1:5432 (database ``test``) as a real peer of the tests.

Absent, its tests skip on a laptop and fail in CI (``CI=true``), like the programs of
``peers.py``. Each user gets a schema of its own (through ``search_path`` in the URL), dropped
afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import pytest
import sqlalchemy as sa

_CANDIDATES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)


@cache
def postgres_url() -> str | None:
    """A URL on which PostgreSQL answers, or None."""
    for url in _CANDIDATES:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                return url
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    return None


def require_postgres() -> str:
    """The server's URL, or skip (fail on CI) without one."""
    url = postgres_url()
    if url is None:
        message = "PostgreSQL is not reachable on 127.0.0.1:5432 (database test)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url


@contextmanager
def fresh_schema(server_url: str) -> Iterator[str]:
    """A URL whose tables live in a new, empty schema; the schema is dropped on exit, a
    failed test's too (else every failure leaves one behind in the shared database)."""
    schema = f"contract_{uuid.uuid4().hex}"
    admin = sa.create_engine(server_url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{server_url}?options=-csearch_path%3D{schema}"
        finally:
            with admin.begin() as conn:
                # A session a failed test left holding a lock must not hang the run.
                conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()


def terminate_sessions(server_url: str, application_name: str) -> int:
    """End every session whose ``application_name`` is given, as a server restart or a
    failover would; the number ended."""
    admin = sa.create_engine(server_url)
    try:
        with admin.connect() as conn:
            ended = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": application_name},
            ).scalar_one()
        return int(ended)
    finally:
        admin.dispose()
