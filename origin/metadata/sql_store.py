"""What every SQL store of the origin shares: engines, threads, transactions, errors.

Blocking SQLAlchemy calls run in worker threads behind one ``CapacityLimiter`` per store;
writes on SQLite queue on a gate of one (a second writer would only wait on the file lock);
per-request reads on SQLite run inline (an indexed WAL read took ~50 µs here while the
thread hop around it cost ~180 µs, which capped manifest GETs at ~800 requests/s per
process; WAL readers never wait for writers). PostgreSQL reads keep the thread pool.
SQLAlchemy errors leave as the store's own error class, with the driver's message only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar, TypeVarTuple

import sqlalchemy as sa
import trio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Row = sa.Row[*tuple[Any, ...]]


def describe(exc: sa.exc.SQLAlchemyError) -> str:
    # The driver's own message ("database is locked"), without SQL text or parameters.
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {str(exc.orig).splitlines()[0]}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class SqlStore:
    #: Raised for every database failure, and once the store is closed.
    error: ClassVar[type[Exception]] = Exception
    label: ClassVar[str] = "store"

    def __init__(self, reader: sa.Engine, writer: sa.Engine, *, max_threads: int) -> None:
        self._reader = reader
        self._writer = writer
        self._dialect = writer.dialect.name
        sqlite = self._dialect == "sqlite"
        self._limiter = trio.CapacityLimiter(max_threads)
        self._write_gate = trio.CapacityLimiter(1 if sqlite else max_threads)
        self._inline_reads = sqlite
        self._closed = False

    def close(self) -> None:
        """Close every pooled connection; the store refuses calls afterwards."""
        self._closed = True
        self._reader.dispose()
        self._writer.dispose()

    def _check_open(self) -> None:
        if self._closed:
            raise self.error(f"{self.label} is closed")

    async def _run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        self._check_open()
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except sa.exc.SQLAlchemyError as exc:
            raise self.error(describe(exc)) from exc

    async def _run_hot(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """The per-request reads: inline on SQLite, through the thread pool elsewhere."""
        if not self._inline_reads:
            return await self._run(fn, *args)
        self._check_open()
        await trio.lowlevel.checkpoint()
        try:
            return fn(*args)
        except sa.exc.SQLAlchemyError as exc:
            raise self.error(describe(exc)) from exc

    async def _write(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)`` in one write transaction, committed when it returns
        (rolled back if it raises)."""
        async with self._write_gate:
            return await self._run(self._in_transaction, fn, *args)

    def _in_transaction(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        with self._writer.begin() as conn:
            return fn(conn, *args)

    def _first(self, stmt: sa.Executable, params: dict[str, Any]) -> Row | None:
        with self._reader.connect() as conn:
            return conn.execute(stmt, params).first()

    def _all(self, stmt: sa.Executable, params: dict[str, Any]) -> Sequence[Row]:
        with self._reader.connect() as conn:
            return conn.execute(stmt, params).all()

    @staticmethod
    def _execute(conn: sa.Connection, stmt: sa.Executable, params: Any) -> int:
        """Execute one statement in a write transaction: the number of rows it touched."""
        result: sa.CursorResult[*tuple[Any, ...]] = conn.execute(stmt, params)
        return result.rowcount
