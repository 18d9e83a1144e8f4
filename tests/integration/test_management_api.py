"""The ``/api/v1/`` management API against a real origin: credentials, orgs, projects,
tokens (created here, working at ``/token`` and ``/v2``, stopping when revoked here), every
permission rule, bad bodies, and secrets never coming back. Trust relationships and
repository visibility: ``test_management_trust.py``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.integration.management import ORGS, TIMEOUT, client_for, create, fixed_secrets, seed
from tests.integration.oci import assert_error
from tests.integration.tenants import Tenants, basic, bearer, exchange, start_tenants

CHALLENGE = 'Bearer realm="depot-registry"'


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "data")
    yield running
    running.origin.shutdown.set()
    running.store.close()


async def test_credentials_are_registry_tokens_only(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        record, revoked = await tenants.store.create_token(
            "org", org_id=tenants.acme_id, now=time.time()
        )
        assert await tenants.store.revoke_token(record.token_id, time.time())
        async with client_for(tenants) as http:
            jwt = (await exchange(http, tenants.acme, "repository:acme/app:pull")).json()["token"]
            refused = {
                "none": {},
                "garbage": bearer("not-a-token"),
                "wrong secret": bearer(
                    tenants.acme[:-1] + ("a" if tenants.acme[-1] != "a" else "b")
                ),
                "short-lived JWT": bearer(jwt),
                "revoked": bearer(revoked),
                "revoked basic": basic(revoked),
                "other scheme": {"Authorization": f"Token {tenants.acme}"},
            }
            for label, headers in refused.items():
                response = await http.get(ORGS, headers=headers)
                assert_error(response, 401, "UNAUTHORIZED")
                assert response.headers["WWW-Authenticate"] == CHALLENGE, label
                assert revoked not in response.text
            for headers in (bearer(tenants.acme), basic(tenants.acme)):
                assert (await http.get(ORGS, headers=headers)).status_code == 200


async def test_orgs_the_token_reaches(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        now = time.time()
        user = await tenants.store.create_user("alice", now)
        await tenants.store.add_member(user.id, tenants.acme_id)
        await tenants.store.add_member(user.id, tenants.other_id)
        _, user_token = await tenants.store.create_token("user", user_id=user.id, now=now)
        async with client_for(tenants) as http:
            expected = {
                tenants.acme: ["acme"],
                tenants.acme_pull: ["acme"],
                tenants.acme_project: ["acme"],
                tenants.other: ["other"],
                user_token: ["acme", "other"],
            }
            for token, names in expected.items():
                response = await http.get(ORGS, headers=bearer(token))
                assert response.status_code == 200
                assert [o["name"] for o in response.json()["orgs"]] == names
            for ref in ("acme", tenants.acme_id):
                org = (await http.get(f"{ORGS}/{ref}", headers=bearer(tenants.acme))).json()
                assert org["id"] == tenants.acme_id and org["name"] == "acme"
                assert (await http.get(f"{ORGS}/{ref}", headers=bearer(user_token))).is_success
            # Another org is indistinguishable from one that does not exist.
            hidden = await http.get(f"{ORGS}/other", headers=bearer(tenants.acme))
            missing = await http.get(f"{ORGS}/nosuch", headers=bearer(tenants.acme))
            assert_error(hidden, 404, "NOT_FOUND")
            assert_error(missing, 404, "NOT_FOUND")
            by_id = await http.get(f"{ORGS}/{tenants.other_id}", headers=bearer(tenants.acme))
            assert_error(by_id, 404, "NOT_FOUND")
            assert hidden.json()["errors"][0]["message"] == missing.json()["errors"][0]["message"]


async def test_projects(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            created = await create(http, f"{ORGS}/acme/projects", {"name": "api service"})
            assert created["name"] == "api service"
            assert created["org_id"] == tenants.acme_id
            assert created["repository"] == f"acme/{created['id']}"
            listed = (await http.get(f"{ORGS}/{tenants.acme_id}/projects")).json()["projects"]
            assert {p["id"] for p in listed} == {tenants.project, created["id"]}
            one = await http.get(f"{ORGS}/acme/projects/{created['id']}")
            assert one.json() == created
            assert_error(await http.get(f"{ORGS}/acme/projects/nosuch"), 404, "NOT_FOUND")
            other = await http.post(f"{ORGS}/other/projects", json={"name": "x"})
            assert_error(other, 404, "NOT_FOUND")

            as_project = bearer(tenants.acme_project)
            mine = await http.get(f"{ORGS}/acme/projects", headers=as_project)
            assert [p["id"] for p in mine.json()["projects"]] == [tenants.project]
            own = await http.get(f"{ORGS}/acme/projects/{tenants.project}", headers=as_project)
            assert own.json()["name"] == "web"
            sibling = await http.get(f"{ORGS}/acme/projects/{created['id']}", headers=as_project)
            assert_error(sibling, 404, "NOT_FOUND")
            for token in (tenants.acme_pull, tenants.acme_project):
                write = await http.post(
                    f"{ORGS}/acme/projects", json={"name": "x"}, headers=bearer(token)
                )
                assert_error(write, 403, "DENIED")
            pull_view = await http.get(f"{ORGS}/acme/projects", headers=bearer(tenants.acme_pull))
            assert len(pull_view.json()["projects"]) == 2
            # A project of acme is not reachable through other's path, even by other.
            cross = await http.get(
                f"{ORGS}/other/projects/{tenants.project}", headers=bearer(tenants.other)
            )
            assert_error(cross, 404, "NOT_FOUND")


async def test_created_token_works_until_revoked_through_the_api(tenants: Tenants) -> None:
    await seed(tenants, "acme/app")
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            response = await http.post(
                f"{ORGS}/acme/tokens",
                json={"kind": "pull", "description": "ci", "expires_in_seconds": 3600},
            )
            assert response.status_code == 201, response.text
            assert response.headers["Cache-Control"] == "no-store"
            created = response.json()
            token = created["token"]
            assert token.startswith("dpr_") and created["token_id"] in token
            assert created["kind"] == "pull" and created["description"] == "ci"
            assert created["expires_at"] == pytest.approx(time.time() + 3600, abs=60)

            listed = (await http.get(f"{ORGS}/acme/tokens")).json()["tokens"]
            assert created["token_id"] in {t["token_id"] for t in listed}
            assert "token" not in json.dumps(listed).replace("token_id", "")
            assert token not in json.dumps(listed)

            assert (await exchange(http, token, "repository:acme/app:pull")).status_code == 200
            pulled = await http.get("/v2/acme/app/manifests/v1", headers=basic(token))
            assert pulled.status_code == 200
            assert (await http.get(ORGS, headers=bearer(token))).status_code == 200

            revoke = await http.delete(f"{ORGS}/acme/tokens/{created['token_id']}")
            assert revoke.status_code == 204 and revoke.content == b""
            assert (await exchange(http, token, "repository:acme/app:pull")).status_code == 401
            refused = await http.get("/v2/acme/app/manifests/v1", headers=basic(token))
            assert refused.status_code == 401
            assert_error(await http.get(ORGS, headers=bearer(token)), 401, "UNAUTHORIZED")
            again = await http.delete(f"{ORGS}/acme/tokens/{created['token_id']}")
            assert again.status_code == 204  # idempotent
            shown = (await http.get(f"{ORGS}/acme/tokens?include_revoked=true")).json()
            revoked = [t for t in shown["tokens"] if t["token_id"] == created["token_id"]]
            assert revoked[0]["revoked_at"] is not None
            active = (await http.get(f"{ORGS}/acme/tokens")).json()["tokens"]
            assert created["token_id"] not in {t["token_id"] for t in active}


async def test_token_permissions_and_no_escalation(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            other_tokens = await http.get(f"{ORGS}/other/tokens", headers=bearer(tenants.other))
            other_id = other_tokens.json()["tokens"][0]["token_id"]
            cross = await http.delete(f"{ORGS}/acme/tokens/{other_id}")
            assert_error(cross, 404, "NOT_FOUND")
            hidden = await http.delete(f"{ORGS}/other/tokens/{other_id}")
            assert_error(hidden, 404, "NOT_FOUND")
            assert (await exchange(http, tenants.other)).status_code == 200  # still valid

            for token in (tenants.acme_project, tenants.acme_pull):
                for kind in ("org", "project", "pull"):
                    document: dict[str, Any] = {"kind": kind}
                    if kind == "project":
                        document["project_id"] = tenants.project
                    minted = await http.post(
                        f"{ORGS}/acme/tokens", json=document, headers=bearer(token)
                    )
                    assert_error(minted, 403, "DENIED")
                victim = await http.delete(f"{ORGS}/acme/tokens/{other_id}", headers=bearer(token))
                assert_error(victim, 403, "DENIED")

            # Reading: the pull token sees the org's tokens, the project token its project's.
            pull_view = await http.get(f"{ORGS}/acme/tokens", headers=bearer(tenants.acme_pull))
            assert {t["kind"] for t in pull_view.json()["tokens"]} == {"org", "pull", "project"}
            project_view = await http.get(
                f"{ORGS}/acme/tokens", headers=bearer(tenants.acme_project)
            )
            assert {t["project_id"] for t in project_view.json()["tokens"]} == {tenants.project}

            project_token = await create(
                http, f"{ORGS}/acme/tokens", {"kind": "project", "project_id": tenants.project}
            )
            assert project_token["token"].startswith("dpp_")
            assert project_token["project_id"] == tenants.project
            other_project = await tenants.store.create_project(tenants.other_id, "o", time.time())
            foreign = await http.post(
                f"{ORGS}/acme/tokens", json={"kind": "project", "project_id": other_project.id}
            )
            assert_error(foreign, 404, "NOT_FOUND")
            bad_documents: list[Any] = [
                {"kind": "user"},
                {"kind": "edge"},
                {"kind": "org", "project_id": tenants.project},
                {"kind": "project"},
                {"kind": "pull", "expires_in_seconds": -5},
                {"kind": "pull", "expires_in_seconds": 0},
                {"kind": "pull", "expires_in_seconds": True},
                {"kind": "pull", "expires_in_seconds": "1d"},
                {"kind": "pull", "description": 7},
                {"kind": "pull", "description": "x" * 201},
                {"kind": "pull", "scope": "everything"},
                {"kind": ["org"]},
                {},
            ]
            for document in bad_documents:
                response = await http.post(f"{ORGS}/acme/tokens", json=document)
                assert_error(response, 400, "INVALID_REQUEST")


async def test_user_tokens_manage_their_memberships(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        now = time.time()
        user = await tenants.store.create_user("bob", now)
        await tenants.store.add_member(user.id, tenants.acme_id)
        _, user_token = await tenants.store.create_token("user", user_id=user.id, now=now)
        async with client_for(tenants, user_token) as http:
            project = await create(http, f"{ORGS}/acme/projects", {"name": "from a user"})
            org_token = await create(http, f"{ORGS}/acme/tokens", {"kind": "org"})
            assert org_token["token"].startswith("dpo_")
            assert (await http.get(ORGS, headers=bearer(org_token["token"]))).is_success
            assert project["org_id"] == tenants.acme_id
            assert_error(await http.get(f"{ORGS}/other/tokens"), 404, "NOT_FOUND")
            outside = await http.post(f"{ORGS}/other/tokens", json={"kind": "org"})
            assert_error(outside, 404, "NOT_FOUND")


async def test_bad_bodies_get_the_error_envelope(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            path = f"{ORGS}/acme/projects"
            json_type = {"Content-Type": "application/json"}
            bodies = [b"{", b"", b"[]", b'"name"', b"null", b'{"name": NaN}', b"[" * 5000]
            for body in bodies:
                response = await http.post(path, content=body, headers=json_type)
                assert_error(response, 400, "INVALID_REQUEST")
            for document in ({}, {"name": ""}, {"name": 5}, {"name": "x", "org": "other"}):
                assert_error(await http.post(path, json=document), 400, "INVALID_REQUEST")
            form = await http.post(path, data={"name": "x"})
            assert_error(form, 400, "INVALID_REQUEST")
            plain = await http.post(path, content=b'{"name": "x"}')
            assert_error(plain, 400, "INVALID_REQUEST")
            huge = await http.post(path, json={"name": "x" * 100_000})
            assert_error(huge, 413, "SIZE_INVALID")
            assert_error(await http.delete(path), 405, "UNSUPPORTED")
            assert_error(await http.get("/api/v1/nothing"), 404, "NOT_FOUND")
            projects = (await http.get(path)).json()["projects"]
            assert [p["id"] for p in projects] == [tenants.project]


async def test_secrets_stay_out_of_listings_and_logs(
    tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            created = [
                (await create(http, f"{ORGS}/acme/tokens", {"kind": kind}))["token"]
                for kind in ("org", "pull")
            ]
            bodies = []
            for token in (tenants.acme, tenants.acme_pull, tenants.acme_project, *created):
                for suffix in ("", "/acme", "/acme/tokens", "/acme/projects"):
                    response = await http.get(ORGS + suffix, headers=bearer(token))
                    assert response.status_code == 200
                    bodies.append(response.text)
            await http.get(ORGS, headers=bearer(created[0] + "x"))
    for text in bodies:
        for secret in created:
            assert secret not in text
            assert secret[20:] not in text  # not even the secret part alone
    for secret in [*created, *fixed_secrets(tenants)]:
        assert secret not in caplog.text


async def test_projects_resolve_for_edges_and_their_own_org_only(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    tenants = await start_tenants(nursery, tmp_path / "data")
    try:
        _, edge_token = await tenants.store.create_token("edge", now=time.time())
        with trio.fail_after(30):
            async with httpx.AsyncClient(base_url=tenants.url, trust_env=False) as http:
                path = f"/api/v1/projects/{tenants.project}"
                for token in (edge_token, tenants.acme, tenants.acme_pull):
                    response = await http.get(path, headers=basic(token))
                    assert response.status_code == 200, response.text
                    assert response.json()["org_slug"] == "acme"
                    assert response.json()["id"] == tenants.project
                hidden = await http.get(path, headers=basic(tenants.other))
                assert hidden.status_code == 404
                unknown = await http.get(
                    "/api/v1/projects/nosuchproject", headers=basic(edge_token)
                )
                assert unknown.status_code == 404
                assert (await http.get(path)).status_code == 401
    finally:
        tenants.origin.shutdown.set()
        tenants.store.close()
