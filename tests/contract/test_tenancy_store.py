"""Contract of the tenancy store, run against SQLite (a file) and PostgreSQL.

PostgreSQL runs on 127.0.0.1:5432, database ``test``; each test gets a schema of its own
(through ``search_path`` in the URL), dropped afterwards. Without a server the PostgreSQL cases
skip locally and fail on CI (``CI=true``), as in ``test_metadata_store.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
import trio

from core.auth.principal import ALL_ACTIONS, PULL, Principal
from core.errors import AlreadyExists, DatabaseError, InputError, UnknownObject
from core.tenancy import is_org_id, is_org_slug
from origin.auth import token_format as tf
from origin.auth.records import OrgRecord, ProjectRecord, TokenRecord
from origin.auth.schema import tenancy_metadata
from origin.auth.store import TOUCH_INTERVAL_SECONDS, TenancyStore
from origin.metadata.database import Database
from origin.metadata.store import MetadataStore

NOW = 1_700_000_000.0
ISSUER = "https://token.actions.githubusercontent.com"


@pytest.fixture
def open_store(open_database: Callable[[], Database]) -> Callable[[], TenancyStore]:
    """Opens stores on this test's database, each on a Database of its own (as separate
    processes would); the databases are closed at the end."""
    return lambda: TenancyStore(open_database())


@pytest.fixture
def store(database: Database) -> TenancyStore:
    return TenancyStore(database)


def all_cells(url: str) -> list[str]:
    """Every non-null cell of every tenancy table, as text."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                str(cell)
                for table in tenancy_metadata.sorted_tables
                for row in conn.execute(sa.select(table))
                for cell in row
                if cell is not None
            ]
    finally:
        engine.dispose()


async def org_with_project(store: TenancyStore, slug: str = "acme") -> ProjectRecord:
    org = await store.create_org(slug, NOW)
    return await store.create_project(org.id, "web", NOW)


# -- organizations ----------------------------------------------------------------------------


async def test_orgs_are_created_and_found(store: TenancyStore) -> None:
    with trio.fail_after(20):
        acme = await store.create_org("acme", NOW)
        # A DNS label (the org's id works as its subdomain), not shaped like any slug allowed.
        assert re.fullmatch(r"org[a-z0-9]{16}", acme.id)
        assert is_org_slug(acme.id) and is_org_id(acme.id)
        assert acme == OrgRecord(acme.id, "acme", NOW)
        other = await store.create_org("a-1", NOW + 1)
        assert await store.org_by_slug("acme") == acme
        assert await store.org_by_id(acme.id) == acme
        assert await store.org_by_slug("nope") is None
        assert await store.org_by_id("org_nope") is None
        assert await store.list_orgs() == [other, acme]  # by slug
        assert await store.list_orgs(["acme", other.id, "nope"]) == [other, acme]
        assert await store.list_orgs([]) == []
        with pytest.raises(InputError, match="shape of an org id"):
            await store.create_org("org0123456789abcdef", NOW)


async def test_duplicate_org_slug_conflicts(store: TenancyStore) -> None:
    with trio.fail_after(20):
        first = await store.create_org("acme", NOW)
        with pytest.raises(AlreadyExists):
            await store.create_org("acme", NOW + 1)
        assert await store.list_orgs() == [first]


@pytest.mark.parametrize("slug", ["", "Acme", "-acme", "acme-", "a_b", "a/b", "a" * 64, "é"])
async def test_invalid_org_slugs_are_refused(store: TenancyStore, slug: str) -> None:
    with trio.fail_after(20), pytest.raises(InputError):
        await store.create_org(slug, NOW)


async def test_concurrent_create_org_one_wins(open_store: Callable[[], TenancyStore]) -> None:
    # Two stores: two connection pools, as two origin processes would have.
    stores = [open_store(), open_store()]
    with trio.fail_after(20):
        created: list[OrgRecord] = []
        conflicts: list[AlreadyExists] = []

        async def create(store: TenancyStore) -> None:
            try:
                created.append(await store.create_org("race", NOW))
            except AlreadyExists as exc:
                conflicts.append(exc)

        async with trio.open_nursery() as nursery:
            for store in stores * 2:
                nursery.start_soon(create, store)
        assert len(created) == 1
        assert len(conflicts) == 3
        assert await stores[1].list_orgs() == created


