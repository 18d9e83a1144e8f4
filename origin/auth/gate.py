"""Authorising ``/v2/`` requests at origin: the shared rules of :mod:`core.auth.gate`, with
origin's own ways of knowing who asks.

- Basic ``x-token:<token>``: the registry token is authenticated against the tenancy store;
  a wrong one is refused at once with a Basic challenge.
- Bearer: verified with origin's own keys; a token that fails verification is answered as
  anonymous (public repositories stay readable) with ``error="invalid_token"`` when refused.
- Legacy project ids are resolved against the tenancy store, and visibility is read there.
"""

from __future__ import annotations

from collections.abc import Callable

from config.settings import OriginSettings
from core.auth.credentials import parse_authorization
from core.auth.gate import (
    BASIC,
    BEARER,
    NONE,
    Presented,
    decide_request,
    invalid_credentials,
    open_authorization,
    required_for,
    resolve_name,
    resolve_names,
)
from core.auth.principal import ANONYMOUS
from core.auth.request import Authorization, RequestView
from core.auth.tokens import verify_grant
from core.errors import Unauthorized
from core.reference import RepositoryName
from origin.auth.keys import KeyRing
from origin.auth.store import TenancyStore


class Gate:
    def __init__(
        self,
        settings: OriginSettings,
        tenancy: TenancyStore,
        keys: KeyRing,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._tenancy = tenancy
        self._keys = keys
        self._clock = clock

    async def resolve(self, host: str, name: RepositoryName) -> RepositoryName | None:
        """The internal name ``name`` means on ``host``; None when it addresses nothing."""
        if not self._settings.auth:
            return name
        return await resolve_name(
            host,
            name,
            base_domain=self._settings.base_domain or None,
            project_org=self._project_org,
        )

    async def _project_org(self, project_id: str) -> str | None:
        project = await self._tenancy.project(project_id)
        return None if project is None else project.org_slug

    async def authorize(self, view: RequestView) -> Authorization:
        required = required_for(view)
        if not self._settings.auth:
            return open_authorization(required)
        names = await resolve_names(view.host, required, self.resolve)
        return await decide_request(
            view,
            required,
            names,
            await self._present(view.authorization),
            service=self._settings.token_service,
            is_public=self._tenancy.is_public,
        )

    async def _present(self, header: str | None) -> Presented:
        credentials = parse_authorization(header)
        if credentials is None:
            return Presented(NONE, ANONYMOUS)
        if credentials.scheme == BEARER:
            try:
                grant = verify_grant(
                    credentials.secret,
                    jwks=self._keys.jwks(),
                    issuer=self._settings.token_issuer,
                    audience=self._settings.token_service,
                    now=self._clock(),
                )
            except Unauthorized:
                return Presented(BEARER, ANONYMOUS, "invalid_token")
            return Presented(BEARER, grant)
        if credentials.scheme == BASIC:
            principal = None
            if credentials.secret:
                principal = await self._tenancy.authenticate(credentials.secret, self._clock())
            if principal is None:
                raise invalid_credentials()
            return Presented(BASIC, principal)
        return Presented(NONE, ANONYMOUS)
