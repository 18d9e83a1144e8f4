"""Auth and tenancy against a real origin: the Docker token flow, Basic x-token, tenants kept
apart, and every way a credential can be wrong."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
import sqlalchemy as sa
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from origin.auth.schema import tokens
from tests.integration.oci import (
    Manifest,
    new_artifact,
    new_image,
    push_blob,
    push_manifest,
    random_blob,
)
from tests.integration.tenants import (
    BASE_DOMAIN,
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
    running = await start_tenants(nursery, tmp_path / "data")
    yield running
    running.origin.shutdown.set()
    running.store.close()


def client_for(tenants: Tenants, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=tenants.url, trust_env=False, timeout=TIMEOUT, headers=headers or {}
    )


async def seed(tenants: Tenants, repo: str = "acme/app") -> Manifest:
    """An image in ``repo`` pushed with acme's org token (Basic, as some clients do)."""
    manifest = new_image(layers=2)
    async with client_for(tenants, basic(tenants.acme)) as http:
        await push_manifest(http, repo, manifest, "v1")
    return manifest


async def test_v2_challenges_anonymous_clients(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            response = await http.get("/v2/")
            assert response.status_code == 401
            assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
            challenge = response.headers["WWW-Authenticate"]
            host = tenants.url.removeprefix("http://")
            assert challenge == f'Bearer realm="http://{host}/token",service="depot-registry"'
            response = await http.get("/v2/acme/app/manifests/v1")
            assert response.status_code == 401
            assert 'scope="repository:acme/app:pull"' in response.headers["WWW-Authenticate"]


async def test_docker_token_flow_push_and_pull(tenants: Tenants) -> None:
    manifest = new_image(layers=2)
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            response = await exchange(http, tenants.acme, "repository:acme/app:pull,push")
            assert response.status_code == 200
            body = response.json()
            assert body["token"] == body["access_token"]
            assert body["expires_in"] == 300
            assert body["issued_at"].endswith("Z")
            claims = claims_of(body["token"])
            assert claims["aud"] == "depot-registry"
            assert claims["access"] == [
                {"type": "repository", "name": "acme/app", "actions": ["pull", "push"]}
            ]
            http.headers.update(bearer(body["token"]))
            assert (await http.get("/v2/")).status_code == 200
            await push_manifest(http, "acme/app", manifest, "v1")
            fetched = await http.get("/v2/acme/app/manifests/v1")
            assert fetched.status_code == 200
            assert fetched.content == manifest.payload


async def test_oauth2_password_grant(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            response = await http.post(
                "/token",
                data={
                    "grant_type": "password",
                    "username": "x-token",
                    "password": tenants.acme,
                    "service": "depot-registry",
                    "scope": "repository:acme/app:pull",
                },
            )
            assert response.status_code == 200, response.text
            assert claims_of(response.json()["access_token"])["access"] == [
                {"type": "repository", "name": "acme/app", "actions": ["pull"]}
            ]
            refused = await http.post("/token", data={"grant_type": "refresh_token"})
            assert refused.status_code in (400, 405)


async def test_basic_x_token_directly_on_v2(tenants: Tenants) -> None:
    manifest = await seed(tenants)
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, basic(tenants.acme_pull)) as http:
            response = await http.get(f"/v2/acme/app/manifests/{manifest.digest}")
            assert response.status_code == 200
            assert response.content == manifest.payload


@pytest.mark.parametrize("which", ["wrong", "garbage", "revoked", "expired"])
async def test_bad_registry_tokens_are_refused(tenants: Tenants, which: str) -> None:
    token = tenants.acme
    if which == "wrong":
        token = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    elif which == "garbage":
        token = "not-a-token"
    elif which == "revoked":
        record, token = await tenants.store.create_token(
            "org", org_id=tenants.acme_id, now=time.time()
        )
        assert await tenants.store.revoke_token(record.token_id, time.time())
    else:
        record, token = await tenants.store.create_token(
            "org", org_id=tenants.acme_id, now=time.time(), expires_at=time.time() + 60
        )
        expire_token(tenants, record.token_id)
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            response = await exchange(http, token, "repository:acme/app:pull")
            assert response.status_code == 401
            assert "token" not in response.json()
            direct = await http.get("/v2/acme/app/tags/list", headers=basic(token))
            assert direct.status_code == 401


def expire_token(tenants: Tenants, token_id: str) -> None:
    """Move a token's expiry into the past behind the server's back (its clock is real)."""
    engine = sa.create_engine(tenants.origin.settings.resolved_database_url)
    with engine.begin() as conn:
        conn.execute(sa.update(tokens).where(tokens.c.token_id == token_id).values(expires_at=1.0))
    engine.dispose()


def _forge(claims: dict[str, object], key: object, algorithm: str, kid: str) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})  # type: ignore[arg-type]