# -- projects ---------------------------------------------------------------------------------


async def test_projects(store: TenancyStore) -> None:
    with trio.fail_after(20):
        acme = await store.create_org("acme", NOW)
        other = await store.create_org("other", NOW)
        web = await store.create_project(acme.id, "web", NOW)
        api = await store.create_project(acme.id, "api", NOW + 1)
        await store.create_project(other.id, "web", NOW)
        assert re.fullmatch(r"[a-z0-9]{12}", web.id)
        assert web == ProjectRecord(web.id, acme.id, "acme", "web", NOW)
        assert web.repository == f"acme/{web.id}"
        assert await store.project(web.id) == web
        assert await store.project("nonexistent0") is None
        assert await store.list_projects(acme.id) == [api, web]  # by name
        assert await store.list_projects("org_nope") == []


async def test_project_needs_an_org_and_a_name(store: TenancyStore) -> None:
    with trio.fail_after(20):
        with pytest.raises(UnknownObject):
            await store.create_project("org_nope", "web", NOW)
        acme = await store.create_org("acme", NOW)
        for name in ("", "  ", "x" * 201, "line\nbreak"):
            with pytest.raises(InputError):
                await store.create_project(acme.id, name, NOW)


# -- users ------------------------------------------------------------------------------------


async def test_users_and_memberships(store: TenancyStore) -> None:
    with trio.fail_after(20):
        alice = await store.create_user("alice", NOW)
        assert re.fullmatch(r"user_[a-z0-9]{16}", alice.id)
        assert await store.user_by_name("alice") == alice
        assert await store.user_by_name("bob") is None
        with pytest.raises(AlreadyExists):
            await store.create_user("alice", NOW)
        acme = await store.create_org("acme", NOW)
        await store.add_member(alice.id, acme.id)
        await store.add_member(alice.id, acme.id)  # idempotent
        with pytest.raises(UnknownObject):
            await store.add_member("user_nope", acme.id)
        with pytest.raises(UnknownObject):
            await store.add_member(alice.id, "org_nope")


# -- tokens -----------------------------------------------------------------------------------


async def test_token_principal_per_kind(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store, "acme")
        other = await store.create_org("other", NOW)
        alice = await store.create_user("alice", NOW)
        await store.add_member(alice.id, web.org_id)
        await store.add_member(alice.id, other.id)
        pull_only = frozenset({PULL})
        cases: list[tuple[dict[str, Any], set[str], str | None, frozenset[str]]] = [
            (dict(kind="org", org_id=web.org_id), {"acme"}, None, ALL_ACTIONS),
            (dict(kind="project", project_id=web.id), {"acme"}, web.id, ALL_ACTIONS),
            (dict(kind="pull", org_id=web.org_id), {"acme"}, None, pull_only),
            (dict(kind="pull", project_id=web.id), {"acme"}, web.id, pull_only),
            (dict(kind="user", user_id=alice.id), {"acme", "other"}, None, ALL_ACTIONS),
            (dict(kind="edge"), set(), None, pull_only),
        ]
        for attached, orgs, project, actions in cases:
            kind = attached.pop("kind")
            record, token = await store.create_token(kind, **attached, now=NOW)
            assert token.startswith(tf.PREFIXES[kind])
            assert tf.parse_token(token) is not None
            assert record.kind == kind
            assert record.last_used_at is None and record.revoked_at is None
            expected = Principal(kind, record.token_id, frozenset(orgs), project, actions)
            assert await store.authenticate(token, NOW) == expected


