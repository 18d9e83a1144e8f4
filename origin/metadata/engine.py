"""Engines of the origin's database: a reader and a writer per URL, and on SQLite an inline
reader for per-request key lookups.

Reads run in autocommit, one statement each, so a hot-path lookup is one round trip (no
BEGIN/ROLLBACK around it). Writes run in transactions:

* SQLite: several processes (hypercorn workers) may share the file. It is in WAL mode (readers
  never block the writer), connections wait for locks via ``busy_timeout``, and write
  transactions start with ``BEGIN IMMEDIATE``: pysqlite's deferred BEGIN takes a read lock and
  upgrades it on the first write, and two such upgrades deadlock into "database is locked". The
  reader and the writer are separate engines because the ``begin`` hook is per engine. The
  inline reader is a third engine of one connection with a short busy timeout: it runs on the
  event loop's thread, so while it waits, the whole process waits.
* PostgreSQL: READ COMMITTED writer; the reader is the same pool in autocommit, which psycopg
  switches client-side, with no round trip. ``lock_timeout`` plays the part of SQLite's busy
  timeout: a statement waiting longer than that for a row or table lock fails.

Failures are raised as SQLAlchemy errors; ``database.py`` translates them. An unusable URL is
a :class:`core.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from core.errors import ConfigError

#: The inline reader's busy timeout, at most: it stalls the event loop while it waits.
INLINE_BUSY_TIMEOUT_SECONDS = 1.5
# Serialises create_all between origins starting together on one PostgreSQL database.
_PG_SCHEMA_LOCK_KEY = 0x64_65_70_6F_74  # "depot"


@dataclass(frozen=True, slots=True)
class Engines:
    reader: sa.Engine
    writer: sa.Engine
    #: SQLite only: one connection for lookups run on the event loop's thread.
    inline: sa.Engine | None

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    def dispose(self) -> None:
        for engine in (self.reader, self.writer, self.inline):
            if engine is not None:
                engine.dispose()


def open_engines(url: str, *, pool_size: int, busy_timeout_seconds: float) -> Engines:
    """The engines for ``url`` (``sqlite:///path/to/file`` or ``postgresql+psycopg://…``); none
    connects yet. ``ConfigError`` for a URL this project cannot use."""
    try:
        parsed = sa.make_url(url)
        backend = parsed.get_backend_name()
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"database_url is not a database URL: {exc}") from exc
    try:
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                # The engines would each see their own empty database.
                raise ConfigError("the SQLite database must be a file, not an in-memory one")
            # One writer connection: writers of this process queue on the database's gate.
            return Engines(
                reader=_sqlite_engine(parsed, None, pool_size, busy_timeout_seconds),
                writer=_sqlite_engine(parsed, "BEGIN IMMEDIATE", 1, busy_timeout_seconds),
                inline=_sqlite_engine(
                    parsed, None, 1, min(busy_timeout_seconds, INLINE_BUSY_TIMEOUT_SECONDS)
                ),
            )
        if backend == "postgresql":
            writer = sa.create_engine(
                _with_lock_timeout(parsed, busy_timeout_seconds),
                pool_size=pool_size,
                max_overflow=0,
                hide_parameters=True,
            )
            return Engines(writer.execution_options(isolation_level="AUTOCOMMIT"), writer, None)
    except sa.exc.ArgumentError as exc:  # e.g. a driver that is not installed
        raise ConfigError(f"database_url cannot be used: {exc}") from exc
    raise ConfigError(f"unsupported database {backend!r} (sqlite or postgresql)")


def create_tables(engines: Engines, tables: Sequence[sa.MetaData]) -> None:
    """Create the missing tables of ``tables`` in one transaction (blocking)."""
    with engines.writer.begin() as conn:
        if engines.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK_KEY)))
        # On SQLite the IMMEDIATE transaction does the same for concurrent processes.
        for schema in tables:
            schema.create_all(conn)


def _with_lock_timeout(url: sa.URL, seconds: float) -> sa.URL:
    # Through libpq's ``options`` (set at connect, no extra round trip), kept beside any the
    # URL carries already (a search_path, say).
    setting = f"-c lock_timeout={max(1, round(seconds * 1000))}"
    given = url.query.get("options")
    given_text = given if isinstance(given, str) else " ".join(given or ())
    return url.update_query_dict({"options": f"{given_text} {setting}".strip()})


def _sqlite_engine(
    url: sa.URL, begin: str | None, pool_size: int, busy_timeout_seconds: float
) -> sa.Engine:
    """An engine on a SQLite file where SQLAlchemy, not pysqlite, emits BEGIN (the recipe in
    SQLAlchemy's SQLite docs). ``begin=None`` leaves connections in autocommit: each statement
    reads its own consistent snapshot."""
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        hide_parameters=True,  # manifests and upload ids never end up in error text or logs
        connect_args={"check_same_thread": False, "timeout": busy_timeout_seconds},
    )

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite must not BEGIN on its own
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")  # persistent in the file; no-op once set
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL, far faster
            cursor.execute("PRAGMA foreign_keys = ON")  # per connection, off by default
        finally:
            cursor.close()

    sa.event.listen(engine, "connect", on_connect)
    if begin is not None:

        def on_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql(begin)

        sa.event.listen(engine, "begin", on_begin)
    return engine