async def test_forged_and_tampered_bearer_tokens_are_refused(tenants: Tenants) -> None:
    manifest = await seed(tenants)
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            good = (await exchange(http, tenants.acme, "repository:acme/app:pull")).json()["token"]
            header = jwt.get_unverified_header(good)
            claims = claims_of(good)
            now = int(time.time())
            escalated = dict(
                claims, access=[{"type": "repository", "name": "other/secret", "actions": ["pull"]}]
            )
            foreign_key = ec.generate_private_key(ec.SECP256R1())
            jwks = (await http.get("/.well-known/jwks.json")).json()
            public_pem = jwt.algorithms.ECAlgorithm.from_jwk(jwks["keys"][0]).public_bytes(  # type: ignore[union-attr]
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            head, _, signature = good.split(".")
            tampered = jwt.utils.base64url_encode(json.dumps(escalated).encode()).decode()
            candidates = {
                "tampered": f"{head}.{tampered}.{signature}",
                "foreign key": _forge(escalated, foreign_key, "ES256", header["kid"]),
                "alg none": jwt.encode(escalated, None, algorithm="none"),
                "HS256 with public key": _hs256(escalated, public_pem, header["kid"]),
                "expired": _resign_expired(claims, now),
                "garbage": "a.b.c",
            }
            for label, token in candidates.items():
                response = await http.get(
                    f"/v2/acme/app/manifests/{manifest.digest}", headers=bearer(token)
                )
                assert response.status_code == 401, label
                assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], label


def _hs256(claims: dict[str, object], secret: bytes, kid: str) -> str:
    # By hand: pyjwt refuses to HMAC-sign with a PEM public key, which is the attack.
    def b64(data: bytes) -> str:
        return jwt.utils.base64url_encode(data).decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def _resign_expired(claims: dict[str, object], now: int) -> str:
    # Signed by a key the registry does not know either; the expiry alone is tested in
    # the unit tests of verify_grant with the registry's own key.
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(dict(claims, exp=now - 60, iat=now - 600), key, algorithm="ES256")


async def test_wrong_audience_signed_by_the_registry_is_refused(tenants: Tenants) -> None:
    from core.auth.tokens import Grant, sign_grant
    from origin.auth.keys import KeyRing

    keys = KeyRing.load(tenants.origin.settings.data_dir / "keys", create=False)
    now = int(time.time())
    grant = Grant("x", "org", frozenset({"acme"}), (), now, now + 300, "jti")
    token = sign_grant(
        grant,
        private_key=keys.current.private_key,
        kid=keys.current.kid,
        issuer="depot-registry",
        audience="someone-else",
    )
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, bearer(token)) as http:
            assert (await http.get("/v2/")).status_code == 401


