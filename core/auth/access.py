"""The access decision: what a caller may do to one resource, and why. Pure: no I/O, no clock.

Every place that decides access asks :func:`decide`: origin's gate and the edge's gate on
``/v2/`` (see :mod:`core.auth.gate`), origin's token issuer (:func:`grant_accesses`: which
scopes a token carries) and the management API (``origin/auth/management.py``).

**Who** asks is a :class:`~core.auth.principal.Principal` (a long-lived registry token, an
OIDC trust relationship, or :data:`~core.auth.principal.ANONYMOUS`) or a verified bearer
:class:`~core.auth.tokens.Grant` (origin's JWT: its ``access`` claim already says what it may
do, repository by repository, with internal names).

**Resources** and their actions:

- :class:`Repository` (internal ``<org>/<path>`` name, public or not): pull, push, delete
  (``*``: all three). A mount needs pull on its source: that is a second repository decision.
- :class:`Catalog` (``registry:catalog:*``): ``*``. The listing itself shows only the
  caller's orgs; deciding what it lists is the listing's job.
- :class:`Org` (an org's management surface): resolve (which slug an id names), read (see
  it at all), manage.
- :class:`Project` (the part of an org's management surface that belongs to one project;
  ``id=None``: the part that belongs to no project — org-wide tokens and trust relationships,
  usage): resolve (which org holds it), read, push (save and delete builds), manage.
- :class:`Mirror` (an upstream registry an edge mirrors: an operator's, or one an org
  registered with its own credentials): pull, and nothing else ever.
- :class:`UpstreamCredentials` (the decrypted credentials of an org's upstreams): read.
- :class:`EventFeed` (origin's event log, ``/api/v1/events``): read.

**The rules** (``tests/unit/test_access.py`` is their table):

- A principal reaches the repositories of its orgs; one bound to a project (a project token, a
  pull token or trust relationship made for a project) only ``<org>/<project>``. Where it
  reaches, it may do its own actions (pull tokens: pull only). Anyone, anonymous included, may
  pull a public repository; nobody else gets more than that outside their orgs.
- An edge (``dpe_``) pulls every repository and never does anything else; it resolves every
  project (legacy project URLs) and every org id (an org's id as its subdomain) and sees no
  org's management surface.
- A bearer grant may do exactly what its ``access`` claim lists for the repository; visibility
  is not consulted (the issuer granted public pulls already; a client missing a scope asks the
  token service again after ``insufficient_scope``).
- Any authenticated caller (a principal other than anonymous, any verified grant) may list the
  catalog.
- Management: principals of an org read its surface; org and user tokens manage it; project
  and pull tokens only read; a project-bound principal reads only its project's part. Bearer
  grants never reach the management API.
- Mirrors are pull only. An operator's mirror in ``anonymous`` mode: anyone pulls (the
  operator's choice, for private networks). In ``authenticated`` mode: any caller that is
  one of this system's orgs' (a principal or a verified grant with at least one org: the
  grant's ``access`` claim does not matter, origin cannot name a mirror's repositories), and
  edges. An org's upstream: only callers whose orgs include that org (its content was fetched
  with the org's credentials), never an anonymous caller, another org or an edge.
- An org's upstream credentials reach edges only (which fetch with them); no other caller,
  the org's own managers included, ever reads them back.
- The event feed reaches edges only (it names every org's repositories and tokens).

A :class:`Decision` carries the granted subset of the requested actions and a
:class:`Reason`: when something requested is refused, why it is; otherwise why it was granted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from core.auth.principal import ALL_ACTIONS, PULL, PUSH, Principal
from core.auth.scopes import CATALOG, Access, merge
from core.auth.tokens import Grant
from core.tenancy import org_of

READ, MANAGE, RESOLVE = "read", "manage", "resolve"
#: Token kinds that manage the orgs they reach; the others only read.
MANAGERS = frozenset({"org", "user"})
EDGE, ANONYMOUS_KIND = "edge", "anonymous"
_ANY = "*"
_PULL_ONLY = frozenset({PULL})
_PROJECT_ACTIONS = frozenset({RESOLVE, READ, PUSH, MANAGE})


@dataclass(frozen=True, slots=True)
class Repository:
    name: str  # internal: <org>/<path>
    public: bool = False


@dataclass(frozen=True, slots=True)
class Catalog:
    pass


@dataclass(frozen=True, slots=True)
class Org:
    slug: str


@dataclass(frozen=True, slots=True)
class Project:
    org: str  # the org's slug
    id: str | None  # None: what belongs to the org but to no project


@dataclass(frozen=True, slots=True)
class Mirror:
    upstream: str  # the upstream's name (``docker.io``)
    org: str | None = None  # an org's upstream: only that org's callers
    anonymous: bool = False  # an operator's mirror anyone may pull (never an org's)


@dataclass(frozen=True, slots=True)
class UpstreamCredentials:
    org: str  # the slug of the org whose upstreams' secrets these are


@dataclass(frozen=True, slots=True)
class EventFeed:
    pass


Resource = Repository | Catalog | Org | Project | Mirror | UpstreamCredentials | EventFeed
Who = Principal | Grant


class Reason(StrEnum):
    MEMBER = "within the caller's org and project"
    PUBLIC = "a public repository: anyone pulls it"
    ACTIONS = "more than the credential may do"
    OTHER_ORG = "outside the caller's orgs"
    OTHER_PROJECT = "outside the caller's project"
    ANONYMOUS = "anonymous callers only pull public repositories"
    NOT_A_REPOSITORY = "not an internal repository name"
    EDGE = "edges pull every repository, resolve every project and do nothing else"
    TOKEN = "the bearer token's access claim"
    NOT_IN_TOKEN = "not in the bearer token's access claim"
    AUTHENTICATED = "authenticated callers list the catalog (their orgs only)"
    MANAGER = "org and user tokens manage the orgs they reach"
    READ_ONLY = "only org and user tokens manage; others read"
    BEARER = "bearer tokens do not reach the management API"
    UNKNOWN_ACTION = "no such action on this resource"
    PULL_ONLY = "mirrors are pull only"
    OPEN_MIRROR = "an anonymous mirror: anyone pulls"
    MIRROR_MEMBER = "authenticated callers of this system's orgs pull an operator's mirror"
    MIRROR_CREDENTIALS = "anonymous callers pull no authenticated mirror"
    EDGE_ONLY = "only edges read upstream credentials and the event feed"
    # Answered before any resource is asked about (see core.auth.gate):
    NO_CREDENTIALS = "no valid credentials"
    UNKNOWN_NAME = "the name addresses no repository"


@dataclass(frozen=True, slots=True)
class Decision:
    granted: frozenset[str]
    reason: Reason


def decide(who: Who, requested: Iterable[str], resource: Resource) -> Decision:
    """The subset of ``requested`` that ``who`` may do to ``resource``, with the reason."""
    wanted = frozenset(requested)
    match resource:
        case Repository():
            return _repository(who, _expand(wanted), resource)
        case Catalog():
            return _catalog(who, wanted)
        case Mirror():
            return _mirror(who, wanted, resource)
        case UpstreamCredentials() | EventFeed():
            return _upstream_credentials(who, wanted)
        case Org() | Project() if isinstance(who, Grant):
            return Decision(frozenset(), Reason.BEARER)
        case Org():
            assert isinstance(who, Principal)
            return _org(who, wanted, resource)
        case Project():
            assert isinstance(who, Principal)
            return _project(who, wanted, resource)


def _expand(requested: frozenset[str]) -> frozenset[str]:
    wanted = ALL_ACTIONS if _ANY in requested else requested
    return wanted & ALL_ACTIONS


def _outcome(granted: frozenset[str], wanted: frozenset[str], yes: Reason, no: Reason) -> Decision:
    return Decision(granted, yes if granted == wanted else no)


# -- repositories ----------------------------------------------------------------------------


def _repository(who: Who, wanted: frozenset[str], repository: Repository) -> Decision:
    if isinstance(who, Grant):
        claimed = frozenset(
            action
            for access in who.access
            if access.type == "repository" and access.name == repository.name
            for action in access.actions
        )
        return _outcome(wanted & claimed, wanted, Reason.TOKEN, Reason.NOT_IN_TOKEN)
    if who.kind == EDGE:
        return Decision(wanted & _PULL_ONLY, Reason.EDGE)
    refusal = _unreached(who, repository.name)
    if refusal is None:
        decision = _outcome(wanted & who.actions, wanted, Reason.MEMBER, Reason.ACTIONS)
    else:
        decision = Decision(frozenset(), refusal)
    if repository.public and PULL in wanted and PULL not in decision.granted:
        granted = decision.granted | _PULL_ONLY
        return Decision(granted, Reason.PUBLIC if granted == wanted else decision.reason)
    return decision


def _unreached(principal: Principal, repository: str) -> Reason | None:
    """Why ``principal`` does not reach ``repository`` (None: it does)."""
    if principal.kind == ANONYMOUS_KIND:
        return Reason.ANONYMOUS
    if "/" not in repository:
        return Reason.NOT_A_REPOSITORY
    org = org_of(repository)
    if org not in principal.orgs:
        return Reason.OTHER_ORG
    if principal.project is not None and repository != f"{org}/{principal.project}":
        return Reason.OTHER_PROJECT
    return None


# -- the catalog -----------------------------------------------------------------------------


def _catalog(who: Who, wanted: frozenset[str]) -> Decision:
    if isinstance(who, Principal) and who.kind == ANONYMOUS_KIND:
        return Decision(frozenset(), Reason.ANONYMOUS)
    return _outcome(wanted & {_ANY}, wanted, Reason.AUTHENTICATED, Reason.UNKNOWN_ACTION)


# -- mirrors ---------------------------------------------------------------------------------


def _mirror(who: Who, wanted: frozenset[str], mirror: Mirror) -> Decision:
    pulls = wanted & _PULL_ONLY
    refused = Reason.PULL_ONLY if wanted - _PULL_ONLY else None
    if mirror.anonymous and mirror.org is None:
        return Decision(pulls, refused or Reason.OPEN_MIRROR)
    if who.kind == ANONYMOUS_KIND:
        return Decision(frozenset(), Reason.MIRROR_CREDENTIALS)
    if mirror.org is not None:
        if mirror.org not in who.orgs:
            return Decision(frozenset(), Reason.EDGE if who.kind == EDGE else Reason.OTHER_ORG)
        return Decision(pulls, refused or Reason.MEMBER)
    if who.kind == EDGE:
        return Decision(pulls, refused or Reason.EDGE)
    if not who.orgs:
        return Decision(frozenset(), Reason.OTHER_ORG)
    return Decision(pulls, refused or Reason.MIRROR_MEMBER)


def _upstream_credentials(who: Who, wanted: frozenset[str]) -> Decision:
    if isinstance(who, Principal) and who.kind == EDGE:
        return _outcome(wanted & {READ}, wanted, Reason.EDGE, Reason.UNKNOWN_ACTION)
    return Decision(frozenset(), Reason.EDGE_ONLY)


# -- management ------------------------------------------------------------------------------


def _org(principal: Principal, wanted: frozenset[str], org: Org) -> Decision:
    if principal.kind == EDGE:
        # Which org an id names (an org's id as its subdomain), and nothing more.
        return _outcome(wanted & {RESOLVE}, wanted, Reason.EDGE, Reason.EDGE)
    if org.slug not in principal.orgs:
        anonymous = principal.kind == ANONYMOUS_KIND
        return Decision(frozenset(), Reason.ANONYMOUS if anonymous else Reason.OTHER_ORG)
    may = {RESOLVE, READ, MANAGE} if principal.kind in MANAGERS else {RESOLVE, READ}
    granted = wanted & may
    if granted == wanted:
        return Decision(granted, Reason.MANAGER if MANAGE in granted else Reason.MEMBER)
    return Decision(granted, Reason.READ_ONLY if MANAGE in wanted else Reason.UNKNOWN_ACTION)


def _project(principal: Principal, wanted: frozenset[str], project: Project) -> Decision:
    if principal.kind == EDGE:
        return _outcome(wanted & {RESOLVE}, wanted, Reason.EDGE, Reason.EDGE)
    if project.org not in principal.orgs:
        anonymous = principal.kind == ANONYMOUS_KIND
        return Decision(frozenset(), Reason.ANONYMOUS if anonymous else Reason.OTHER_ORG)
    if principal.project is not None and principal.project != project.id:
        return Decision(frozenset(), Reason.OTHER_PROJECT)
    may = {RESOLVE, READ}
    if PUSH in principal.actions:
        may.add(PUSH)
    if principal.kind in MANAGERS:
        may.add(MANAGE)
    granted = wanted & may
    if granted == wanted:
        return Decision(granted, Reason.MANAGER if MANAGE in granted else Reason.MEMBER)
    if not wanted <= _PROJECT_ACTIONS:
        return Decision(granted, Reason.UNKNOWN_ACTION)
    return Decision(granted, Reason.READ_ONLY if MANAGE in wanted - granted else Reason.ACTIONS)


# -- token issuing ---------------------------------------------------------------------------


def grant_accesses(
    principal: Principal,
    requested: Sequence[Access],
    *,
    resolve: Callable[[str], str | None],
    is_public: Callable[[str], bool],
) -> list[Access]:
    """The accesses a token for ``principal`` carries, given the scopes a client asked for.

    Repository names are resolved to internal names (None: unknown, nothing granted) and the
    grants carry the internal name; empty grants are dropped. ``registry:catalog:*`` is granted
    as is when :func:`decide` allows the catalog. Other resource types are never granted.
    """
    granted: list[Access] = []
    for access in merge(requested):
        if access.type == "repository":
            internal = resolve(access.name)
            if internal is None:
                continue
            resource = Repository(internal, public=is_public(internal))
            actions = decide(principal, access.actions, resource).granted
            if actions:
                granted.append(Access("repository", internal, actions))
        elif (access.type, access.name) == (CATALOG.type, CATALOG.name):
            if _ANY in decide(principal, access.actions, Catalog()).granted:
                granted.append(CATALOG)
    return merge(granted)
