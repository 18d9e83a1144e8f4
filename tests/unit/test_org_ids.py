"""Org ids as DNS labels: an org's id names it (subdomain or path style) as its slug does."""

from __future__ import annotations

from core.auth.gate import resolve_name
from core.reference import RepositoryName, parse_repository_name
from core.tenancy import ORG_ID, is_org_id, is_org_slug

BASE = "registry.example"
ACME_ID = "org0a1b2c3d4e5f6g7h"
ORGS = {ACME_ID: "acme"}


async def org_slug(org_id: str) -> str | None:
    return ORGS.get(org_id)


async def no_project(project_id: str) -> str | None:
    return None


async def resolve(host: str, name: str) -> RepositoryName | None:
    return await resolve_name(
        host,
        parse_repository_name(name),
        base_domain=BASE,
        project_org=no_project,
        org_slug=org_slug,
    )


def test_org_id_shape() -> None:
    assert is_org_id(ACME_ID) and is_org_slug(ACME_ID)
    assert ORG_ID.fullmatch("org0a1b2c3d4e5f6g7h")
    for old_or_wrong in (
        "org_0a1b2c3d4e5f6g7h",
        "acme",
        "org0a1b2c3d4e5f6g7",
        "ORG0A1B2C3D4E5F6G7H8",
    ):
        assert not is_org_id(old_or_wrong), old_or_wrong


async def test_an_org_id_names_the_org_on_its_subdomain_and_path_style() -> None:
    assert await resolve(f"{ACME_ID}.{BASE}", "app") == parse_repository_name("acme/app")
    assert await resolve(f"{ACME_ID}.{BASE}:443", "team/app") == parse_repository_name(
        "acme/team/app"
    )
    assert await resolve("127.0.0.1:5000", f"{ACME_ID}/app") == parse_repository_name("acme/app")
    # The slug keeps working.
    assert await resolve(f"acme.{BASE}", "app") == parse_repository_name("acme/app")


async def test_an_unknown_id_shaped_label_is_a_slug() -> None:
    """An older org whose slug happens to have an id's shape stays reachable by slug."""
    other = "org9z9z9z9z9z9z9z9z"
    assert await resolve(f"{other}.{BASE}", "app") == parse_repository_name(f"{other}/app")


async def test_without_an_id_lookup_names_are_slugs() -> None:
    found = await resolve_name(
        f"{ACME_ID}.{BASE}", parse_repository_name("app"), base_domain=BASE, project_org=no_project
    )
    assert found == parse_repository_name(f"{ACME_ID}/app")