async def test_scope_escalation_is_cut_to_what_the_token_allows(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            response = await exchange(
                http,
                tenants.acme_pull,
                "repository:acme/app:pull,push,delete",
                "repository:other/app:pull",
            )
            assert response.status_code == 200
            assert claims_of(response.json()["token"])["access"] == [
                {"type": "repository", "name": "acme/app", "actions": ["pull"]}
            ]
            http.headers.update(bearer(response.json()["token"]))
            pushed = await http.post("/v2/acme/app/blobs/uploads/")
            assert pushed.status_code == 401
            assert 'error="insufficient_scope"' in pushed.headers["WWW-Authenticate"]


async def test_pull_token_cannot_push_with_basic(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, basic(tenants.acme_pull)) as http:
            response = await http.post("/v2/acme/app/blobs/uploads/")
            assert response.status_code == 403
            assert response.json()["errors"][0]["code"] == "DENIED"
            deleted = await http.delete("/v2/acme/app/manifests/v1")
            assert deleted.status_code == 403


async def test_project_token_reaches_only_its_project(tenants: Tenants) -> None:
    project_repo = f"acme/{tenants.project}"
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, basic(tenants.acme_project)) as http:
            await push_manifest(http, project_repo, new_image(), "build1")
            assert (await http.post("/v2/acme/app/blobs/uploads/")).status_code == 403
            assert (await http.get("/v2/acme/app/tags/list")).status_code == 403
            response = await exchange(http, tenants.acme_project, "repository:acme/app:pull")
            assert claims_of(response.json()["token"])["access"] == []


async def test_org_b_never_reaches_org_a(tenants: Tenants) -> None:
    manifest = await seed(tenants)
    layer = manifest.blobs[-1]
    referrer = new_artifact("application/vnd.example.sig", manifest)
    async with client_for(tenants, basic(tenants.acme)) as http:
        await push_manifest(http, "acme/app", referrer)
    with trio.fail_after(TIMEOUT):
        for headers in (
            basic(tenants.other),
            await _bearer(
                tenants,
                tenants.other,
                "repository:acme/app:pull,push,delete",
                "repository:other/app:pull,push",
            ),
        ):
            async with client_for(tenants, headers) as http:
                attempts = [
                    await http.get(f"/v2/acme/app/blobs/{layer.digest}"),
                    await http.head(f"/v2/acme/app/blobs/{layer.digest}"),
                    await http.get("/v2/acme/app/manifests/v1"),
                    await http.get("/v2/acme/app/tags/list"),
                    await http.get(f"/v2/acme/app/referrers/{manifest.digest}"),
                    await http.post("/v2/acme/app/blobs/uploads/"),
                    await http.put("/v2/acme/app/manifests/v2", content=manifest.payload),
                    await http.delete(f"/v2/acme/app/manifests/{manifest.digest}"),
                    await http.delete(f"/v2/acme/app/blobs/{layer.digest}"),
                ]
                for response in attempts:
                    assert response.status_code in (401, 403), response.request.url
                    assert layer.data not in response.content
                    assert manifest.payload not in response.content
                # Mounting A's blob into B by digest falls back to a plain upload.
                mount = await http.post(
                    "/v2/other/app/blobs/uploads/",
                    params={"mount": layer.digest, "from": "acme/app"},
                )
                assert mount.status_code == 202, mount.text
                assert (await http.head(f"/v2/other/app/blobs/{layer.digest}")).status_code == 404
                catalog = await http.get("/v2/_catalog")
                assert catalog.status_code == 200
                assert "acme/app" not in catalog.json()["repositories"]
    # The owner still sees everything.
    async with client_for(tenants, basic(tenants.acme)) as http:
        assert (await http.get(f"/v2/acme/app/blobs/{layer.digest}")).content == layer.data
        assert (await http.get("/v2/_catalog")).json()["repositories"] == ["acme/app"]


async def _bearer(tenants: Tenants, token: str, *scopes: str) -> dict[str, str]:
    async with client_for(tenants) as http:
        return await bearer_for(http, token, *scopes)


