"""OIDC trust relationships against a real local issuer (hypercorn on 127.0.0.1:0)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from core.errors import Unauthorized
from origin.auth.oidc import OidcVerifier, TrustRule, principal_for
from tests.oidc_issuer import (
    DEFAULT_AUDIENCE,
    DEFAULT_SUBJECT,
    OidcIssuer,
    open_oidc_issuer,
)
from tests.oidc_issuer import oidc_issuer_fixture as oidc_issuer_fixture

DISCOVERY = "/.well-known/openid-configuration"
REPO = {"repository": "acme/app"}


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(http: httpx.AsyncClient, clock: FakeClock) -> OidcVerifier:
    return OidcVerifier(http, clock, allow_insecure_loopback=True)


def rule(issuer: str, **overrides: Any) -> TrustRule:
    fields: dict[str, Any] = {
        "id": "tr-1",
        "org_slug": "acme",
        "issuer": issuer,
        "audience": DEFAULT_AUDIENCE,
        "conditions": dict(REPO),
        "actions": frozenset({"pull", "push"}),
        "project_id": None,
    }
    return TrustRule(**{**fields, **overrides})


async def rejected(verifier: OidcVerifier, token: str, rules: list[TrustRule]) -> str:
    with pytest.raises(Unauthorized) as caught:
        await verifier.verify(token, rules)
    detail = caught.value.detail
    assert isinstance(detail, str)
    assert token not in str(caught.value) and token not in detail
    return detail


def tamper(token: str, **claims: Any) -> str:
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**decoded, **claims}).encode()).rstrip(b"=")
    return f"{header}.{forged.decode()}.{signature}"


async def test_valid_token_matches_rule(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        trust = rule(oidc_issuer.url, project_id="p-1")
        matched, claims = await verifier.verify(oidc_issuer.mint(REPO), [trust])
        assert matched is trust
        assert claims["repository"] == "acme/app" and claims["sub"] == DEFAULT_SUBJECT
        principal = principal_for(matched, claims)
        assert principal.kind == "trust"
        assert principal.subject == f"tr-1:{DEFAULT_SUBJECT}"
        assert principal.orgs == frozenset({"acme"}) and principal.project == "p-1"
        assert principal.actions == frozenset({"pull", "push"})


async def test_es256_and_audience_list(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        token = oidc_issuer.mint({**REPO, "aud": ["other", DEFAULT_AUDIENCE]}, alg="ES256")
        matched, _ = await verifier.verify(token, [rule(oidc_issuer.url)])
        assert matched.id == "tr-1"


async def test_condition_mismatch(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        token = oidc_issuer.mint({"repository": "acme/other"})
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "conditions not met"
        token = oidc_issuer.mint({"repository": ["acme/app"]})  # equality, not membership
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "conditions not met"


async def test_missing_claim(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        token = oidc_issuer.mint({"ref": "refs/heads/main"})
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "conditions not met"


async def test_wrong_audience(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        token = oidc_issuer.mint({**REPO, "aud": "someone-else"})
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "audience mismatch"
        token = oidc_issuer.mint(REPO, drop=["aud"])
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "audience mismatch"


async def test_token_times(
    oidc_issuer: OidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    with trio.fail_after(20):
        rules, now = [rule(oidc_issuer.url)], int(clock.now)
        expired = oidc_issuer.mint({**REPO, "iat": now - 600, "exp": now - 300})
        assert await rejected(verifier, expired, rules) == "token expired"
        await verifier.verify(oidc_issuer.mint({**REPO, "exp": now - 30}), rules)  # leeway
        future = oidc_issuer.mint({**REPO, "iat": now + 600, "exp": now + 900})
        assert await rejected(verifier, future, rules) == "token issued in the future"
        early = oidc_issuer.mint({**REPO, "nbf": now + 600})
        assert await rejected(verifier, early, rules) == "token not yet valid"
        for bad in ({"exp": "soon"}, {"exp": True}, {"iat": None}):
            token = oidc_issuer.mint({**REPO, **bad})
            assert await rejected(verifier, token, rules) == "missing or invalid exp/iat/nbf"
        token = oidc_issuer.mint(REPO, drop=["exp"])
        assert await rejected(verifier, token, rules) == "missing or invalid exp/iat/nbf"
        # the caller's clock decides, not the wall clock
        valid = oidc_issuer.mint(REPO)
        clock.now += 3600
        assert await rejected(verifier, valid, rules) == "token expired"


async def test_wrong_issuer(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        rules = [rule(oidc_issuer.url)]
        token = oidc_issuer.mint({**REPO, "iss": "https://token.actions.example.com"})
        assert await rejected(verifier, token, rules) == "no trust relationship for this issuer"
        token = oidc_issuer.mint({**REPO, "iss": oidc_issuer.url + "/"})  # exact match only
        assert await rejected(verifier, token, rules) == "no trust relationship for this issuer"
        assert await rejected(verifier, "not-a-jwt", rules) == "not a JWT"
        assert sum(oidc_issuer.requests.values()) == 0


async def test_other_issuer_cannot_impersonate(
    oidc_issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    with trio.fail_after(20):
        async with open_oidc_issuer() as rogue:
            # Signed by the rogue issuer, claiming to come from the trusted one.
            token = rogue.mint({**REPO, "iss": oidc_issuer.url})
            rules = [rule(oidc_issuer.url)]
            assert await rejected(verifier, token, rules) == "unknown signing key"
            token = rogue.mint({**REPO, "iss": oidc_issuer.url}, kid=oidc_issuer.current_kid)
            assert await rejected(verifier, token, rules) == "invalid signature"
            assert sum(rogue.requests.values()) == 0


async def test_alg_none_refused(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        token = oidc_issuer.mint(REPO, alg="none", kid=oidc_issuer.current_kid)
        assert token.endswith(".")
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "algorithm not allowed"
        assert sum(oidc_issuer.requests.values()) == 0


async def test_hs256_with_public_key_refused(
    oidc_issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    with trio.fail_after(20):
        token = oidc_issuer.mint(
            REPO, alg="HS256", key=oidc_issuer.public_pem(), kid=oidc_issuer.current_kid
        )
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "algorithm not allowed"


async def test_key_not_in_jwks(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rules = [rule(oidc_issuer.url)]
        # Claims a published kid: the signature does not verify.
        token = oidc_issuer.mint(REPO, key=foreign, kid=oidc_issuer.current_kid)
        assert await rejected(verifier, token, rules) == "invalid signature"
        # Its own kid: one JWKS refetch, still unknown.
        token = oidc_issuer.mint(REPO, key=foreign, kid="foreign-1")
        assert await rejected(verifier, token, rules) == "unknown signing key"
        assert oidc_issuer.requests["/jwks"] == 2
        # An RS256 token naming the EC key's kid: no key for that kid and algorithm.
        token = oidc_issuer.mint(REPO, key=foreign, kid=oidc_issuer.latest("ES256").kid)
        assert await rejected(verifier, token, rules) == "unknown signing key"
        assert oidc_issuer.requests["/jwks"] == 2


async def test_tampered_payload(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        rules = [rule(oidc_issuer.url, conditions={"repository": "acme/prod"})]
        token = tamper(oidc_issuer.mint({"repository": "acme/dev"}), repository="acme/prod")
        assert await rejected(verifier, token, rules) == "invalid signature"


async def test_key_rotation_refetches_once(
    oidc_issuer: OidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    with trio.fail_after(20):
        rules = [rule(oidc_issuer.url)]
        await verifier.verify(oidc_issuer.mint(REPO), rules)
        assert oidc_issuer.requests == {DISCOVERY: 1, "/jwks": 1}
        new_kid = oidc_issuer.rotate()
        matched, _ = await verifier.verify(oidc_issuer.mint(REPO), rules)
        assert matched is rules[0]
        assert oidc_issuer.requests == {DISCOVERY: 1, "/jwks": 2}
        await verifier.verify(oidc_issuer.mint(REPO, kid=new_kid), rules)
        old = oidc_issuer.keys[0]  # still published: tokens it signed keep verifying
        await verifier.verify(oidc_issuer.mint(REPO, kid=old.kid, key=old.private_key), rules)
        assert oidc_issuer.requests == {DISCOVERY: 1, "/jwks": 2}
        # Unknown kids cannot make the verifier hammer the issuer: one refetch per interval.
        bogus = oidc_issuer.mint(REPO, kid="made-up")
        for _ in range(5):
            assert await rejected(verifier, bogus, rules) == "unknown signing key"
        assert oidc_issuer.requests["/jwks"] == 2
        clock.now += 61
        assert await rejected(verifier, bogus, rules) == "unknown signing key"
        assert oidc_issuer.requests["/jwks"] == 3


async def test_discovery_cached(
    oidc_issuer: OidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    with trio.fail_after(20):
        rules = [rule(oidc_issuer.url)]
        token = oidc_issuer.mint({**REPO, "exp": int(clock.now) + 3600})
        await verifier.verify(token, rules)
        await verifier.verify(token, rules)
        await verifier.verify(oidc_issuer.mint(REPO, alg="ES256"), rules)
        assert oidc_issuer.requests == {DISCOVERY: 1, "/jwks": 1}
        clock.now += 601  # past the TTL: discovery and keys are fetched again
        await verifier.verify(token, rules)
        assert oidc_issuer.requests == {DISCOVERY: 2, "/jwks": 2}


async def test_concurrent_verifies_fetch_once(
    oidc_issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    with trio.fail_after(20):
        rules = [rule(oidc_issuer.url)]
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(verifier.verify, oidc_issuer.mint(REPO), rules)
        assert oidc_issuer.requests == {DISCOVERY: 1, "/jwks": 1}


async def test_issuer_down(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        token = oidc_issuer.mint(REPO)
        await oidc_issuer.stop()
        started = trio.current_time()
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "issuer unreachable"
        assert trio.current_time() - started < 2


async def test_stale_keys_survive_an_outage(
    oidc_issuer: OidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    with trio.fail_after(20):
        rules = [rule(oidc_issuer.url)]
        token = oidc_issuer.mint({**REPO, "exp": int(clock.now) + 3 * 3600})
        await verifier.verify(token, rules)
        await oidc_issuer.stop()
        clock.now += 601  # past the TTL, the refresh fails: cached keys still serve
        await verifier.verify(token, rules)
        clock.now += 3600  # past TTL + stale-if-error
        assert await rejected(verifier, token, rules) == "issuer unreachable"


async def test_issuer_hangs(oidc_issuer: OidcIssuer, http: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        verifier = OidcVerifier(http, allow_insecure_loopback=True, fetch_timeout_seconds=0.5)
        oidc_issuer.stall = True
        token, rules = oidc_issuer.mint(REPO), [rule(oidc_issuer.url)]
        started = trio.current_time()
        assert await rejected(verifier, token, rules) == "issuer unreachable"
        assert trio.current_time() - started < 2
        # Backoff after a failure: the next attempt fails fast without another request.
        assert await rejected(verifier, token, rules) == "issuer unreachable"
        assert oidc_issuer.requests == {DISCOVERY: 1}


@pytest.mark.parametrize(
    "override",
    [
        {"issuer": "http://127.0.0.1:1"},
        {"jwks_uri": None},
        {"jwks_uri": "http://keys.example.com/jwks"},
        {"padding": "x" * (2 * 1024 * 1024)},
    ],
    ids=["issuer-mismatch", "no-jwks-uri", "insecure-jwks-uri", "oversized"],
)
async def test_bad_discovery_document(
    oidc_issuer: OidcIssuer, verifier: OidcVerifier, override: dict[str, Any]
) -> None:
    with trio.fail_after(20):
        oidc_issuer.discovery_override = override
        token = oidc_issuer.mint(REPO)
        assert await rejected(verifier, token, [rule(oidc_issuer.url)]) == "issuer unreachable"
        assert oidc_issuer.requests["/jwks"] == 0


async def test_first_matching_rule_wins(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        rules = [
            rule("https://token.actions.example.com", id="other-issuer", conditions={}),
            rule(oidc_issuer.url, id="other-audience", audience="sts.example", conditions={}),
            rule(oidc_issuer.url, id="other-repo", conditions={"repository": "acme/other"}),
            rule(oidc_issuer.url, id="main", conditions={**REPO, "ref": "refs/heads/main"}),
            rule(oidc_issuer.url, id="any-ref"),
        ]
        token = oidc_issuer.mint({**REPO, "ref": "refs/heads/main"})
        assert (await verifier.verify(token, rules))[0].id == "main"
        token = oidc_issuer.mint({**REPO, "ref": "refs/heads/feature"})
        assert (await verifier.verify(token, rules))[0].id == "any-ref"


async def test_insecure_issuers_refused(oidc_issuer: OidcIssuer, http: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        permissive = OidcVerifier(http, allow_insecure_loopback=True)
        token = oidc_issuer.mint({**REPO, "iss": "http://issuer.example.com"})
        rules = [rule("http://issuer.example.com")]
        assert await rejected(permissive, token, rules) == "issuer not allowed"
        strict = OidcVerifier(http)  # loopback over http only when allowed
        token = oidc_issuer.mint(REPO)
        assert await rejected(strict, token, [rule(oidc_issuer.url)]) == "issuer not allowed"
        assert sum(oidc_issuer.requests.values()) == 0
        assert strict.issuer_allowed("https://token.actions.githubusercontent.com")
        assert not strict.issuer_allowed("https://user:pw@issuer.example.com")
        assert not strict.issuer_allowed("ftp://issuer.example.com")


async def test_no_rules_for_issuer(oidc_issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    with trio.fail_after(20):
        token = oidc_issuer.mint(REPO)
        assert await rejected(verifier, token, []) == "no trust relationship for this issuer"
        assert sum(oidc_issuer.requests.values()) == 0


def test_unverified_issuer() -> None:  # pure: no server, no I/O
    issuer = OidcIssuer()
    issuer.url = "https://issuer.example.com"
    assert OidcVerifier.unverified_issuer(issuer.mint(REPO)) == issuer.url
    assert OidcVerifier.unverified_issuer(issuer.mint(REPO, alg="none")) == issuer.url
    assert OidcVerifier.unverified_issuer(issuer.mint({"iss": 7})) is None
    assert OidcVerifier.unverified_issuer(issuer.mint(drop=["iss"])) is None
    for garbage in ("", "x-token", "a.b.c", "a.b", "..", "ey." * 2 + "x" * 40_000):
        assert OidcVerifier.unverified_issuer(garbage) is None