async def test_project_and_pull_tokens_are_listed_under_their_org(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store)
        org_token, _ = await store.create_token("org", org_id=web.org_id, description="ci", now=NOW)
        project_token, _ = await store.create_token("project", project_id=web.id, now=NOW + 1)
        pull_token, _ = await store.create_token(
            "pull", project_id=web.id, expires_at=NOW + 3600, now=NOW + 2
        )
        assert project_token.org_id == web.org_id  # filled in from the project
        assert pull_token.org_id == web.org_id
        assert await store.list_tokens(web.org_id) == [org_token, project_token, pull_token]
        assert org_token == TokenRecord(
            org_token.token_id, "org", web.org_id, None, None, "ci", NOW, None, None, None
        )
        alice = await store.create_user("alice", NOW)
        user_token, _ = await store.create_token("user", user_id=alice.id, now=NOW)
        edge_token, _ = await store.create_token("edge", now=NOW + 1)
        assert await store.list_tokens(None) == [user_token, edge_token]
        assert await store.list_tokens("org_nope") == []


async def test_revoked_tokens(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store)
        record, token = await store.create_token("org", org_id=web.org_id, now=NOW)
        assert await store.revoke_token(record.token_id, NOW + 5)
        assert not await store.revoke_token(record.token_id, NOW + 6)  # already revoked
        assert not await store.revoke_token("unknown", NOW)
        assert await store.authenticate(token, NOW + 10) is None
        assert await store.list_tokens(web.org_id) == []
        (listed,) = await store.list_tokens(web.org_id, include_revoked=True)
        assert listed.revoked_at == NOW + 5


async def test_expired_tokens(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store)
        _, token = await store.create_token("pull", org_id=web.org_id, expires_at=NOW + 60, now=NOW)
        assert await store.authenticate(token, NOW + 59.9) is not None
        assert await store.authenticate(token, NOW + 60) is None
        assert await store.authenticate(token, NOW + 3600) is None
        with pytest.raises(InputError):
            await store.create_token("pull", org_id=web.org_id, expires_at=NOW, now=NOW)


async def test_wrong_unknown_and_malformed_tokens(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store)
        record, token = await store.create_token("org", org_id=web.org_id, now=NOW)
        prefix, token_id, secret = token[:4], token[4:20], token[20:]
        wrong_secret = "A" * 32 if secret != "A" * 32 else "B" * 32
        unknown_id = "0" * 16 if token_id != "0" * 16 else "1" * 16
        rejected = [
            prefix + token_id + wrong_secret,
            prefix + unknown_id + secret,
            "dpp_" + token_id + secret,  # the right secret under another kind's prefix
            token + "x",
            token[:-1],
            token.upper(),
            " " + token,
            token + "\n",
            "",
            "dpo_",
            "Bearer " + token,
            "not a token",
        ]
        for text in rejected:
            assert await store.authenticate(text, NOW) is None, text
        assert await store.authenticate(token, NOW) is not None
        assert record.token_id == token_id


async def test_secrets_are_never_stored(store: TenancyStore, store_url: str) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store)
        alice = await store.create_user("alice", NOW)
        created = [
            await store.create_token("org", org_id=web.org_id, now=NOW),
            await store.create_token("project", project_id=web.id, now=NOW),
            await store.create_token("pull", org_id=web.org_id, now=NOW),
            await store.create_token("user", user_id=alice.id, now=NOW),
            await store.create_token("edge", now=NOW),
        ]
        for _, token in created:
            assert await store.authenticate(token, NOW) is not None  # touches last_used_at
        cells = all_cells(store_url)
        for record, token in created:
            _, token_id, secret = tf.parse_token(token) or ("", "", "")
            assert secret
            assert tf.hash_secret(secret) in cells
            assert token_id in cells
            assert not [cell for cell in cells if secret in cell or token in cell]
            assert "secret" not in repr(record).lower()


