"""Authorising ``/v2/`` requests: whose repository a name means, and whether the caller may.

Names arrive as the client sees them (org subdomain, path style, legacy project URL) and
leave as internal ``<org>/<path>`` names; the caller answers with the external name in
``Location`` headers. Bearer tokens carry internal names, so a token is honoured on any
host that resolves to the same repository.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from config.settings import OriginSettings
from core.auth.challenge import bearer_challenge
from core.auth.credentials import parse_authorization
from core.auth.permissions import allowed_actions
from core.auth.principal import ANONYMOUS, Principal
from core.auth.request import Authorization, Caller, RequestView
from core.auth.scopes import Access, required_access
from core.auth.tokens import Grant, verify_grant
from core.endpoints import Kind
from core.errors import Denied, NameInvalid, Unauthorized
from core.reference import RepositoryName, parse_repository_name
from core.tenancy import address, internal_name
from origin.auth.keys import KeyRing
from origin.auth.store import TenancyStore

CATALOG = "catalog"


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
        try:
            addressed = address(host, name, self._settings.base_domain or None)
        except NameInvalid:
            return None
        if addressed.org is not None:
            return internal_name(addressed.org, addressed.path)
        assert addressed.project_id is not None
        project = await self._tenancy.project(addressed.project_id)
        if project is None:
            return None
        return internal_name(project.org_slug, project.id)

    async def authorize(self, view: RequestView) -> Authorization:
        external = view.endpoint.name.value if view.endpoint.name else None
        required = required_access(view.method, view.endpoint.kind, external, view.query)
        names: dict[str, RepositoryName] = {}
        if not self._settings.auth:
            names = {a.name: parse_repository_name(a.name) for a in required if _is_repo(a)}
            return Authorization(Caller(frozenset(), everything=True), names)

        for access in required:
            if _is_repo(access):
                internal = await self.resolve(view.host, parse_repository_name(access.name))
                if internal is not None:
                    names[access.name] = internal

        principal, grant, bearer_error = await self._credentials(view.authorization)
        allowed = await self._allowed(principal, grant, required, names)
        source = view.query.get("from") if view.endpoint.kind is Kind.UPLOADS else None
        mount_allowed = True
        missing = []
        for access in required:
            if not access.actions <= allowed.get((access.type, access.name), frozenset()):
                if source is not None and access.name == source and access.name != external:
                    mount_allowed = False
                else:
                    missing.append(access)
        authenticated = principal is not ANONYMOUS or grant is not None
        if view.endpoint.kind is Kind.BASE and not authenticated:
            missing.append(Access("registry", "base", frozenset()))
        if missing:
            self._refuse(view, principal, grant, bearer_error, required)
        orgs = grant.orgs if grant is not None else principal.orgs
        return Authorization(Caller(frozenset(orgs)), names, mount_allowed)

    async def _credentials(self, header: str | None) -> tuple[Principal, Grant | None, str | None]:
        credentials = parse_authorization(header)
        if credentials is None:
            return ANONYMOUS, None, None
        if credentials.scheme == "bearer":
            try:
                grant = verify_grant(
                    credentials.secret,
                    jwks=self._keys.jwks(),
                    issuer=self._settings.token_issuer,
                    audience=self._settings.token_service,
                    now=self._clock(),
                )
            except Unauthorized:
                return ANONYMOUS, None, "invalid_token"
            return ANONYMOUS, grant, None
        if credentials.scheme == "basic":
            principal = None
            if credentials.secret:
                principal = await self._tenancy.authenticate(credentials.secret, self._clock())
            if principal is None:
                raise Unauthorized(
                    "invalid credentials",
                    headers={"WWW-Authenticate": 'Basic realm="depot-registry"'},
                )
            return principal, None, None
        return ANONYMOUS, None, None

    async def _allowed(
        self,
        principal: Principal,
        grant: Grant | None,
        required: Sequence[Access],
        names: Mapping[str, RepositoryName],
    ) -> dict[tuple[str, str], frozenset[str]]:
        allowed: dict[tuple[str, str], frozenset[str]] = {}
        for access in required:
            key = (access.type, access.name)
            if not _is_repo(access):
                # The catalog: any authenticated caller lists what it can see.
                if grant is not None or principal is not ANONYMOUS:
                    allowed[key] = access.actions
                continue
            internal = names.get(access.name)
            if internal is None:
                continue
            if grant is not None:
                allowed[key] = frozenset(
                    action
                    for granted in grant.access
                    if granted.type == "repository" and granted.name == internal.value
                    for action in granted.actions
                )
            else:
                public = await self._tenancy.is_public(internal.value)
                allowed[key] = allowed_actions(
                    principal, internal.value, access.actions, public=public
                )
        return allowed

    def _refuse(
        self,
        view: RequestView,
        principal: Principal,
        grant: Grant | None,
        bearer_error: str | None,
        required: Sequence[Access],
    ) -> None:
        if principal is not ANONYMOUS:
            # Basic credentials that are valid but not enough: asking again will not help.
            raise Denied(detail=[str(a) for a in required])
        realm = f"{view.scheme}://{view.host}/token"
        scopes = [a for a in required if a.actions]
        error = bearer_error or ("insufficient_scope" if grant is not None else None)
        challenge = bearer_challenge(realm, self._settings.token_service, scopes, error)
        raise Unauthorized(headers={"WWW-Authenticate": challenge})


def _is_repo(access: Access) -> bool:
    return access.type == "repository"
