"""What every SQL store of the origin shares: the :class:`~origin.metadata.database.Database`
it is built on, and short forms of its calls.

A store owns statements and tables; the database owns threads, the write gate, connections and
error translation (every failure is a :class:`core.errors.DatabaseError`). Stores are cheap:
the metadata, tenancy and builds stores of a process are all built on one database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, TypeVarTuple

import sqlalchemy as sa

from origin.metadata.database import Database, Row, execute, first, rows

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class SqlStore:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._dialect = database.dialect

    async def _first(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> Row | None:
        """The first row of ``stmt``, through the thread limiter."""
        return await self.database.read(first, stmt, params or {})

    async def _all(
        self, stmt: sa.Executable, params: dict[str, Any] | None = None
    ) -> Sequence[Row]:
        """Every row of ``stmt``, through the thread limiter."""
        return await self.database.read(rows, stmt, params or {})

    async def _lookup(
        self, stmt: sa.Executable, params: dict[str, Any] | None = None
    ) -> Row | None:
        """One row by primary key or unique index: inline on SQLite (per-request reads)."""
        return await self.database.lookup(stmt, params)

    async def _write(self, fn: Callable[[sa.Connection, *Ts], T], *args: *Ts) -> T:
        """``fn(conn, *args)`` in one write transaction."""
        return await self.database.write(fn, *args)

    async def _change(self, stmt: sa.Executable, params: Any = None) -> int:
        """One statement in a write transaction of its own: the number of rows it touched."""
        return await self.database.write(execute, stmt, params or {})
