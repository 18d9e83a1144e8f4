"""The origin's event log: a durable, sequence-numbered record of what changed that edges must
hear of at once (a tag moved, a manifest or blob deleted, a token revoked or expired, a
repository's visibility, a build expired or deleted, an org's upstreams).

Stores append with :func:`append_event` inside the write transaction that makes the change,
so an event exists exactly when its change was committed. The log is read by the long poll of
``GET /api/v1/events`` (``origin/routes/events.py``) through :class:`EventLog`, pruned by
housekeeping to a bounded window (:meth:`EventLog.prune`), and fed expiries by a periodic pass
(:meth:`EventLog.record_expiries`: a token or build reaching its expiry changes no row).

Order: on SQLite write transactions are serialised whole, so sequence order is commit order.
On PostgreSQL an identity value is taken at insert time and transactions commit in any
order, so a follower that read 11 could later miss 10; every appender therefore takes one
transaction-scoped advisory lock just before its insert and keeps it until commit. Appends
are the last statement of their transaction, so the lock is held for the commit alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from origin.auth.schema import tokens
from origin.builds.schema import build_manifests, builds
from origin.metadata.database import EVENTS_APPENDED, Database
from origin.metadata.event_schema import event_log_state, events
from origin.metadata.sql_store import SqlStore

TAG_MOVED = "tag.moved"
TAG_DELETED = "tag.deleted"
MANIFEST_DELETED = "manifest.deleted"
#: With a repository: unlinked from it; without: deleted from the content store (GC).
BLOB_DELETED = "blob.deleted"
TOKEN_REVOKED = "token.revoked"
TOKEN_EXPIRED = "token.expired"
VISIBILITY_CHANGED = "repository.visibility"
BUILD_EXPIRED = "build.expired"
BUILD_DELETED = "build.deleted"
ORG_UPSTREAMS_CHANGED = "org.upstreams"

#: What ``subject`` is called in an event's JSON, per kind.
SUBJECT_FIELDS = {
    TAG_MOVED: "tag",
    TAG_DELETED: "tag",
    MANIFEST_DELETED: "digest",
    BLOB_DELETED: "digest",
    TOKEN_REVOKED: "token",
    TOKEN_EXPIRED: "token",
    VISIBILITY_CHANGED: "subject",
    BUILD_EXPIRED: "build",
    BUILD_DELETED: "build",
    ORG_UPSTREAMS_CHANGED: "org",
}
KINDS = frozenset(SUBJECT_FIELDS)

# Serialises appenders on PostgreSQL from insert to commit (see the module's docstring).
_PG_EVENTS_LOCK_KEY = 0x64_65_76_65_6E_74  # "devent"
_STATE_ID = 1


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    kind: str
    at: float
    repository: str | None = None
    subject: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The event as ``GET /api/v1/events`` answers it."""
        document: dict[str, Any] = {"seq": self.seq, "kind": self.kind, "at": self.at}
        if self.repository is not None:
            document["repository"] = self.repository
        if self.subject is not None:
            document[SUBJECT_FIELDS.get(self.kind, "subject")] = self.subject
        for name, value in self.data.items():
            document.setdefault(name, value)
        return document


