"""A CI job trades its OIDC ID token for a registry token (``docker login -u x-token -p
<id token>``), against a real local issuer, end to end through a real origin."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.oci import new_image, push_manifest
from tests.integration.tenants import Tenants, basic, claims_of, exchange, start_tenants
from tests.oidc_issuer import OidcIssuer
from tests.oidc_issuer import oidc_issuer_fixture as oidc_issuer_fixture

TIMEOUT = 30
AUDIENCE = "depot-registry"


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "data", oidc_allow_insecure_loopback=True)
    yield running
    running.origin.shutdown.set()
    running.store.close()


async def trust(tenants: Tenants, issuer: OidcIssuer, actions: tuple[str, ...]) -> None:
    await tenants.store.create_trust(
        tenants.acme_id,
        issuer=issuer.url,
        audience=AUDIENCE,
        conditions={"repository": "acme/app"},
        actions=actions,
        now=time.time(),
    )


async def test_ci_id_token_is_exchanged_for_a_registry_token(
    tenants: Tenants, oidc_issuer: OidcIssuer
) -> None:
    await trust(tenants, oidc_issuer, ("pull", "push"))
    id_token = oidc_issuer.mint({"aud": AUDIENCE, "repository": "acme/app"})
    manifest = new_image()
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(base_url=tenants.url, trust_env=False) as http:
            response = await exchange(
                http, id_token, "repository:acme/app:pull,push,delete", "repository:other/x:pull"
            )
            assert response.status_code == 200, response.text
            granted = response.json()["token"]
            claims = claims_of(granted)
            assert claims["kind"] == "trust"
            assert claims["access"] == [
                {"type": "repository", "name": "acme/app", "actions": ["pull", "push"]}
            ]
            http.headers["Authorization"] = f"Bearer {granted}"
            await push_manifest(http, "acme/app", manifest, "ci")
            fetched = await http.get("/v2/acme/app/manifests/ci")
            assert fetched.content == manifest.payload


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": AUDIENCE, "repository": "acme/other"},  # condition not met
        {"aud": "someone-else", "repository": "acme/app"},  # wrong audience
        {"aud": AUDIENCE, "repository": "acme/app", "exp": 1},  # long expired
    ],
)
async def test_id_tokens_that_do_not_match_are_refused(
    tenants: Tenants, oidc_issuer: OidcIssuer, claims: dict[str, object]
) -> None:
    await trust(tenants, oidc_issuer, ("pull", "push"))
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(base_url=tenants.url, trust_env=False) as http:
            response = await exchange(http, oidc_issuer.mint(claims), "repository:acme/app:pull")
            assert response.status_code == 401
            assert "token" not in response.json()


async def test_an_id_token_is_not_accepted_directly_on_v2(
    tenants: Tenants, oidc_issuer: OidcIssuer
) -> None:
    # Only the token service verifies ID tokens; /v2 takes registry tokens and our JWTs.
    await trust(tenants, oidc_issuer, ("pull",))
    id_token = oidc_issuer.mint({"aud": AUDIENCE, "repository": "acme/app"})
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(base_url=tenants.url, trust_env=False) as http:
            assert (await http.get("/v2/", headers=basic(id_token))).status_code == 401
            bearer = {"Authorization": f"Bearer {id_token}"}
            assert (await http.get("/v2/acme/app/tags/list", headers=bearer)).status_code == 401