async def test_org_subdomain_path_style_and_legacy_project_urls(tenants: Tenants) -> None:
    subdomain = f"acme.{BASE_DOMAIN}"
    manifest = new_image()
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, {"Host": subdomain, **basic(tenants.acme)}) as http:
            await push_manifest(http, "your/app", manifest, "v1")
            response = await http.get("/v2/your/app/manifests/v1")
            assert response.status_code == 200
            assert (await http.get("/v2/_catalog")).json() == {"repositories": ["your/app"]}
            tags = await http.get("/v2/your/app/tags/list")
            assert tags.json() == {"name": "your/app", "tags": ["v1"]}
            # A one-component name on the org host is the project's repository.
            await push_manifest(http, tenants.project, manifest, "build-1")
        async with client_for(tenants, {"Host": BASE_DOMAIN, **basic(tenants.acme)}) as http:
            path_style = await http.get("/v2/acme/your/app/manifests/v1")
            assert path_style.content == manifest.payload
            legacy = await http.get(f"/v2/{tenants.project}/manifests/build-1")
            assert legacy.status_code == 200
            assert legacy.content == manifest.payload
            also = await http.get(f"/v2/acme/{tenants.project}/manifests/build-1")
            assert also.content == manifest.payload
            unknown = await http.get("/v2/nosuchproject/manifests/build-1")
            assert unknown.status_code in (401, 403, 404)
        # A bearer token obtained on the subdomain works for the same repository there.
        async with client_for(tenants, {"Host": subdomain}) as http:
            token = await bearer_for(
                http, tenants.acme_pull, "repository:your/app:pull", host=subdomain
            )
            assert claims_of(token["Authorization"][7:])["access"] == [
                {"type": "repository", "name": "acme/your/app", "actions": ["pull"]}
            ]
            response = await http.get("/v2/your/app/manifests/v1", headers=token)
            assert response.status_code == 200


async def test_public_repositories_allow_anonymous_pull_only(tenants: Tenants) -> None:
    manifest = await seed(tenants, "acme/public")
    await tenants.store.set_public(tenants.acme_id, "acme/public", True)
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            token = await bearer_for(http, None, "repository:acme/public:pull,push")
            assert claims_of(token["Authorization"][7:])["access"] == [
                {"type": "repository", "name": "acme/public", "actions": ["pull"]}
            ]
            response = await http.get("/v2/acme/public/manifests/v1", headers=token)
            assert response.content == manifest.payload
            upload = await http.post("/v2/acme/public/blobs/uploads/", headers=token)
            assert upload.status_code == 401
            assert (await http.get("/v2/acme/app/tags/list", headers=token)).status_code == 401


async def test_failed_exchanges_are_rate_limited(nursery: trio.Nursery, tmp_path: Path) -> None:
    tenants = await start_tenants(nursery, tmp_path / "data", token_failures_allowed=3)
    try:
        with trio.fail_after(TIMEOUT):
            async with client_for(tenants) as http:
                for _ in range(3):
                    assert (await exchange(http, "dpo_wrong")).status_code == 401
                limited = await exchange(http, tenants.acme)  # even a good one, now
                assert limited.status_code == 429
                assert int(limited.headers["Retry-After"]) >= 1
                assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    finally:
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_secrets_never_reach_the_logs(
    tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants) as http:
            response = await exchange(http, tenants.acme, "repository:acme/app:pull,push")
            issued = response.json()["token"]
            await exchange(http, tenants.acme + "x", "repository:acme/app:pull")
            async with client_for(tenants, basic(tenants.other)) as other:
                await push_blob(other, "other/app", random_blob(10))
    text = caplog.text
    for secret in (tenants.acme, tenants.other, issued):
        assert secret not in text


async def test_behind_a_trusted_edge_failures_are_limited_per_client(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    tenants = await start_tenants(
        nursery, tmp_path / "data", token_failures_allowed=2, trusted_proxies="127.0.0.1"
    )
    try:
        with trio.fail_after(TIMEOUT):
            async with client_for(tenants, {"X-Forwarded-For": "198.51.100.1"}) as first:
                for _ in range(2):
                    assert (await exchange(first, "dpo_wrong")).status_code == 401
                assert (await exchange(first, tenants.acme)).status_code == 429
            async with client_for(tenants, {"X-Forwarded-For": "198.51.100.2"}) as second:
                assert (await exchange(second, tenants.acme)).status_code == 200
    finally:
        tenants.origin.shutdown.set()
        tenants.store.close()