async def test_token_attachments_are_checked(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store, "acme")
        other = await org_with_project(store, "other")
        alice = await store.create_user("alice", NOW)
        refused: list[tuple[str, dict[str, Any]]] = [
            ("root", {}),
            ("org", {}),
            ("org", {"org_id": web.org_id, "project_id": web.id}),
            ("org", {"org_id": web.org_id, "user_id": alice.id}),
            ("project", {"org_id": web.org_id}),
            ("project", {"org_id": other.org_id, "project_id": web.id}),
            ("pull", {}),
            ("pull", {"user_id": alice.id}),
            ("user", {}),
            ("user", {"user_id": alice.id, "org_id": web.org_id}),
            ("edge", {"org_id": web.org_id}),
        ]
        for kind, attached in refused:
            with pytest.raises(InputError):
                await store.create_token(kind, **attached, now=NOW)
        missing: list[dict[str, Any]] = [
            {"org_id": "org_nope"},
            {"project_id": "nonexistent0"},
        ]
        for attached in missing:
            with pytest.raises(UnknownObject):
                await store.create_token("pull", **attached, now=NOW)
        with pytest.raises(UnknownObject):
            await store.create_token("user", user_id="user_nope", now=NOW)
        assert await store.list_tokens(web.org_id) == []
        assert await store.list_tokens(None) == []


async def test_last_used_at_is_written_at_most_once_a_minute(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store)
        _, token = await store.create_token("org", org_id=web.org_id, now=NOW)

        async def last_used() -> float | None:
            (listed,) = await store.list_tokens(web.org_id)
            return listed.last_used_at

        assert await last_used() is None
        await store.authenticate(token, NOW + 1)
        assert await last_used() == NOW + 1
        await store.authenticate(token, NOW + 30)
        await store.authenticate(token, NOW + TOUCH_INTERVAL_SECONDS)
        assert await last_used() == NOW + 1
        await store.authenticate(token, NOW + 1 + TOUCH_INTERVAL_SECONDS)
        assert await last_used() == NOW + 1 + TOUCH_INTERVAL_SECONDS
        # A failed authentication does not count as a use.
        await store.authenticate(token[:-1] + ("a" if token[-1] != "a" else "b"), NOW + 500)
        assert await last_used() == NOW + 1 + TOUCH_INTERVAL_SECONDS

        # Concurrent first uses all succeed (the conditional update writes once).
        _, fresh = await store.create_token("pull", org_id=web.org_id, now=NOW)
        results: list[Principal | None] = []

        async def use() -> None:
            results.append(await store.authenticate(fresh, NOW + 2))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(use)
        assert len(results) == 8 and all(results)


# -- trust relationships ----------------------------------------------------------------------


async def test_trust_relationships(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store, "acme")
        other = await store.create_org("other", NOW)
        repo_rule = {"repository": "acme/web", "ref": "refs/heads/main"}
        org_trust = await store.create_trust(
            web.org_id,
            issuer=ISSUER,
            audience="depot",
            conditions=repo_rule,
            actions=["push", "pull"],
            description="deploys",
            now=NOW,
        )
        assert re.fullmatch(r"trust_[a-z0-9]{16}", org_trust.id)
        assert org_trust.org_slug == "acme"
        assert org_trust.conditions == repo_rule
        assert org_trust.actions == frozenset({"push", "pull"})
        assert org_trust.project_id is None and org_trust.revoked_at is None
        project_trust = await store.create_trust(
            web.org_id,
            issuer=ISSUER,
            audience="depot",
            conditions={"sub": "repo:acme/web:environment:prod"},
            actions=["pull"],
            project_id=web.id,
            now=NOW + 1,
        )
        elsewhere = await store.create_trust(
            other.id,
            issuer="https://gitlab.example.com",
            audience="depot",
            conditions={"project_path": "other/app"},
            actions=["pull", "push", "delete"],
            now=NOW,
        )
        assert await store.list_trusts(web.org_id) == [org_trust, project_trust]
        assert await store.trusts_for_issuer(ISSUER) == [org_trust, project_trust]
        assert await store.trusts_for_issuer("https://gitlab.example.com") == [elsewhere]
        assert await store.trusts_for_issuer(ISSUER + "/") == []  # exact match only
        assert await store.revoke_trust(org_trust.id, NOW + 5)
        assert not await store.revoke_trust(org_trust.id, NOW + 6)
        assert not await store.revoke_trust("trust_nope", NOW)
        assert await store.trusts_for_issuer(ISSUER) == [project_trust]
        assert await store.list_trusts(web.org_id) == [project_trust]
        listed = await store.list_trusts(web.org_id, include_revoked=True)
        assert [t.revoked_at for t in listed] == [NOW + 5, None]


