"""The management API's OIDC trust relationships (created, listed, revoked, validated) and
repository visibility (anonymous pulls follow it), against a real origin."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.integration.management import ORGS, TIMEOUT, client_for, create, seed
from tests.integration.oci import assert_error
from tests.integration.tenants import Tenants, bearer, bearer_for, start_tenants


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "data")
    yield running
    running.origin.shutdown.set()
    running.store.close()


ISSUER = "https://token.actions.githubusercontent.com"


def trust_document(**changes: Any) -> dict[str, Any]:
    document = {
        "issuer": ISSUER,
        "audience": "depot-registry",
        "conditions": {"repository": "acme/app"},
        "actions": ["pull", "push"],
    }
    document.update(changes)
    return document


async def test_trust_relationships(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            path = f"{ORGS}/acme/trust-relationships"
            created = await create(
                http, path, trust_document(project_id=tenants.project, description="gha")
            )
            assert created["issuer"] == ISSUER and created["actions"] == ["pull", "push"]
            assert created["conditions"] == {"repository": "acme/app"}
            assert created["project_id"] == tenants.project and created["org_id"] == tenants.acme_id
            listed = (await http.get(path)).json()["trust_relationships"]
            assert [t["id"] for t in listed] == [created["id"]]
            for token in (tenants.acme_pull, tenants.acme_project):
                seen = await http.get(path, headers=bearer(token))
                assert [t["id"] for t in seen.json()["trust_relationships"]] == [created["id"]]
                assert_error(
                    await http.post(path, json=trust_document(), headers=bearer(token)),
                    403,
                    "DENIED",
                )
                assert_error(
                    await http.delete(f"{path}/{created['id']}", headers=bearer(token)),
                    403,
                    "DENIED",
                )
            other = await http.delete(
                f"{ORGS}/other/trust-relationships/{created['id']}", headers=bearer(tenants.other)
            )
            assert_error(other, 404, "NOT_FOUND")
            assert_error(
                await http.get(f"{ORGS}/acme/trust-relationships", headers=bearer(tenants.other)),
                404,
                "NOT_FOUND",
            )
            foreign_project = await tenants.store.create_project(tenants.other_id, "o", time.time())
            assert_error(
                await http.post(path, json=trust_document(project_id=foreign_project.id)),
                404,
                "NOT_FOUND",
            )

            deleted = await http.delete(f"{path}/{created['id']}")
            assert deleted.status_code == 204
            assert (await http.get(path)).json()["trust_relationships"] == []
            assert_error(await http.delete(f"{path}/trust_nosuch"), 404, "NOT_FOUND")


# The full matrix is in tests/unit/test_issuer_url.py; these go through the API.
REFUSED_ISSUERS = [
    "http://token.actions.githubusercontent.com",
    "https://10.0.0.1",
    "https://169.254.169.254/latest",
    "https://[::1]",
    "https://[::ffff:10.0.0.1]",
    "https://2130706433",
    "https://localhost",
    "http://127.0.0.1:8080",
    "https://user:pass@issuer.example",
    "https://issuer.example/?x=1",
    "https://issuer.example/#frag",
]


async def test_trust_validation(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            path = f"{ORGS}/acme/trust-relationships"
            for issuer in REFUSED_ISSUERS:
                response = await http.post(path, json=trust_document(issuer=issuer))
                assert_error(response, 400, "INVALID_REQUEST")
            bad: list[dict[str, Any]] = [
                trust_document(actions=["pull", "admin"]),
                trust_document(actions=[]),
                trust_document(actions="pull"),
                trust_document(conditions={}),
                trust_document(conditions={"repository": 1}),
                trust_document(conditions={"repository": {"nested": "x"}}),
                trust_document(conditions={"": "x"}),
                trust_document(conditions=["repository"]),
                trust_document(audience=""),
                trust_document(issuer=None),
                trust_document(extra=True),
            ]
            for document in bad:
                assert_error(await http.post(path, json=document), 400, "INVALID_REQUEST")
            assert (await http.get(path)).json()["trust_relationships"] == []
            # A public host (never fetched here: only used when a CI token names it).
            await create(http, path, trust_document(issuer="https://issuer.example:8443/org"))
            await create(http, path, trust_document(issuer="https://8.8.8.8"))


async def test_insecure_loopback_issuers_when_allowed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    tenants = await start_tenants(nursery, tmp_path / "data", oidc_allow_insecure_loopback=True)
    try:
        with trio.fail_after(TIMEOUT):
            async with client_for(tenants, tenants.acme) as http:
                path = f"{ORGS}/acme/trust-relationships"
                await create(http, path, trust_document(issuer="http://127.0.0.1:8080"))
                still_private = await http.post(path, json=trust_document(issuer="http://10.0.0.1"))
                assert_error(still_private, 400, "INVALID_REQUEST")
                also = await http.post(path, json=trust_document(issuer="https://192.168.0.1"))
                assert_error(also, 400, "INVALID_REQUEST")
    finally:
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_visibility_toggles_anonymous_pulls(tenants: Tenants) -> None:
    await seed(tenants, "acme/team/app")
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http, client_for(tenants) as anonymous:
            visibility = f"{ORGS}/acme/repositories/team/app/visibility"

            async def anonymous_pull() -> int:
                token = await bearer_for(anonymous, None, "repository:acme/team/app:pull")
                response = await anonymous.get("/v2/acme/team/app/manifests/v1", headers=token)
                return response.status_code

            assert await anonymous_pull() == 401
            assert (await http.get(visibility)).json() == {
                "repository": "acme/team/app",
                "public": False,
            }
            response = await http.put(visibility, json={"public": True})
            assert response.status_code == 200
            assert response.json() == {"repository": "acme/team/app", "public": True}
            assert await anonymous_pull() == 200
            assert (await http.get(visibility, headers=bearer(tenants.acme_pull))).json()["public"]

            for token in (tenants.acme_pull, tenants.acme_project):
                denied = await http.put(visibility, json={"public": False}, headers=bearer(token))
                assert_error(denied, 403, "DENIED")
            hidden = await http.put(
                visibility, json={"public": False}, headers=bearer(tenants.other)
            )
            assert_error(hidden, 404, "NOT_FOUND")
            other_path = f"{ORGS}/other/repositories/team/app/visibility"
            assert_error(await http.put(other_path, json={"public": True}), 404, "NOT_FOUND")
            for document in ({"public": "yes"}, {}, {"public": 1}, {"public": True, "x": 1}):
                assert_error(await http.put(visibility, json=document), 400, "INVALID_REQUEST")
            bad_name = await http.put(f"{ORGS}/acme/repositories/Bad!/visibility", json={})
            assert_error(bad_name, 400, "NAME_INVALID")

            assert (await http.put(visibility, json={"public": False})).status_code == 200
            assert await anonymous_pull() == 401
