"""The upstream registries orgs register (``/api/v1/orgs/{org}/upstreams``), for the edges
to mirror with the org's credentials.

Built like the other stores on the process's one :class:`~origin.metadata.database.Database`
(table in ``origin/upstreams/schema.py``). A password goes in encrypted
(:class:`~origin.upstreams.cipher.CredentialCipher`) and comes out only through
:meth:`UpstreamStore.credentials`, which the edge-only route calls; the records listed for
the management API say whether there is one, never what it is.

Errors: a taken name is :class:`core.errors.AlreadyExists`; a database failure, or stored
credentials that do not decrypt, :class:`core.errors.DatabaseError`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from core.errors import AlreadyExists, DatabaseError
from origin.auth.schema import orgs
from origin.metadata.database import Database, Row
from origin.metadata.events import ORG_UPSTREAMS_CHANGED, append_event
from origin.metadata.sql_store import SqlStore
from origin.upstreams.cipher import CredentialCipher
from origin.upstreams.schema import org_upstreams

log = logging.getLogger("depot.origin.upstreams")

_LISTED = (
    sa.select(org_upstreams)
    .where(org_upstreams.c.org_id == sa.bindparam("org_id"))
    .order_by(org_upstreams.c.name)
)


@dataclass(frozen=True, slots=True)
class UpstreamRecord:
    org_id: str
    name: str
    url: str
    username: str
    has_password: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class UpstreamCredential:
    """A record with its password, decrypted: for the edges only."""

    record: UpstreamRecord
    password: str = field(repr=False)


class UpstreamStore(SqlStore):
    def __init__(self, database: Database, cipher: CredentialCipher) -> None:
        super().__init__(database)
        self._cipher = cipher

    async def add(
        self, org_id: str, *, name: str, url: str, username: str, password: str, now: float
    ) -> UpstreamRecord:
        """Register an upstream; AlreadyExists when the org has one of that name. The
        caller has checked the name and URL."""
        secret = ""
        if password:
            secret = self._cipher.encrypt(password, org_id=org_id, name=name, username=username)
        values = {
            "org_id": org_id,
            "name": name,
            "url": url,
            "username": username,
            "secret": secret,
            "created_at": now,
        }
        await self._write(self._insert, values)
        return UpstreamRecord(org_id, name, url, username, bool(password), now)

    @staticmethod
    def _insert(conn: sa.Connection, values: dict[str, object]) -> None:
        taken = sa.select(org_upstreams.c.name).where(
            org_upstreams.c.org_id == values["org_id"], org_upstreams.c.name == values["name"]
        )
        if conn.execute(taken).first() is not None:
            raise AlreadyExists(f"the org already has an upstream named {values['name']!r}")
        conn.execute(sa.insert(org_upstreams), values)
        _changed(conn, str(values["org_id"]), float(str(values["created_at"])))

    async def of_org(self, org_id: str) -> list[UpstreamRecord]:
        return [_record(row) for row in await self._all(_LISTED, {"org_id": org_id})]

    async def credentials(self, org_id: str) -> list[UpstreamCredential]:
        """The org's upstreams with their passwords. One whose stored credentials do not
        decrypt (another key, a tampered row) is left out and logged by name."""
        found = []
        for row in await self._all(_LISTED, {"org_id": org_id}):
            record = _record(row)
            password = ""
            if row.secret:
                try:
                    password = self._cipher.decrypt(
                        row.secret, org_id=org_id, name=record.name, username=record.username
                    )
                except DatabaseError as exc:
                    log.error("org %s: %s", org_id, exc)
                    continue
            found.append(UpstreamCredential(record, password))
        return found

    async def remove(self, org_id: str, name: str) -> bool:
        """False when the org has no upstream of that name."""
        return await self._write(_remove, org_id, name)


def _remove(conn: sa.Connection, org_id: str, name: str) -> bool:
    stmt = sa.delete(org_upstreams).where(
        org_upstreams.c.org_id == org_id, org_upstreams.c.name == name
    )
    if conn.execute(stmt).rowcount == 0:
        return False
    _changed(conn, org_id, time.time())
    return True


def _changed(conn: sa.Connection, org_id: str, now: float) -> None:
    """Edges ask origin for the org's upstreams again (they keep them for a while)."""
    slug = conn.execute(sa.select(orgs.c.slug).where(orgs.c.id == org_id)).scalar()
    append_event(conn, ORG_UPSTREAMS_CHANGED, now, subject=str(slug or org_id))


def _record(row: Row) -> UpstreamRecord:
    return UpstreamRecord(
        row.org_id, row.name, row.url, row.username, bool(row.secret), float(row.created_at)
    )
