"""The origin's database: one object per process, shared by every store built on it.

:class:`Database` owns the engines (``engine.py``), creates every table of the origin once
(the registry's ``origin/metadata/schema.py``, the tenancy's ``origin/auth/schema.py``, the
builds' ``origin/builds/schema.py``, the orgs' upstreams' ``origin/upstreams/schema.py``,
the event log's ``origin/metadata/event_schema.py``), and runs all SQL of the process:

* blocking calls run in worker threads through ``trio.to_thread.run_sync`` with one
  ``CapacityLimiter`` (:meth:`Database.read`, :meth:`Database.write`);
* writes take one write gate first: on SQLite a gate of one, so the writers of this process
  queue on trio instead of spinning in SQLite's busy handler against each other (other
  processes are still waited for through ``busy_timeout``). The metadata, tenancy and builds
  stores share it, so there is one writer per process, whichever store writes;
* :meth:`Database.lookup` is the per-request read of one row by its primary key or a unique
  index. On SQLite it runs inline, on the event loop's thread, through a connection of its
  own with a short busy timeout (an indexed WAL read took ~50 µs here while the thread hop
  around it cost ~180 µs, which capped manifest GETs at ~800 requests/s per process; WAL
  readers never wait for writers, and only a lock such as crash recovery's can stall one).
  Anything else, a scan or a range, goes through the thread limiter. PostgreSQL lookups take
  the thread pool too.

A write transaction that appended events (``origin/metadata/events.py``) sets
:attr:`Database.events_committed` once it has committed: the event feed's long polls wake.

Every SQLAlchemy error leaves as :class:`core.errors.DatabaseError` with the driver's message
only (no SQL, no parameters): a locked file past the busy timeout, a lost connection, a full
disk, a violated constraint, and any call after :meth:`Database.close`. The web layer answers
those with 503 ``UNAVAILABLE`` and ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar, TypeVarTuple

import sqlalchemy as sa
import trio

from core.errors import DatabaseError
from origin.auth.schema import tenancy_metadata
from origin.builds.schema import builds_metadata
from origin.metadata.engine import Engines, create_tables, open_engines
from origin.metadata.event_schema import events_metadata
from origin.metadata.event_signal import EventSignal
from origin.metadata.schema import metadata as registry_metadata
from origin.upstreams.schema import upstreams_metadata

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Row = sa.Row[*tuple[Any, ...]]

#: Worker threads (and PostgreSQL connections) of one process, for every store together.
DEFAULT_MAX_THREADS = 16
#: How long a statement waits for a lock (SQLite's busy timeout, PostgreSQL's lock_timeout).
DEFAULT_BUSY_TIMEOUT_SECONDS = 30.0
#: Every table of the origin, created together by :meth:`Database.open`.
TABLES = (
    registry_metadata,
    tenancy_metadata,
    builds_metadata,
    upstreams_metadata,
    events_metadata,
)
#: Set in a write connection's ``info`` by ``events.append_event``: the commit wakes pollers.
EVENTS_APPENDED = "depot.events_appended"


def describe(exc: sa.exc.SQLAlchemyError) -> str:
    # The driver's own message ("database is locked"), without SQL text or parameters.
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {str(exc.orig).splitlines()[0]}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(describe(exc)) from exc


class Database:
    """One engine pair (and the inline reader on SQLite), one write gate, one thread limiter."""

    def __init__(self, engines: Engines, *, max_threads: int) -> None:
        self._engines = engines
        self.dialect = engines.dialect
        sqlite = self.dialect == "sqlite"
        self._limiter = trio.CapacityLimiter(max_threads)
        self._write_gate = trio.CapacityLimiter(1 if sqlite else max_threads)
        self._closed = False
        #: Told ``(operation, seconds)`` after each lookup, read and write (the metrics).
        self.observe: Callable[[str, float], None] | None = None
        #: Set after each commit that appended events (``origin/metadata/events.py``).
        self.events_committed = EventSignal()
        self._running_here: set[str] = set()  # SQLite: the passes this process runs

    @classmethod
    def open(
        cls,
        url: str,
        *,
        max_threads: int = DEFAULT_MAX_THREADS,
        busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
    ) -> Database:
        """Connect to ``url`` (``sqlite:///path/to/file`` or ``postgresql+psycopg://…``) and
        create the missing tables. Blocking: call it at start-up, before serving.

        Raises ``ConfigError`` for an unusable URL, :class:`DatabaseError` if the database
        fails.
        """
        engines = open_engines(
            url, pool_size=max_threads, busy_timeout_seconds=busy_timeout_seconds
        )
        try:
            with _translated():
                create_tables(engines, TABLES)
        except BaseException:
            engines.dispose()
            raise
        return cls(engines, max_threads=max_threads)

    def close(self) -> None:
        """Close every pooled connection; every call afterwards raises DatabaseError."""
        self._closed = True
        self._engines.dispose()

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseError("the database is closed")

    async def _in_thread(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        self._check_open()
        with _translated():
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # -- reads ----------------------------------------------------------------------------

    async def read(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        """``fn(conn, *args)`` on an autocommit reader connection, in a worker thread: each
        statement reads the latest committed state."""
        with self._timed("read"):
            return await self._in_thread(self._read_with, fn, *args)

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        if self.observe is None:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(operation, time.perf_counter() - started)

    def _read_with(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        with self._engines.reader.connect() as conn:
            return fn(conn, *args)

    async def lookup(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> Row | None:
        """The one row ``stmt`` finds by a primary key or a unique index, or None: the
        per-request reads. Inline on SQLite (see the module's docstring)."""
        inline = self._engines.inline
        if inline is None:
            return await self.read(first, stmt, params or {})
        self._check_open()
        await trio.lowlevel.checkpoint()
        with self._timed("lookup"), _translated(), inline.connect() as conn:
            return first(conn, stmt, params or {})

    # -- background work that runs once across processes -----------------------------------

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """Try to become the one process running ``name`` (a GC pass, a sweep): yields True
        to the one that holds it until the block ends, False (at once, no waiting) to the
        others, which skip their pass.

        PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a pooled connection
        held for the block, so every origin on the database competes; if that connection
        dies, the server releases the lock. SQLite means one host and, in practice, one
        serving process per data directory: a lock of this process is enough.
        """
        self._check_open()
        if self.dialect != "postgresql":
            await trio.lowlevel.checkpoint()
            if name in self._running_here:
                yield False
                return
            self._running_here.add(name)
            try:
                yield True
            finally:
                self._running_here.discard(name)
            return
        key = advisory_key(name)
        conn, held = await self._in_thread(self._try_advisory_lock, key)
        try:
            yield held
        finally:
            with trio.CancelScope(shield=True):
                await self._in_thread(self._advisory_unlock, conn, key, held)

    def _try_advisory_lock(self, key: int) -> tuple[sa.Connection, bool]:
        conn = self._engines.reader.connect()
        try:
            held = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())
        except BaseException:
            conn.close()
            raise
        return conn, held

    @staticmethod
    def _advisory_unlock(conn: sa.Connection, key: int, held: bool) -> None:
        try:
            if held:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
        finally:
            conn.close()

    # -- writes ---------------------------------------------------------------------------

    async def write(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        """``fn(conn, *args)`` in one write transaction in a worker thread, committed when it
        returns (rolled back if it raises). ``fn`` may reach trio through
        ``trio.from_thread.run`` but must not call back into this database: it holds the
        write gate."""
        self._check_open()
        with self._timed("write"):
            async with self._write_gate:
                result, appended = await self._in_thread(self._in_transaction, fn, *args)
        if appended:
            self.events_committed.notify()
        return result

    def _in_transaction(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> tuple[T, bool]:
        with self._engines.writer.begin() as conn:
            conn.info.pop(EVENTS_APPENDED, None)  # a failed transaction's leftover
            result = fn(conn, *args)
            appended = bool(conn.info.pop(EVENTS_APPENDED, False))
        return result, appended


def advisory_key(name: str) -> int:
    """A PostgreSQL advisory lock key (signed 64-bit) for a pass's name, the same in every
    process (Python's ``hash`` of a string is salted per process)."""
    return int.from_bytes(hashlib.sha256(f"depot:{name}".encode()).digest()[:8], signed=True)


# -- statement helpers, for functions run by read() and write() ------------------------------


def first(conn: sa.Connection, stmt: sa.Executable, params: dict[str, Any]) -> Row | None:
    return conn.execute(stmt, params).first()


def rows(conn: sa.Connection, stmt: sa.Executable, params: dict[str, Any]) -> Sequence[Row]:
    return conn.execute(stmt, params).all()


def execute(conn: sa.Connection, stmt: sa.Executable, params: Any) -> int:
    """Execute one statement: the number of rows it touched."""
    result: sa.CursorResult[*tuple[Any, ...]] = conn.execute(stmt, params)
    return result.rowcount