def append_event(
    conn: sa.Connection,
    kind: str,
    at: float,
    *,
    repository: str | None = None,
    subject: str | None = None,
    **data: Any,
) -> None:
    """Append one event inside the caller's write transaction (run by ``Database.write``):
    it is visible, and pollers of this process are woken, when that transaction commits.
    Call it last in the transaction (on PostgreSQL it takes the log's lock until commit)."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_EVENTS_LOCK_KEY)))
    row = {
        "kind": kind,
        "at": at,
        "repository": repository,
        "subject": subject,
        "data": json.dumps(data, sort_keys=True) if data else None,
    }
    conn.execute(sa.insert(events), row)
    conn.info[EVENTS_APPENDED] = True


def _event(row: sa.Row[Any]) -> Event:
    data: Any = json.loads(row.data) if row.data else {}
    return Event(
        seq=int(row.seq),
        kind=str(row.kind),
        at=float(row.at),
        repository=row.repository,
        subject=row.subject,
        data=data if isinstance(data, dict) else {},
    )


@dataclass(frozen=True, slots=True)
class Bounds:
    """The log's window: a follower after ``pruned_through`` and at most ``last`` misses
    nothing; one outside it must revalidate everything."""

    pruned_through: int
    last: int


class EventLog(SqlStore):
    """Reading, pruning and feeding the log (appends happen in the stores' transactions)."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)

    async def after(self, seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` events after ``seq``, oldest first."""
        stmt = sa.select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        return [_event(row) for row in await self._all(stmt)]

    async def bounds(self) -> Bounds:
        return await self.database.read(_bounds)

    async def prune(self, *, older_than: float, keep_at_most: int) -> int:
        """Delete events appended before ``older_than`` and all but the newest
        ``keep_at_most``; the highest deleted sequence is remembered (:meth:`bounds`).
        How many were deleted."""
        return await self._write(_prune, older_than, keep_at_most)

    async def record_expiries(self, now: float, lookback_seconds: float) -> int:
        """Append ``token.expired`` and ``build.expired`` for tokens and bound builds whose
        expiry passed in the last ``lookback_seconds`` and was not recorded yet (at most the
        log's retention, so a pruned record is not made again). How many were appended."""
        return await self._write(_record_expiries, now, now - lookback_seconds)


def _bounds(conn: sa.Connection) -> Bounds:
    pruned = conn.execute(
        sa.select(event_log_state.c.pruned_through).where(event_log_state.c.id == _STATE_ID)
    ).scalar()
    last = conn.execute(sa.select(sa.func.max(events.c.seq))).scalar()
    pruned_through = int(pruned or 0)
    return Bounds(pruned_through, max(pruned_through, int(last or 0)))


def _prune(conn: sa.Connection, older_than: float, keep_at_most: int) -> int:
    cut = conn.execute(
        sa.select(sa.func.max(events.c.seq)).where(events.c.at < older_than)
    ).scalar()
    through = int(cut or 0)
    if keep_at_most >= 0:
        beyond = conn.execute(
            sa.select(events.c.seq).order_by(events.c.seq.desc()).offset(keep_at_most).limit(1)
        ).scalar()
        through = max(through, int(beyond or 0))
    if through <= 0:
        return 0
    deleted = conn.execute(sa.delete(events).where(events.c.seq <= through)).rowcount
    state = sa.select(event_log_state.c.pruned_through).where(event_log_state.c.id == _STATE_ID)
    known = conn.execute(state.with_for_update()).scalar()
    if known is None:
        conn.execute(sa.insert(event_log_state), {"id": _STATE_ID, "pruned_through": through})
    elif int(known) < through:
        conn.execute(
            sa.update(event_log_state)
            .where(event_log_state.c.id == _STATE_ID)
            .values(pruned_through=through)
        )
    return int(deleted)


def _not_recorded(kind: str, subject: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    return ~sa.exists().where(events.c.kind == kind, events.c.subject == subject)


def _record_expiries(conn: sa.Connection, now: float, since: float) -> int:
    expired_tokens = conn.execute(
        sa.select(tokens.c.token_id, tokens.c.expires_at)
        .where(
            tokens.c.expires_at <= now,
            tokens.c.expires_at > since,
            tokens.c.revoked_at.is_(None),
            _not_recorded(TOKEN_EXPIRED, tokens.c.token_id),
        )
        .order_by(tokens.c.expires_at)
    ).all()
    expired_builds = conn.execute(
        sa.select(builds)
        .where(
            builds.c.expires_at <= now,
            builds.c.expires_at > since,
            builds.c.deleted_at.is_(None),
            builds.c.digest.is_not(None),  # never bound: nothing ever resolved
            _not_recorded(BUILD_EXPIRED, builds.c.id),
        )
        .order_by(builds.c.expires_at)
    ).all()
    appended = 0
    for token in expired_tokens:
        append_event(conn, TOKEN_EXPIRED, now, subject=str(token.token_id))
        appended += 1
    for build in expired_builds:
        append_event(conn, BUILD_EXPIRED, now, **build_event_fields(conn, build))
        appended += 1
    return appended


def build_event_fields(conn: sa.Connection, build: sa.Row[Any]) -> dict[str, Any]:
    """What an edge needs to stop resolving a build (a ``builds`` row): its repository, its
    id (a tag), its save-tags and every manifest it reaches."""
    reached = conn.execute(
        sa.select(build_manifests.c.digest)
        .where(build_manifests.c.build_id == build.id)
        .order_by(build_manifests.c.digest)
    )
    manifests = [str(row.digest) for row in reached]
    if build.digest is not None and build.digest not in manifests:
        manifests.insert(0, str(build.digest))
    try:
        save_tags = [str(tag) for tag in json.loads(build.save_tags)]
    except (ValueError, TypeError):
        save_tags = []
    return {
        "repository": str(build.repository),
        "subject": str(build.id),
        "digest": build.digest,
        "tags": [str(build.id), *save_tags],
        "manifests": manifests,
    }