async def test_trust_relationships_are_validated(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store, "acme")
        other = await org_with_project(store, "other")
        good: dict[str, Any] = {
            "issuer": ISSUER,
            "audience": "depot",
            "conditions": {"sub": "x"},
            "actions": ["pull"],
        }
        refused: list[dict[str, Any]] = [
            {"issuer": "token.actions.githubusercontent.com"},
            {"issuer": "ftp://example.com"},
            {"audience": ""},
            {"conditions": {}},  # would trust every workload of the issuer
            {"conditions": {"sub": 1}},
            {"actions": []},
            {"actions": ["pull", "admin"]},
            {"project_id": other.id},  # another org's project
        ]
        for change in refused:
            with pytest.raises(InputError):
                await store.create_trust(web.org_id, **{**good, **change}, now=NOW)
        with pytest.raises(UnknownObject):
            await store.create_trust("org_nope", **good, now=NOW)
        with pytest.raises(UnknownObject):
            await store.create_trust(web.org_id, **good, project_id="nonexistent0", now=NOW)
        assert await store.list_trusts(web.org_id, include_revoked=True) == []


# -- public repositories ----------------------------------------------------------------------


async def test_public_repositories(store: TenancyStore) -> None:
    with trio.fail_after(20):
        web = await org_with_project(store, "acme")
        other = await store.create_org("other", NOW)
        assert not await store.is_public(web.repository)
        await store.set_public(web.org_id, web.repository, True)
        await store.set_public(web.org_id, web.repository, True)  # idempotent
        await store.set_public(web.org_id, "acme/tools/base", True)
        await store.set_public(other.id, "other/app", True)
        assert await store.is_public(web.repository)
        assert await store.is_public("acme/tools/base")
        assert not await store.is_public("acme/tools")
        assert await store.list_public(web.org_id) == sorted(["acme/tools/base", web.repository])
        await store.set_public(web.org_id, web.repository, False)
        await store.set_public(web.org_id, web.repository, False)  # idempotent
        assert not await store.is_public(web.repository)
        assert await store.list_public(web.org_id) == ["acme/tools/base"]
        assert await store.list_public(other.id) == ["other/app"]


async def test_only_the_orgs_own_repositories_can_be_made_public(store: TenancyStore) -> None:
    with trio.fail_after(20):
        acme = await store.create_org("acme", NOW)
        other = await store.create_org("other", NOW)
        await store.set_public(other.id, "other/app", True)
        for name in ("other/app", "acme", "acmex/app", "app"):
            with pytest.raises(InputError):
                await store.set_public(acme.id, name, True)
        with pytest.raises(InputError):
            await store.set_public(acme.id, "other/app", False)  # cannot hide it either
        with pytest.raises(UnknownObject):
            await store.set_public("org_nope", "acme/app", True)
        assert await store.is_public("other/app")
        assert await store.list_public(acme.id) == []


# -- the store itself -------------------------------------------------------------------------


async def test_shares_a_database_with_the_metadata_store(
    store: TenancyStore, open_database: Callable[[], Database]
) -> None:
    with trio.fail_after(20):
        metadata = MetadataStore(store.database)  # one Database, both stores
        web = await org_with_project(store)
        await metadata.ensure_repository(web.repository, NOW)
        assert await metadata.list_repositories(None, None) == [web.repository]
        assert await store.project(web.id) == web
        store.database.close()
        reopened = TenancyStore(open_database())  # existing tables are kept
        assert await reopened.project(web.id) == web


async def test_closed_store_refuses_calls(store: TenancyStore) -> None:
    with trio.fail_after(20):
        store.database.close()
        with pytest.raises(DatabaseError):
            await store.org_by_slug("acme")
        with pytest.raises(DatabaseError):
            await store.create_org("acme", NOW)
        with pytest.raises(DatabaseError):
            await store.is_public("acme/app")
