"""Authorising ``/v2/`` requests at origin: the shared rules of :mod:`core.auth.gate`, with
origin's own ways of knowing who asks.

- Basic ``x-token:<token>``: the registry token is authenticated against the tenancy store;
  a wrong one is refused at once with a Basic challenge, and counts against the client's
  failed-credential limit (shared with ``/token`` and ``/api/v1/``: 429 past it).
- Bearer: verified with origin's own keys; a token that fails verification is answered as
  anonymous (public repositories stay readable) with ``error="invalid_token"`` when refused.
  So is one whose ``parent`` (the registry token it was issued for) is revoked or expired
  now: revoking a token refuses its bearer tokens at once (one key lookup per request).
- Legacy project ids are resolved against the tenancy store, and visibility is read there.
"""

from __future__ import annotations

from collections.abc import Callable

from config.settings import OriginSettings
from core.auth import gate as rules
from core.auth.credentials import parse_authorization
from core.auth.principal import ANONYMOUS
from core.auth.request import Authorization, RequestView
from core.auth.tokens import verify_grant
from core.errors import Unauthorized
from core.reference import RepositoryName
from origin.auth.keys import KeyRing
from origin.auth.ratelimit import CredentialFailures
from origin.auth.store import TenancyStore


class Gate:
    def __init__(
        self,
        settings: OriginSettings,
        tenancy: TenancyStore,
        keys: KeyRing,
        clock: Callable[[], float],
        *,
        failures: CredentialFailures | None = None,
    ) -> None:
        self._settings = settings
        self._tenancy = tenancy
        self._keys = keys
        self._clock = clock
        self._failures = failures or CredentialFailures(
            settings.token_failures_allowed,
            settings.token_failure_window_seconds,
            trusted_proxies=settings.trusted_proxies,
            clock=clock,
        )

    async def resolve(self, host: str, name: RepositoryName) -> RepositoryName | None:
        """The internal name ``name`` means on ``host``; None when it addresses nothing."""
        if not self._settings.auth:
            return name
        return await rules.resolve_name(
            host,
            name,
            base_domain=self._settings.base_domain or None,
            project_org=self._project_org,
            org_slug=self._org_slug,
        )

    async def _project_org(self, project_id: str) -> str | None:
        project = await self._tenancy.project(project_id)
        return None if project is None else project.org_slug

    async def _org_slug(self, org_id: str) -> str | None:
        org = await self._tenancy.org_by_id(org_id)
        return None if org is None else org.slug

    async def authorize(self, view: RequestView) -> Authorization:
        required = rules.required_for(view)
        if not self._settings.auth:
            return rules.open_authorization(required)
        names = await rules.resolve_names(view.host, required, self.resolve)
        return await rules.decide_request(
            view,
            required,
            names,
            await self._present(view),
            service=self._settings.token_service,
            is_public=self._tenancy.is_public,
        )

    async def _present(self, view: RequestView) -> rules.Presented:
        credentials = parse_authorization(view.authorization)
        if credentials is None:
            return rules.Presented(rules.NONE, ANONYMOUS)
        if credentials.scheme == rules.BEARER:
            try:
                grant = verify_grant(
                    credentials.secret,
                    jwks=self._keys.jwks(),
                    issuer=self._settings.token_issuer,
                    audience=self._settings.token_service,
                    now=self._clock(),
                )
            except Unauthorized:
                return rules.Presented(rules.BEARER, ANONYMOUS, "invalid_token")
            if grant.parent is not None and not await self._tenancy.token_in_force(
                grant.parent, self._clock()
            ):
                # Its registry token was revoked (or expired): so is every grant it earned.
                return rules.Presented(rules.BEARER, ANONYMOUS, "invalid_token")
            return rules.Presented(rules.BEARER, grant)
        if credentials.scheme == rules.BASIC:
            client = self._failures.client(view.remote_addr, view.forwarded_for)
            await self._failures.check(client)
            principal = None
            if credentials.secret:
                principal = await self._tenancy.authenticate(credentials.secret, self._clock())
            if principal is None:
                await self._failures.failed(client)
                raise rules.invalid_credentials()
            return rules.Presented(rules.BASIC, principal)
        return rules.Presented(rules.NONE, ANONYMOUS)
