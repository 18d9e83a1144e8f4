"""Engines for the metadata store: a reader and a writer per database URL.

Reads run in autocommit, one statement each, so a hot-path lookup is one round trip (no
BEGIN/ROLLBACK around it). Writes run in transactions:

* SQLite: several processes (hypercorn workers) may share the file. It is in WAL mode (readers
  never block the writer), connections wait for locks via ``busy_timeout``, and write
  transactions start with ``BEGIN IMMEDIATE``: pysqlite's deferred BEGIN takes a read lock and
  upgrades it on the first write, and two such upgrades deadlock into "database is locked". The
  reader and the writer are separate engines because the ``begin`` hook is per engine.
* PostgreSQL: READ COMMITTED writer; the reader is the same pool in autocommit, which psycopg
  switches client-side, with no round trip.

Errors are raised as SQLAlchemy errors; ``store.py`` translates them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from origin.metadata.schema import metadata

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
# Serialises create_all between origins starting together on one PostgreSQL database.
_PG_SCHEMA_LOCK_KEY = 0x64_65_70_6F_74  # "depot"


def open_engines(
    url: str, *, pool_size: int, tables: sa.MetaData = metadata
) -> tuple[sa.Engine, sa.Engine]:
    """``(reader, writer)`` for ``url``; the tables of ``tables`` (by default the metadata
    store's) exist when this returns.

    Raises ``ValueError`` for a URL this store cannot use.
    """
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # The reader and the writer would each see their own empty database.
            raise ValueError("the SQLite metadata store needs a file, not an in-memory database")
        # One writer connection: writers of this process queue on the store's trio gate.
        writer = _sqlite_engine(parsed, begin="BEGIN IMMEDIATE", pool_size=1)
        reader = _sqlite_engine(parsed, begin=None, pool_size=pool_size)
    elif backend == "postgresql":
        writer = sa.create_engine(parsed, pool_size=pool_size, max_overflow=0, hide_parameters=True)
        reader = writer.execution_options(isolation_level="AUTOCOMMIT")
    else:
        raise ValueError(f"unsupported metadata database {backend!r} (sqlite or postgresql)")
    try:
        with writer.begin() as conn:
            if backend == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK_KEY)))
            # On SQLite the IMMEDIATE transaction does the same for concurrent processes.
            tables.create_all(conn)
    except BaseException:
        reader.dispose()
        writer.dispose()
        raise
    return reader, writer


def _sqlite_engine(url: sa.URL, *, begin: str | None, pool_size: int) -> sa.Engine:
    """An engine on a SQLite file where SQLAlchemy, not pysqlite, emits BEGIN (the recipe in
    SQLAlchemy's SQLite docs). ``begin=None`` leaves connections in autocommit: each statement
    reads its own consistent snapshot."""
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        hide_parameters=True,  # manifests and upload ids never end up in error text or logs
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    )

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite must not BEGIN on its own
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
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
