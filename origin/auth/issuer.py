"""The token service (Docker token protocol): credentials in, a short-lived signed JWT out.

Credentials are a registry token or a CI provider's OIDC ID token, sent as the password of
Basic auth (``docker login -u x-token -p <token>``) or of an OAuth2 password grant. No
credentials earn an anonymous token that reaches only public repositories. The granted
scopes are the requested ones cut down to what the credential allows; names are resolved
in the context of the host the request came to.
"""

from __future__ import annotations

import datetime
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from config.settings import OriginSettings
from core.auth.access import grant_accesses
from core.auth.principal import ANONYMOUS, Principal
from core.auth.scopes import Access, merge
from core.auth.tokens import Grant, sign_grant
from core.errors import NameInvalid, Unauthorized
from core.reference import parse_repository_name
from origin.auth.gate import Gate
from origin.auth.keys import KeyRing
from origin.auth.oidc import OidcVerifier, TrustRule, principal_for
from origin.auth.ratelimit import CredentialFailures
from origin.auth.store import TenancyStore
from origin.auth.token_format import KINDS as TOKEN_KINDS
from origin.auth.token_format import looks_like_registry_token


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: str  # RFC 3339

    def body(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "access_token": self.token,
            "expires_in": self.expires_in,
            "issued_at": self.issued_at,
        }


class TokenIssuer:
    def __init__(
        self,
        settings: OriginSettings,
        tenancy: TenancyStore,
        keys: KeyRing,
        gate: Gate,
        oidc: OidcVerifier,
        clock: Callable[[], float],
        *,
        failures: CredentialFailures | None = None,
    ) -> None:
        """``failures``: the process's failed-credential limit (shared with ``/v2/`` and
        ``/api/v1/``); one of its own when None."""
        self._settings = settings
        self._tenancy = tenancy
        self._keys = keys
        self._gate = gate
        self._oidc = oidc
        self._clock = clock
        self.failures = failures or CredentialFailures(
            settings.token_failures_allowed,
            settings.token_failure_window_seconds,
            trusted_proxies=settings.trusted_proxies,
            clock=clock,
        )

    async def exchange(
        self, *, host: str, client: str, password: str | None, scopes: Sequence[Access]
    ) -> IssuedToken:
        """A token for ``password`` (None: anonymous) from ``client`` (see
        :meth:`CredentialFailures.client`); 429 once the client has failed too often."""
        now = self._clock()
        principal = ANONYMOUS
        if password is not None:
            await self.failures.check(client)
            found = await self._principal(password)
            if found is None:
                await self.failures.failed(client)
                raise Unauthorized("invalid credentials")
            principal = found
        return await self._issue(principal, host, scopes, now)

    async def _principal(self, password: str) -> Principal | None:
        if looks_like_registry_token(password):
            return await self._tenancy.authenticate(password, self._clock())
        issuer = OidcVerifier.unverified_issuer(password)
        if issuer is None:
            return None
        rules = [
            TrustRule(
                id=trust.id,
                org_slug=trust.org_slug,
                issuer=trust.issuer,
                audience=trust.audience,
                conditions=trust.conditions,
                actions=frozenset(trust.actions),
                project_id=trust.project_id,
            )
            for trust in await self._tenancy.trusts_for_issuer(issuer)
        ]
        if not rules:
            return None
        try:
            rule, claims = await self._oidc.verify(password, rules)
        except Unauthorized:
            return None
        return principal_for(rule, claims)

    async def _issue(
        self, principal: Principal, host: str, scopes: Sequence[Access], now: float
    ) -> IssuedToken:
        resolved: dict[str, str] = {}
        public: set[str] = set()
        for access in merge(scopes):
            if access.type != "repository" or access.name in resolved:
                continue
            try:
                name = parse_repository_name(access.name)
            except NameInvalid:
                continue
            internal = await self._gate.resolve(host, name)
            if internal is None:
                continue
            resolved[access.name] = internal.value
            if await self._tenancy.is_public(internal.value):
                public.add(internal.value)
        granted = grant_accesses(
            principal,
            merge(scopes),
            resolve=resolved.get,
            is_public=public.__contains__,
        )
        issued_at = int(now)
        expires_at = issued_at + int(self._settings.token_ttl_seconds)
        if principal.expires_at is not None:
            # Never valid longer than the credential it was issued for.
            expires_at = max(issued_at, min(expires_at, math.floor(principal.expires_at)))
        ttl = expires_at - issued_at
        grant = Grant(
            subject=principal.subject,
            kind=principal.kind,
            orgs=principal.orgs,
            access=tuple(granted),
            issued_at=issued_at,
            expires_at=expires_at,
            token_id=secrets.token_urlsafe(12),
            project=principal.project,
            # A registry token's principal is named by the token's id: revoking the token
            # refuses this grant too (origin's gate, the edges' event followers).
            parent=principal.subject if principal.kind in TOKEN_KINDS else None,
        )
        key = self._keys.current
        token = sign_grant(
            grant,
            private_key=key.private_key,
            kid=key.kid,
            issuer=self._settings.token_issuer,
            audience=self._settings.token_service,
        )
        return IssuedToken(token, ttl, _rfc3339(issued_at))


def _rfc3339(timestamp: int) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
