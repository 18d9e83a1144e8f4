"""What origin's ``Gate`` and the edge's ``EdgeGate`` do alike on ``/v2/``: resolve the names a
request touches, decide each access it needs (:func:`core.auth.access.decide`), and refuse
with the same answers. Each gate only says who the credentials stand for (:class:`Presented`):
origin authenticates registry tokens and verifies bearer tokens with its own keys; the edge
verifies with origin's JWKS and exchanges everything else at origin's ``/token``.

Names arrive as the client sees them (org subdomain, path style, legacy project URL) and
leave as internal ``<org>/<path>`` names (:mod:`core.tenancy`); bearer tokens carry internal
names, so a token is honoured on any host that resolves to the same repository.

Refusals: valid Basic credentials that are not enough get 403 ``DENIED`` (asking again will
not help); everything else gets 401 with a Bearer challenge whose realm is this host's
``/token``, with ``error="invalid_token"`` for a bearer token that failed verification and
``error="insufficient_scope"`` for a valid one that lacks a scope. ``/v2/`` itself needs no
scope but does need valid credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from core.auth.access import Catalog, Decision, Reason, Repository, decide
from core.auth.challenge import basic_challenge, bearer_challenge
from core.auth.principal import Principal
from core.auth.request import Authorization, Caller, RequestView
from core.auth.scopes import Access, required_access
from core.auth.tokens import Grant
from core.endpoints import Kind
from core.errors import Denied, NameInvalid, RegistryError, Unauthorized
from core.reference import RepositoryName, parse_repository_name
from core.tenancy import address, internal_name, is_org_id

#: The org a legacy project id belongs to (None: no such project).
ProjectOrg = Callable[[str], Awaitable[str | None]]
#: The slug of the org with this id (None: no such org).
OrgSlug = Callable[[str], Awaitable[str | None]]
Resolve = Callable[[str, RepositoryName], Awaitable[RepositoryName | None]]
IsPublic = Callable[[str], Awaitable[bool]]

log = logging.getLogger("depot.auth")

NONE, BASIC, BEARER = "none", "basic", "bearer"
BASIC_REALM = "depot-registry"


@dataclass(frozen=True, slots=True)
class Presented:
    """What a request's credentials stand for.

    ``scheme`` is how they came (``none`` also for a scheme neither gate takes); ``who`` is
    what the gate made of them: a principal, a verified or exchanged grant, or None when
    nothing grants anything (the edge's answer to a bearer token that fails verification;
    origin answers such a token as :data:`~core.auth.principal.ANONYMOUS`, so public
    repositories stay readable there). ``bearer_error`` names a bearer token's failure.
    """

    scheme: str
    who: Principal | Grant | None
    bearer_error: str | None = None

    @property
    def authenticated(self) -> bool:
        """Credentials were presented and are valid."""
        return self.scheme != NONE and self.who is not None and self.bearer_error is None

    @property
    def orgs(self) -> frozenset[str]:
        return self.who.orgs if self.who is not None else frozenset()

    @property
    def project(self) -> str | None:
        return self.who.project if self.who is not None else None


def required_for(view: RequestView) -> list[Access]:
    """The accesses the request needs, with its names as the client wrote them."""
    external = view.endpoint.name.value if view.endpoint.name else None
    return required_access(view.method, view.endpoint.kind, external, view.query)


# -- names -----------------------------------------------------------------------------------


async def resolve_name(
    host: str,
    name: RepositoryName,
    *,
    base_domain: str | None,
    project_org: ProjectOrg,
    org_slug: OrgSlug | None = None,
) -> RepositoryName | None:
    """The internal name ``name`` means on ``host``; None when it addresses nothing.

    An org named by something shaped like an org id (subdomain or path style) is looked up
    with ``org_slug`` first; when no org has that id, the label is taken as a slug."""
    try:
        addressed = address(host, name, base_domain)
    except NameInvalid:
        return None
    if addressed.org is not None:
        named = addressed.org
        if org_slug is not None and is_org_id(named):
            named = await org_slug(named) or named
        return internal_name(named, addressed.path)
    assert addressed.project_id is not None
    org = await project_org(addressed.project_id)
    if org is None:
        return None
    return internal_name(org, addressed.project_id)


async def resolve_names(
    host: str, required: Sequence[Access], resolve: Resolve
) -> dict[str, RepositoryName]:
    """External name → internal name for every repository ``required`` names that resolves."""
    names: dict[str, RepositoryName] = {}
    for access in required:
        if _is_repo(access) and access.name not in names:
            internal = await resolve(host, parse_repository_name(access.name))
            if internal is not None:
                names[access.name] = internal
    return names


def open_authorization(required: Sequence[Access]) -> Authorization:
    """Auth disabled: the registry is one open namespace and names are what they say."""
    names = {a.name: parse_repository_name(a.name) for a in required if _is_repo(a)}
    return Authorization(Caller(frozenset(), everything=True), names)


# -- deciding --------------------------------------------------------------------------------


async def decide_request(
    view: RequestView,
    required: Sequence[Access],
    names: Mapping[str, RepositoryName],
    presented: Presented,
    *,
    service: str,
    is_public: IsPublic | None,
) -> Authorization:
    """The request's authorization, or the refusal (raised) when an access it needs is not
    granted. A mount's source the caller may not pull is no refusal: the upload then goes
    on as a plain one (``mount_allowed=False``), as Distribution does.

    ``is_public`` is asked only for principals (bearer grants carry what they may do);
    None when the gate only ever presents grants.
    """
    external = view.endpoint.name.value if view.endpoint.name else None
    source = view.query.get("from") if view.endpoint.kind is Kind.UPLOADS else None
    mount_allowed = True
    missing: list[tuple[Access, Reason]] = []
    for access in required:
        decision = await _decision(access, names, presented.who, is_public)
        if access.actions <= decision.granted:
            continue
        if source is not None and access.name == source and access.name != external:
            mount_allowed = False
        else:
            missing.append((access, decision.reason))
    if view.endpoint.kind is Kind.BASE and not presented.authenticated:
        missing.append((Access("registry", "base", frozenset()), Reason.NO_CREDENTIALS))
    if missing:
        # Names and reasons only: never a credential.
        log.debug("refused %s", "; ".join(f"{access}: {reason}" for access, reason in missing))
        raise refusal(view, presented, required, service=service)
    return Authorization(Caller(presented.orgs, project=presented.project), names, mount_allowed)


async def _decision(
    access: Access,
    names: Mapping[str, RepositoryName],
    who: Principal | Grant | None,
    is_public: IsPublic | None,
) -> Decision:
    if who is None:
        return Decision(frozenset(), Reason.NO_CREDENTIALS)
    if not _is_repo(access):
        return decide(who, access.actions, Catalog())
    internal = names.get(access.name)
    if internal is None:
        return Decision(frozenset(), Reason.UNKNOWN_NAME)
    public = False
    if isinstance(who, Principal) and is_public is not None:
        public = await is_public(internal.value)
    return decide(who, access.actions, Repository(internal.value, public))


def refusal(
    view: RequestView, presented: Presented, required: Sequence[Access], *, service: str
) -> RegistryError:
    """403 for valid Basic credentials that are not enough; otherwise a 401 challenge."""
    if presented.scheme == BASIC and presented.who is not None:
        return Denied(detail=[str(a) for a in required])
    realm = f"{view.scheme}://{view.host}/token"
    scopes = [a for a in required if a.actions]
    error = presented.bearer_error
    if error is None and presented.scheme == BEARER and presented.who is not None:
        error = "insufficient_scope"
    challenge = bearer_challenge(realm, service, scopes, error)
    return Unauthorized(headers={"WWW-Authenticate": challenge})


def invalid_credentials() -> Unauthorized:
    """Basic credentials that are wrong (or empty): refused before any decision."""
    return Unauthorized(
        "invalid credentials", headers={"WWW-Authenticate": basic_challenge(BASIC_REALM)}
    )


def _is_repo(access: Access) -> bool:
    return access.type == "repository"
