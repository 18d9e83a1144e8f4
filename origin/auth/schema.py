"""Tables of the tenancy store: orgs, projects, users, tokens, trust relationships and public
repositories (SQLAlchemy Core; SQLite and PostgreSQL alike).

They live in the origin's one database (``origin/metadata/database.py`` creates every table at
start) on a ``MetaData`` of their own: no table here references one of the registry's (a
repository may be made public before its first push). Timestamps are POSIX seconds as floats,
supplied by the caller.

Nothing is ever deleted except public-repository rows: tokens and trust relationships are
revoked (``revoked_at``), so what a credential once was stays auditable.
"""

from __future__ import annotations

import sqlalchemy as sa

tenancy_metadata = sa.MetaData()


def _id(name: str = "id") -> sa.Column[str]:
    return sa.Column(name, sa.String(64), primary_key=True)


def _time(name: str, *, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Double(), nullable=nullable)


def _ref(name: str, target: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(64), sa.ForeignKey(target), nullable=nullable)


orgs = sa.Table(
    "orgs",
    tenancy_metadata,
    _id(),
    sa.Column("slug", sa.String(63), nullable=False, unique=True),  # immutable
    _time("created_at"),
)

# A project's repository is ``<org slug>/<project id>``.
projects = sa.Table(
    "projects",
    tenancy_metadata,
    _id(),
    _ref("org_id", "orgs.id"),
    sa.Column("name", sa.String(), nullable=False),
    _time("created_at"),
    sa.Index("ix_projects_org_id", "org_id"),
)

users = sa.Table(
    "users",
    tenancy_metadata,
    _id(),
    sa.Column("name", sa.String(), nullable=False, unique=True),
    _time("created_at"),
)

memberships = sa.Table(
    "memberships",
    tenancy_metadata,
    _ref("user_id", "users.id"),
    _ref("org_id", "orgs.id"),
    sa.PrimaryKeyConstraint("user_id", "org_id"),
)

# Long-lived credentials. Never the secret: only its SHA-256 (see token_format.hash_secret).
tokens = sa.Table(
    "tokens",
    tenancy_metadata,
    _id("token_id"),
    sa.Column("kind", sa.String(16), nullable=False),
    _ref("org_id", "orgs.id", nullable=True),  # None for user and edge tokens
    _ref("project_id", "projects.id", nullable=True),
    _ref("user_id", "users.id", nullable=True),
    sa.Column("description", sa.String(), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    _time("created_at"),
    _time("expires_at", nullable=True),
    _time("revoked_at", nullable=True),
    _time("last_used_at", nullable=True),
    sa.CheckConstraint("kind IN ('user', 'org', 'project', 'pull', 'edge')", name="ck_tokens_kind"),
    sa.Index("ix_tokens_org_id", "org_id"),
)

# OIDC trust: ID tokens from ``issuer`` for ``audience`` whose claims match every condition
# act in the org (or only its project) with ``actions``.
trust_relationships = sa.Table(
    "trust_relationships",
    tenancy_metadata,
    _id(),
    _ref("org_id", "orgs.id"),
    sa.Column("issuer", sa.String(), nullable=False),  # exactly the ``iss`` claim
    sa.Column("audience", sa.String(), nullable=False),
    sa.Column("conditions", sa.Text(), nullable=False),  # JSON object: claim → required value
    sa.Column("actions", sa.Text(), nullable=False),  # JSON list, sorted
    _ref("project_id", "projects.id", nullable=True),
    sa.Column("description", sa.String(), nullable=False),
    _time("created_at"),
    _time("revoked_at", nullable=True),
    # An ID token names its issuer first; verification looks its trusts up by it.
    sa.Index("ix_trust_relationships_issuer", "issuer"),
    sa.Index("ix_trust_relationships_org_id", "org_id"),
)

# Repositories anyone may pull. Keyed by internal repository name: ``is_public`` is one
# primary-key lookup per anonymous request.
public_repositories = sa.Table(
    "public_repositories",
    tenancy_metadata,
    sa.Column(
        "name",
        # Byte-wise like the metadata store's names (see origin/metadata/schema.py).
        sa.String().with_variant(sa.String(collation="C"), "postgresql"),
        primary_key=True,
    ),
    _ref("org_id", "orgs.id"),
    sa.Index("ix_public_repositories_org_id", "org_id"),
)

# Token-signing keys shared by every origin on one (PostgreSQL) database, so a token one origin
# issued verifies at any other and the JWKS is the same everywhere (``origin/auth/keys.py``).
# The private key is sealed (AES-GCM, the upstream credentials key, which origins sharing a
# database share already): a copy of the database alone cannot sign tokens.
signing_keys = sa.Table(
    "signing_keys",
    tenancy_metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("sealed_pem", sa.Text(), nullable=False),
    _time("created_at"),
)
