"""The tenancy store: organizations, projects, users, long-lived tokens, OIDC trust
relationships and public repositories, in the metadata store's database.

Built like ``origin/metadata/store.py``: SQLAlchemy Core on the process's one
:class:`~origin.metadata.database.Database` (tables in ``origin/auth/schema.py``), each
blocking call in the database's worker threads, each read one autocommit statement, each write
one transaction behind the database's write gate (shared with the metadata and build stores).
The per-request lookups by primary key or unique index (an org by slug or id, a project, a
token, a public repository) run inline on SQLite; listings go through the thread limiter.

Errors: a database failure is :class:`core.errors.DatabaseError`; a value the caller must fix
(an invalid slug, a token kind attached to the wrong things, an expiry in the past) is
:class:`core.errors.InputError`, a taken name :class:`core.errors.AlreadyExists`, an org,
project or user that does not exist :class:`core.errors.UnknownObject`.

Tokens: only the SHA-256 of the secret is stored; the full token is returned once by
:meth:`TenancyStore.create_token` and is never stored or logged.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import string
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from core.auth.principal import ALL_ACTIONS, PULL, Principal
from core.errors import AlreadyExists, InputError, UnknownObject
from core.tenancy import is_org_id, is_org_slug, org_of
from origin.auth import token_format as tf
from origin.auth.records import OrgRecord, ProjectRecord, TokenRecord, TrustRecord, UserRecord
from origin.auth.schema import (
    memberships,
    orgs,
    projects,
    public_repositories,
    tokens,
    trust_relationships,
    users,
)
from origin.metadata.database import Database, Row
from origin.metadata.events import TOKEN_REVOKED, VISIBILITY_CHANGED, append_event
from origin.metadata.sql_store import SqlStore

#: ``last_used_at`` is written at most this often per token, not on every request.
TOUCH_INTERVAL_SECONDS = 60.0
_ID_ALPHABET = string.ascii_lowercase + string.digits
PROJECT_ID_LENGTH = 12
MAX_NAME_LENGTH = 200
# Compared against when a token id is unknown, so the time taken does not reveal existence.
_DUMMY_HASH = tf.hash_secret("")


def _new_id(prefix: str, length: int = 16) -> str:
    return prefix + tf.random_string(_ID_ALPHABET, length)


def _check_name(what: str, name: str) -> None:
    if not name.strip() or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise InputError(f"{what} must be 1 to {MAX_NAME_LENGTH} printable characters")


def _insert_ignoring_conflicts(dialect: str, table: sa.Table) -> sa.Insert:
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    raise ValueError(f"unsupported dialect {dialect!r}")


_ORG_COLUMNS = (orgs.c.id, orgs.c.slug, orgs.c.created_at)
_PROJECT = sa.select(
    projects.c.id, projects.c.org_id, orgs.c.slug, projects.c.name, projects.c.created_at
).select_from(projects.join(orgs, orgs.c.id == projects.c.org_id))
_TOKEN_COLUMNS = tuple(c for c in tokens.c if c.name != "secret_hash")
_AUTH_TOKEN = (
    sa.select(*tokens.c, orgs.c.slug)
    .select_from(tokens.outerjoin(orgs, orgs.c.id == tokens.c.org_id))
    .where(tokens.c.token_id == sa.bindparam("token_id"))
)
_MEMBER_SLUGS = (
    sa.select(orgs.c.slug)
    .select_from(memberships.join(orgs, orgs.c.id == memberships.c.org_id))
    .where(memberships.c.user_id == sa.bindparam("user_id"))
)
_TRUST = sa.select(*trust_relationships.c, orgs.c.slug).select_from(
    trust_relationships.join(orgs, orgs.c.id == trust_relationships.c.org_id)
)
_TOKEN_STATE = sa.select(tokens.c.revoked_at, tokens.c.expires_at).where(
    tokens.c.token_id == sa.bindparam("token_id")
)
_IS_PUBLIC = sa.select(sa.literal(1)).where(public_repositories.c.name == sa.bindparam("name"))


class TenancyStore(SqlStore):
    """Orgs, projects, users, tokens, trust relationships and public repositories.

    Mutating methods take ``now`` (POSIX seconds): the caller owns the clock. Bad arguments
    (an invalid slug, a token kind attached to the wrong things) raise ``InputError``.
    """

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        dialect = database.dialect
        self._insert_org = _insert_ignoring_conflicts(dialect, orgs)
        self._insert_user = _insert_ignoring_conflicts(dialect, users)
        self._insert_membership = _insert_ignoring_conflicts(dialect, memberships)
        self._insert_public = _insert_ignoring_conflicts(dialect, public_repositories)

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def _insert_new(conn: sa.Connection, stmt: sa.Insert, params: Any, taken: str) -> None:
        """An ``ON CONFLICT DO NOTHING`` insert of a row with a fresh random ``id`` that must
        add it: a racing creator's commit is waited for, then this one adds nothing and fails
        cleanly (no IntegrityError aborting a PostgreSQL transaction). Whether the row went in
        is read back by id: rowcount is -1 for these inserts on psycopg."""
        conn.execute(stmt, params)
        table = stmt.table
        assert isinstance(table, sa.Table)
        if conn.execute(sa.select(table.c.id).where(table.c.id == params["id"])).first() is None:
            raise AlreadyExists(taken)

    @staticmethod
    def _org_slug(conn: sa.Connection, org_id: str) -> str:
        slug = conn.execute(sa.select(orgs.c.slug).where(orgs.c.id == org_id)).scalar()
        if slug is None:
            raise UnknownObject(f"no organization with id {org_id!r}")
        return str(slug)

    @staticmethod
    def _project_org(conn: sa.Connection, org_id: str | None, project_id: str) -> str:
        """The org id of ``project_id``, which must be ``org_id`` when that is given."""
        found = conn.execute(sa.select(projects.c.org_id).where(projects.c.id == project_id))
        project_org = found.scalar()
        if project_org is None:
            raise UnknownObject(f"no project with id {project_id!r}")
        if org_id is not None and project_org != org_id:
            raise InputError(f"project {project_id!r} does not belong to org {org_id!r}")
        return str(project_org)

    # -- organizations --------------------------------------------------------------------

    async def create_org(self, slug: str, now: float) -> OrgRecord:
        """A new org; :class:`AlreadyExists` if the slug is taken (slugs never change)."""
        if not is_org_slug(slug):
            raise InputError(f"invalid organization name {slug[:100]!r}: use a-z, 0-9 and '-'")
        if is_org_id(slug):
            raise InputError(f"invalid organization name {slug!r}: it has the shape of an org id")
        # A DNS label (core.tenancy.ORG_ID): the id works as the org's subdomain too.
        record = OrgRecord(id=_new_id("org"), slug=slug, created_at=now)
        params = {"id": record.id, "slug": slug, "created_at": now}
        taken = f"organization {slug!r} already exists"
        await self._write(self._insert_new, self._insert_org, params, taken)
        return record

    async def org_by_slug(self, slug: str) -> OrgRecord | None:
        stmt = sa.select(*_ORG_COLUMNS).where(orgs.c.slug == slug)
        row = await self._lookup(stmt)
        return None if row is None else OrgRecord(row.id, row.slug, float(row.created_at))

    async def org_by_id(self, org_id: str) -> OrgRecord | None:
        stmt = sa.select(*_ORG_COLUMNS).where(orgs.c.id == org_id)
        row = await self._lookup(stmt)
        return None if row is None else OrgRecord(row.id, row.slug, float(row.created_at))

    async def list_orgs(self, ids_or_slugs: Iterable[str] | None = None) -> list[OrgRecord]:
        """Orgs by slug; with ``ids_or_slugs``, only those whose id or slug is listed."""
        stmt = sa.select(*_ORG_COLUMNS).order_by(orgs.c.slug)
        if ids_or_slugs is not None:
            wanted = sorted(set(ids_or_slugs))
            stmt = stmt.where(sa.or_(orgs.c.id.in_(wanted), orgs.c.slug.in_(wanted)))
        return [OrgRecord(row.id, row.slug, float(row.created_at)) for row in await self._all(stmt)]

    # -- projects -------------------------------------------------------------------------

    async def create_project(self, org_id: str, name: str, now: float) -> ProjectRecord:
        """A new project of the org, with a random id: its repository is ``<org>/<id>``."""
        _check_name("a project name", name)
        return await self._write(self._create_project, org_id, name, now)

    def _create_project(
        self, conn: sa.Connection, org_id: str, name: str, now: float
    ) -> ProjectRecord:
        slug = self._org_slug(conn, org_id)
        # 12 of [a-z0-9]: a valid repository-name component, ~62 bits of randomness.
        project_id = tf.random_string(_ID_ALPHABET, PROJECT_ID_LENGTH)
        values = {"id": project_id, "org_id": org_id, "name": name, "created_at": now}
        conn.execute(sa.insert(projects), values)
        return ProjectRecord(project_id, org_id, slug, name, now)

    async def project(self, project_id: str) -> ProjectRecord | None:
        """The project with its org's slug; one indexed query (legacy project URLs)."""
        row = await self._lookup(_PROJECT.where(projects.c.id == project_id))
        return None if row is None else _project_record(row)

    async def list_projects(self, org_id: str) -> list[ProjectRecord]:
        stmt = _PROJECT.where(projects.c.org_id == org_id).order_by(projects.c.name, projects.c.id)
        return [_project_record(row) for row in await self._all(stmt)]

    # -- users ----------------------------------------------------------------------------

    async def create_user(self, name: str, now: float) -> UserRecord:
        """A new user; :class:`AlreadyExists` if the name is taken."""
        _check_name("a user name", name)
        record = UserRecord(id=_new_id("user_"), name=name, created_at=now)
        params = {"id": record.id, "name": name, "created_at": now}
        await self._write(self._insert_new, self._insert_user, params, f"user {name!r} exists")
        return record

    async def user_by_name(self, name: str) -> UserRecord | None:
        stmt = sa.select(users.c.id, users.c.name, users.c.created_at).where(users.c.name == name)
        row = await self._first(stmt)
        return None if row is None else UserRecord(row.id, row.name, float(row.created_at))

    async def users_by_id(self, user_ids: Iterable[str]) -> dict[str, UserRecord]:
        """The users with these ids (unknown ids are left out), by id."""
        wanted = sorted(set(user_ids))
        if not wanted:
            return {}
        stmt = sa.select(users.c.id, users.c.name, users.c.created_at).where(users.c.id.in_(wanted))
        return {
            row.id: UserRecord(row.id, row.name, float(row.created_at))
            for row in await self._all(stmt)
        }

    async def add_member(self, user_id: str, org_id: str) -> None:
        """Make the user a member of the org (idempotent)."""
        await self._write(self._add_member, user_id, org_id)

    def _add_member(self, conn: sa.Connection, user_id: str, org_id: str) -> None:
        self._org_slug(conn, org_id)
        if conn.execute(sa.select(users.c.id).where(users.c.id == user_id)).first() is None:
            raise UnknownObject(f"no user with id {user_id!r}")
        conn.execute(self._insert_membership, {"user_id": user_id, "org_id": org_id})

    # -- tokens ---------------------------------------------------------------------------

    async def create_token(
        self,
        kind: str,
        *,
        org_id: str | None = None,
        project_id: str | None = None,
        user_id: str | None = None,
        description: str = "",
        expires_at: float | None = None,
        now: float,
    ) -> tuple[TokenRecord, str]:
        """A new token and its full text, which is returned here once and never again.

        What a kind is attached to: user → ``user_id``; org → ``org_id``; project →
        ``project_id`` (its org is filled in); pull → ``org_id`` and/or ``project_id``; edge →
        nothing.
        """
        _check_token_shape(kind, org_id=org_id, project_id=project_id, user_id=user_id)
        if expires_at is not None and expires_at <= now:
            raise InputError("a token must expire in the future")
        if len(description) > MAX_NAME_LENGTH:
            raise InputError(f"a description is at most {MAX_NAME_LENGTH} characters")
        token_id, secret, full = tf.new_token(kind)
        record = TokenRecord(
            token_id=token_id,
            kind=kind,
            org_id=org_id,
            project_id=project_id,
            user_id=user_id,
            description=description,
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
            last_used_at=None,
        )
        stored = await self._write(self._create_token, record, tf.hash_secret(secret))
        return stored, full

    def _create_token(
        self, conn: sa.Connection, record: TokenRecord, secret_hash: str
    ) -> TokenRecord:
        org_id = record.org_id
        if record.project_id is not None:
            org_id = self._project_org(conn, org_id, record.project_id)
        elif org_id is not None:
            self._org_slug(conn, org_id)
        if record.user_id is not None:
            found = conn.execute(sa.select(users.c.id).where(users.c.id == record.user_id))
            if found.first() is None:
                raise UnknownObject(f"no user with id {record.user_id!r}")
        values = {c.name: getattr(record, c.name) for c in _TOKEN_COLUMNS}
        values.update(org_id=org_id, secret_hash=secret_hash)
        conn.execute(sa.insert(tokens), values)
        return dataclasses.replace(record, org_id=org_id)

    async def list_tokens(
        self, org_id: str | None, *, include_revoked: bool = False
    ) -> list[TokenRecord]:
        """The org's tokens (org, project and pull), oldest first; ``org_id=None`` lists the
        tokens of no org (user and edge). Never a secret or its hash."""
        stmt = sa.select(*_TOKEN_COLUMNS).order_by(tokens.c.created_at, tokens.c.token_id)
        if org_id is None:
            stmt = stmt.where(tokens.c.org_id.is_(None))
        else:
            stmt = stmt.where(tokens.c.org_id == org_id)
        if not include_revoked:
            stmt = stmt.where(tokens.c.revoked_at.is_(None))
        return [_token_record(row) for row in await self._all(stmt)]

    async def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke the token; False if it does not exist or was already revoked. Edges
        hear of it through the event log (its bearer tokens are refused at once)."""
        return await self._write(self._revoke_token, token_id, now)

    @staticmethod
    def _revoke_token(conn: sa.Connection, token_id: str, now: float) -> bool:
        stmt = (
            sa.update(tokens)
            .where(tokens.c.token_id == token_id, tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if conn.execute(stmt).rowcount == 0:
            return False
        append_event(conn, TOKEN_REVOKED, now, subject=token_id)
        return True

    async def token_in_force(self, token_id: str, now: float) -> bool:
        """Whether long-lived token ``token_id`` exists, unrevoked and unexpired at ``now``
        (a bearer token naming it as its parent is refused otherwise); one key lookup."""
        row = await self._lookup(_TOKEN_STATE, {"token_id": token_id})
        if row is None or row.revoked_at is not None:
            return False
        return row.expires_at is None or now < row.expires_at

    async def authenticate(self, token: str, now: float) -> Principal | None:
        """The principal ``token`` stands for, or None if it is malformed, unknown, wrong,
        revoked or expired at ``now``."""
        parsed = tf.parse_token(token)
        if parsed is None:
            return None
        kind, token_id, secret = parsed
        presented = tf.hash_secret(secret)
        row = await self._lookup(_AUTH_TOKEN, {"token_id": token_id})
        # Constant time, and compared even for an unknown id: the comparison's timing tells
        # neither how much of a hash matched nor whether the id exists.
        matches = hmac.compare_digest(_DUMMY_HASH if row is None else row.secret_hash, presented)
        if row is None or not matches or row.kind != kind:
            return None
        if row.revoked_at is not None or (row.expires_at is not None and now >= row.expires_at):
            return None
        if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL_SECONDS:
            await self._change(_touch(token_id, now))
        expires = row.expires_at
        if kind == tf.USER:
            slugs = await self._all(_MEMBER_SLUGS, {"user_id": row.user_id})
            orgs = frozenset(r[0] for r in slugs)
            return Principal(kind, token_id, orgs, None, ALL_ACTIONS, expires)
        if kind == tf.EDGE:
            return Principal(kind, token_id, frozenset(), None, frozenset({PULL}), expires)
        actions = frozenset({PULL}) if kind == tf.PULL else ALL_ACTIONS
        return Principal(kind, token_id, frozenset({row.slug}), row.project_id, actions, expires)

    # -- OIDC trust relationships ---------------------------------------------------------

    async def create_trust(
        self,
        org_id: str,
        *,
        issuer: str,
        audience: str,
        conditions: Mapping[str, str],
        actions: Iterable[str],
        project_id: str | None = None,
        description: str = "",
        now: float,
    ) -> TrustRecord:
        """Trust ID tokens from ``issuer`` for ``audience`` whose claims equal every one of
        ``conditions`` (at least one: without any, every workload of a shared issuer such as
        GitHub Actions would match) to act in the org, or only in ``project_id``."""
        url = urlsplit(issuer)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise InputError(f"an issuer is an http(s) URL, not {issuer[:200]!r}")
        if not audience:
            raise InputError("an audience is required")
        if not conditions or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in conditions.items()
        ):
            raise InputError("conditions map claim names to required string values (1 or more)")
        wanted = frozenset(actions)
        if len(description) > MAX_NAME_LENGTH:
            raise InputError(f"a description is at most {MAX_NAME_LENGTH} characters")
        if not wanted or not wanted <= ALL_ACTIONS:
            raise InputError(f"actions must be some of {', '.join(sorted(ALL_ACTIONS))}")
        record = TrustRecord(
            id=_new_id("trust_"),
            org_id=org_id,
            org_slug="",
            issuer=issuer,
            audience=audience,
            conditions=dict(conditions),
            actions=wanted,
            project_id=project_id,
            description=description,
            created_at=now,
            revoked_at=None,
        )
        return await self._write(self._create_trust, record)

    def _create_trust(self, conn: sa.Connection, record: TrustRecord) -> TrustRecord:
        slug = self._org_slug(conn, record.org_id)
        if record.project_id is not None:
            self._project_org(conn, record.org_id, record.project_id)
        values = {c.name: getattr(record, c.name) for c in trust_relationships.c}
        values.update(
            conditions=json.dumps(record.conditions, sort_keys=True),
            actions=json.dumps(sorted(record.actions)),
        )
        conn.execute(sa.insert(trust_relationships), values)
        return dataclasses.replace(record, org_slug=slug)

    async def list_trusts(self, org_id: str, *, include_revoked: bool = False) -> list[TrustRecord]:
        stmt = _TRUST.where(trust_relationships.c.org_id == org_id)
        if not include_revoked:
            stmt = stmt.where(trust_relationships.c.revoked_at.is_(None))
        return await self._trusts(stmt)

    async def trusts_for_issuer(self, issuer: str) -> list[TrustRecord]:
        """Unrevoked trusts whose issuer is exactly ``issuer`` (an ID token's ``iss``)."""
        stmt = _TRUST.where(
            trust_relationships.c.issuer == issuer, trust_relationships.c.revoked_at.is_(None)
        )
        return await self._trusts(stmt)

    async def _trusts(self, stmt: sa.Select[Any]) -> list[TrustRecord]:
        stmt = stmt.order_by(trust_relationships.c.created_at, trust_relationships.c.id)
        return [_trust_record(row) for row in await self._all(stmt)]

    async def revoke_trust(self, trust_id: str, now: float) -> bool:
        """Revoke the trust; False if it does not exist or was already revoked."""
        stmt = (
            sa.update(trust_relationships)
            .where(trust_relationships.c.id == trust_id, trust_relationships.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return await self._change(stmt) > 0

    # -- public repositories --------------------------------------------------------------

    async def set_public(self, org_id: str, name: str, public: bool) -> None:
        """Let anyone pull repository ``name`` (internal name), or stop that (idempotent).
        ``name`` must be in the org's namespace ``<org slug>/…``."""
        await self._write(self._set_public, org_id, name, public)

    def _set_public(self, conn: sa.Connection, org_id: str, name: str, public: bool) -> None:
        slug = self._org_slug(conn, org_id)
        if org_of(name) != slug or "/" not in name:
            raise InputError(f"repository {name[:300]!r} is not in organization {slug!r}")
        was_public = conn.execute(_IS_PUBLIC, {"name": name}).first() is not None
        if public:
            conn.execute(self._insert_public, {"name": name, "org_id": org_id})
        else:
            conn.execute(
                sa.delete(public_repositories).where(
                    public_repositories.c.name == name, public_repositories.c.org_id == org_id
                )
            )
        if was_public != public:
            # Edges drop what they decided for it (anonymous grants of a now private one).
            append_event(conn, VISIBILITY_CHANGED, time.time(), repository=name, public=public)

    async def is_public(self, name: str) -> bool:
        """One primary-key lookup: may anyone pull repository ``name``?"""
        return await self._lookup(_IS_PUBLIC, {"name": name}) is not None

    async def list_public(self, org_id: str) -> list[str]:
        stmt = (
            sa.select(public_repositories.c.name)
            .where(public_repositories.c.org_id == org_id)
            .order_by(public_repositories.c.name)
        )
        return [str(row[0]) for row in await self._all(stmt)]


# What each kind of token is attached to: the accepted sets of {org, project, user}.
_ATTACHMENTS: dict[str, tuple[tuple[frozenset[str], ...], str]] = {
    tf.USER: ((frozenset({"user"}),), "a user and nothing else"),
    tf.ORG: ((frozenset({"org"}),), "an org and nothing else"),
    tf.PROJECT: (
        (frozenset({"project"}), frozenset({"org", "project"})),
        "a project (and optionally its org)",
    ),
    tf.PULL: (
        (frozenset({"org"}), frozenset({"project"}), frozenset({"org", "project"})),
        "an org, a project, or both",
    ),
    tf.EDGE: ((frozenset(),), "nothing: it reads every org"),
}


def _check_token_shape(
    kind: str, *, org_id: str | None, project_id: str | None, user_id: str | None
) -> None:
    if kind not in _ATTACHMENTS:
        raise InputError(f"unknown token kind {kind!r} (one of {', '.join(sorted(tf.KINDS))})")
    given = frozenset(
        name
        for name, value in (("org", org_id), ("project", project_id), ("user", user_id))
        if value is not None
    )
    accepted, described = _ATTACHMENTS[kind]
    if given not in accepted:
        raise InputError(f"a token of kind {kind!r} is attached to {described}")


def _touch(token_id: str, now: float) -> sa.Update:
    # Conditional, so racing authentications of one token write it once per interval.
    return (
        sa.update(tokens)
        .where(
            tokens.c.token_id == token_id,
            sa.or_(
                tokens.c.last_used_at.is_(None),
                tokens.c.last_used_at <= now - TOUCH_INTERVAL_SECONDS,
            ),
        )
        .values(last_used_at=now)
    )


def _optional_time(value: Any) -> float | None:
    return None if value is None else float(value)


def _project_record(row: Row) -> ProjectRecord:
    return ProjectRecord(row.id, row.org_id, row.slug, row.name, float(row.created_at))


def _token_record(row: Row) -> TokenRecord:
    return TokenRecord(
        token_id=row.token_id,
        kind=row.kind,
        org_id=row.org_id,
        project_id=row.project_id,
        user_id=row.user_id,
        description=row.description,
        created_at=float(row.created_at),
        expires_at=_optional_time(row.expires_at),
        revoked_at=_optional_time(row.revoked_at),
        last_used_at=_optional_time(row.last_used_at),
    )


def _trust_record(row: Row) -> TrustRecord:
    return TrustRecord(
        id=row.id,
        org_id=row.org_id,
        org_slug=row.slug,
        issuer=row.issuer,
        audience=row.audience,
        conditions=json.loads(row.conditions),
        actions=frozenset(json.loads(row.actions)),
        project_id=row.project_id,
        description=row.description,
        created_at=float(row.created_at),
        revoked_at=_optional_time(row.revoked_at),
    )
