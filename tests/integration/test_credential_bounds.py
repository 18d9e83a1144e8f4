"""What a credential can reach, and for how long, against a real origin: bearer tokens never
outlive the credential they were issued for, a project-bound caller's catalog lists only its
project, and failed credentials are limited alike on ``/token``, ``/v2/`` and ``/api/v1/``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from core.auth.tokens import Grant, sign_grant, verify_grant
from origin.auth.keys import KeyRing
from tests.integration.oci import new_image, push_manifest
from tests.integration.tenants import (
    Tenants,
    basic,
    bearer,
    bearer_for,
    claims_of,
    exchange,
    start_tenants,
)

TIMEOUT = 30


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "data", token_failures_allowed=3)
    yield running
    running.origin.shutdown.set()
    running.store.close()


def client_for(
    tenants: Tenants, headers: dict[str, str] | None = None, *, source: str | None = None
) -> httpx.AsyncClient:
    """A client of origin; ``source``: the loopback address it connects from."""
    transport = httpx.AsyncHTTPTransport(local_address=source) if source else None
    return httpx.AsyncClient(
        base_url=tenants.url,
        trust_env=False,
        timeout=TIMEOUT,
        headers=headers or {},
        transport=transport,
    )


async def test_bearer_tokens_never_outlive_their_credential(tenants: Tenants) -> None:
    now = time.time()
    _, short = await tenants.store.create_token(
        "org", org_id=tenants.acme_id, expires_at=now + 60, now=now
    )
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            answer = await exchange(http, short, "repository:acme/app:pull")
            assert answer.status_code == 200, answer.text
            claims = claims_of(answer.json()["token"])
            assert isinstance(claims["exp"], int) and isinstance(claims["iat"], int)
            assert claims["exp"] <= int(now + 60)  # not iat + 300
            assert answer.json()["expires_in"] == claims["exp"] - claims["iat"] <= 60
            # A credential without an expiry still gets the configured lifetime.
            lasting = (await exchange(http, tenants.acme, "repository:acme/app:pull")).json()
            assert lasting["expires_in"] == 300


async def test_a_project_callers_catalog_lists_only_its_project(tenants: Tenants) -> None:
    project_repo = f"acme/{tenants.project}"
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, basic(tenants.acme)) as http:
            for repository in ("acme/app", project_repo, "acme/zz/other"):
                await push_manifest(http, repository, new_image(), "v1")
            everything = (await http.get("/v2/_catalog")).json()["repositories"]
            assert everything == sorted(["acme/app", project_repo, "acme/zz/other"])
        async with client_for(tenants, basic(tenants.acme_project)) as http:
            assert (await http.get("/v2/_catalog")).json() == {"repositories": [project_repo]}
            listed = await http.get("/v2/_catalog", params={"n": "1", "last": project_repo})
            assert listed.json() == {"repositories": []}
        async with client_for(tenants) as http:
            token = await bearer_for(http, tenants.acme_project, "registry:catalog:*")
            assert claims_of(token["Authorization"][7:])["project"] == tenants.project
            http.headers.update(token)
            assert (await http.get("/v2/_catalog")).json() == {"repositories": [project_repo]}
            # An org token's bearer grant names no project and lists the org.
            org = await bearer_for(http, tenants.acme, "registry:catalog:*")
            assert "project" not in claims_of(org["Authorization"][7:])
            listed = await http.get("/v2/_catalog", headers=org)
            assert listed.json()["repositories"] == everything


def test_tokens_without_a_project_claim_still_verify(tmp_path: Path) -> None:
    keys = KeyRing.load(tmp_path / "keys")
    now = int(time.time())
    grant = Grant("t1", "project", frozenset({"acme"}), (), now, now + 60, "jti")
    token = sign_grant(
        grant, private_key=keys.current.private_key, kid=keys.current.kid, issuer="i", audience="a"
    )
    verified = verify_grant(token, jwks=keys.jwks(), issuer="i", audience="a", now=now)
    assert verified.project is None and verified.orgs == frozenset({"acme"})
    bound = Grant("t1", "project", frozenset({"acme"}), (), now, now + 60, "jti", project="p1")
    token = sign_grant(
        bound, private_key=keys.current.private_key, kid=keys.current.kid, issuer="i", audience="a"
    )
    assert verify_grant(token, jwks=keys.jwks(), issuer="i", audience="a", now=now) == bound


async def test_failed_credentials_are_limited_alike_everywhere(tenants: Tenants) -> None:
    wrong = "dpo_" + "x" * 40
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, source="127.0.0.2") as guesser:
            # One failure at each door: /v2/ (Basic), /api/v1/ (Bearer), /token (Basic).
            assert (await guesser.get("/v2/", headers=basic(wrong))).status_code == 401
            api = await guesser.get("/api/v1/orgs", headers=bearer(wrong))
            assert api.status_code == 401
            assert (await exchange(guesser, wrong)).status_code == 401
            # Limited now at all three, good credentials included.
            for response in (
                await guesser.get("/v2/", headers=basic(tenants.acme)),
                await guesser.get("/api/v1/orgs", headers=bearer(tenants.acme)),
                await exchange(guesser, tenants.acme),
            ):
                assert response.status_code == 429, response.request.url
                assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
                assert int(response.headers["Retry-After"]) >= 1
            # Anonymous requests are no guesses: still answered.
            assert (await exchange(guesser, None)).status_code == 200
        async with client_for(tenants, source="127.0.0.3") as other:
            assert (await other.get("/v2/", headers=basic(tenants.acme))).status_code == 200
            api = await other.get("/api/v1/orgs", headers=bearer(tenants.acme))
            assert api.status_code == 200
