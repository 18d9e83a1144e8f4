"""OIDC trust relationships: a CI job's ID token as a registry credential.

An organization trusts an issuer (``iss`` must equal it exactly) for one audience, under
conditions (claim → required string value, every one must hold; a missing claim fails). The
token is verified against the issuer's published keys: discovery document
(``<issuer>/.well-known/openid-configuration``) → ``jwks_uri`` → JWKS, both cached per issuer.

Only issuers named by a candidate rule are ever fetched — never the URL a token claims — and
only over https (plain http to loopback when allowed, for tests). Only RS256 and ES256 are
accepted; ``none`` and HS* are refused before any key is looked at.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import trio

from core.auth.principal import Principal
from core.errors import Unauthorized

ALGORITHMS = frozenset({"RS256", "ES256"})
MAX_TOKEN_BYTES = 32 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_KEYS = 64
UNREACHABLE = "issuer unreachable"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class TrustRule:
    id: str
    org_slug: str
    issuer: str
    audience: str
    #: claim name → the exact string value it must have
    conditions: Mapping[str, str]
    actions: frozenset[str]
    project_id: str | None


def principal_for(rule: TrustRule, claims: Mapping[str, Any]) -> Principal:
    expires = claims.get("exp")
    return Principal(
        kind="trust",
        subject=f"{rule.id}:{claims.get('sub', '')}",
        orgs=frozenset({rule.org_slug}),
        project=rule.project_id,
        actions=rule.actions,
        # The ID token's own expiry: a registry token issued for it must not outlive it.
        expires_at=float(expires) if isinstance(expires, int | float) else None,
    )


def _reject(reason: str) -> Unauthorized:
    return Unauthorized("invalid OIDC token", detail=reason)


@dataclass
class _IssuerState:
    lock: trio.Lock = field(default_factory=trio.Lock)
    jwks_uri: str | None = None
    keys: tuple[tuple[str | None, jwt.PyJWK], ...] = ()
    fetched_at: float = -math.inf  # discovery + JWKS
    forced_at: float = -math.inf  # last refetch for an unknown kid
    failed_at: float = -math.inf

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        usable = [(key_id, key) for key_id, key in self.keys if key.algorithm_name == alg]
        if kid is None:  # no kid: only unambiguous when the issuer has one such key
            return usable[0][1] if len(usable) == 1 else None
        return next((key for key_id, key in usable if key_id == kid), None)

    def knows(self, kid: str) -> bool:
        return any(key_id == kid for key_id, _ in self.keys)


class OidcVerifier:
    """Verifies ID tokens against trust rules; caches each issuer's keys.

    The caller owns ``http`` (create it with ``trust_env=False``, no redirects); ``clock``
    returns Unix seconds and is used both for token times and for cache ages. Keys are cached
    for ``cache_ttl_seconds``; past it, a failed refresh keeps the old keys for
    ``stale_if_error_seconds`` more. After a failed fetch the issuer is not asked again for
    ``failure_backoff_seconds``.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
        *,
        allow_insecure_loopback: bool = False,
        cache_ttl_seconds: float = 600,
        refetch_interval_seconds: float = 60,
        failure_backoff_seconds: float = 5,
        stale_if_error_seconds: float = 3600,
        fetch_timeout_seconds: float = 10,
        leeway_seconds: float = 60,
    ) -> None:
        self._http = http
        self._clock = clock
        self._allow_insecure_loopback = allow_insecure_loopback
        self._ttl = cache_ttl_seconds
        self._refetch_interval = refetch_interval_seconds
        self._failure_backoff = failure_backoff_seconds
        self._stale_if_error = stale_if_error_seconds
        self._fetch_timeout = fetch_timeout_seconds
        self._leeway = leeway_seconds
        self._issuers: dict[str, _IssuerState] = {}

    @staticmethod
    def unverified_issuer(token: str) -> str | None:
        """The token's ``iss``, unverified — only to pick candidate rules. None if not a JWT."""
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            return None
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, RecursionError):
            return None
        iss = claims.get("iss")
        return iss if isinstance(iss, str) else None

    async def verify(
        self, token: str, rules: Sequence[TrustRule]
    ) -> tuple[TrustRule, Mapping[str, Any]]:
        """The first rule the token satisfies, and its verified claims; else Unauthorized."""
        issuer = self.unverified_issuer(token)
        if issuer is None:
            raise _reject("not a JWT")
        candidates = [rule for rule in rules if rule.issuer == issuer]
        if not candidates:
            raise _reject("no trust relationship for this issuer")
        if not self.issuer_allowed(issuer):
            raise _reject("issuer not allowed")
        claims = await self._verified_claims(token, issuer)
        self._check_times(claims)
        audiences = _audiences(claims.get("aud"))
        candidates = [rule for rule in candidates if rule.audience in audiences]
        if not candidates:
            raise _reject("audience mismatch")
        for rule in candidates:
            if all(claims.get(name) == value for name, value in rule.conditions.items()):
                return rule, claims
        raise _reject("conditions not met")

    def issuer_allowed(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            return False
        if not hostname or parts.query or parts.fragment or parts.username or parts.password:
            return False
        if parts.scheme == "https":
            return True
        return (
            parts.scheme == "http" and self._allow_insecure_loopback and hostname in _LOOPBACK_HOSTS
        )

    async def _verified_claims(self, token: str, issuer: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, RecursionError) as exc:
            raise _reject("malformed token") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise _reject("algorithm not allowed")
        if "crit" in header or "b64" in header:
            raise _reject("unsupported token header")
        if kid is not None and not isinstance(kid, str):
            raise _reject("malformed token")
        key = await self._key_for(issuer, kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_exp": False,  # times are checked against our clock below
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,  # per rule
                    "verify_iss": False,  # already matched exactly
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except (jwt.PyJWTError, ValueError, RecursionError) as exc:
            raise _reject("invalid signature") from exc
        if claims.get("iss") != issuer:  # the signed payload, not just the unverified read
            raise _reject("issuer mismatch")
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now, leeway = self._clock(), self._leeway
        exp, iat = _time(claims.get("exp")), _time(claims.get("iat"))
        nbf = _time(claims["nbf"]) if "nbf" in claims else 0.0
        if exp is None or iat is None or nbf is None:
            raise _reject("missing or invalid exp/iat/nbf")
        if now > exp + leeway:
            raise _reject("token expired")
        if iat > now + leeway:
            raise _reject("token issued in the future")
        if nbf > now + leeway:
            raise _reject("token not yet valid")

    async def _key_for(self, issuer: str, kid: str | None, alg: str) -> jwt.PyJWK:
        state = self._issuers.setdefault(issuer, _IssuerState())
        async with state.lock:
            age = self._clock() - state.fetched_at
            if age >= self._ttl:
                try:
                    await self._refresh(state, issuer, discovery=True)
                except Unauthorized:  # an issuer outage need not stop logins at once
                    if age >= self._ttl + self._stale_if_error:
                        raise
            key = state.find(kid, alg)
            now = self._clock()
            if key is None and kid is not None and not state.knows(kid):
                # Key rotation: the issuer may have published a key we have not seen yet.
                # Throttled per issuer so a stream of made-up kids cannot hammer the issuer.
                if now - state.forced_at >= self._refetch_interval:
                    state.forced_at = now
                    await self._refresh(state, issuer, discovery=False)
                    key = state.find(kid, alg)
        if key is None:
            raise _reject("unknown signing key")
        return key

    async def _refresh(self, state: _IssuerState, issuer: str, *, discovery: bool) -> None:
        now = self._clock()
        if now - state.failed_at < self._failure_backoff:
            raise _reject(UNREACHABLE)
        try:
            jwks_uri = state.jwks_uri
            if discovery or jwks_uri is None:
                doc = await self._fetch_json(
                    issuer.rstrip("/") + "/.well-known/openid-configuration"
                )
                jwks_uri = doc.get("jwks_uri")
                if doc.get("issuer") != issuer or not isinstance(jwks_uri, str):
                    raise ValueError("discovery document does not match the issuer")
                if not self.issuer_allowed(jwks_uri):
                    raise ValueError("jwks_uri not allowed")
            keys = _parse_jwks(await self._fetch_json(jwks_uri))
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, trio.TooSlowError) as exc:
            state.failed_at = now
            raise _reject(UNREACHABLE) from exc
        except (ValueError, RecursionError) as exc:  # status, size, JSON, document shape
            state.failed_at = now
            raise _reject(UNREACHABLE) from exc
        state.jwks_uri, state.keys, state.failed_at = jwks_uri, keys, -math.inf
        if discovery:
            state.fetched_at = now

    async def _fetch_json(self, url: str) -> dict[str, Any]:
        body = bytearray()
        with trio.fail_after(self._fetch_timeout):
            async with self._http.stream(
                "GET", url, headers={"Accept": "application/json", "Accept-Encoding": "identity"}
            ) as response:
                if response.status_code != 200:
                    raise ValueError(f"status {response.status_code}")
                length = response.headers.get("Content-Length", "0")
                if not length.isdigit() or int(length) > MAX_DOCUMENT_BYTES:
                    raise ValueError("document too large")
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise ValueError("document too large")
        doc = json.loads(bytes(body))
        if not isinstance(doc, dict):
            raise ValueError("document is not a JSON object")
        return doc


def _parse_jwks(doc: Mapping[str, Any]) -> tuple[tuple[str | None, jwt.PyJWK], ...]:
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise ValueError("JWKS without keys")
    keys: list[tuple[str | None, jwt.PyJWK]] = []
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError):
            continue  # a key we cannot use must not hide the ones we can
        if key.algorithm_name in ALGORITHMS:
            keys.append((kid, key))
    return tuple(keys)


def _audiences(aud: object) -> frozenset[str]:
    if isinstance(aud, str):
        return frozenset({aud})
    if isinstance(aud, list):
        return frozenset(a for a in aud if isinstance(a, str))
    return frozenset()


def _time(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None
