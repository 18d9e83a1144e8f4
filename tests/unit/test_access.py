"""The tenant matrix, once, against the one access decision (core/auth/access.py).

Org A is ``acme`` (project ``p1x2``), org B is ``beta``. Every row names who asks, what for,
on which resource, and asserts the granted actions and the reason. Origin's gate, the edge's
gate, the token issuer and the management API all decide through ``decide``; their
integration tests show they do (tests/integration/test_auth.py, test_edge_tenants.py,
test_edge_upstream_auth.py, test_management_api.py, test_builds.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from core.auth.access import (
    MANAGE,
    READ,
    RESOLVE,
    Catalog,
    Decision,
    Mirror,
    Org,
    Project,
    Reason,
    Repository,
    Resource,
    UpstreamCredentials,
    Who,
    decide,
    grant_accesses,
)
from core.auth.principal import ALL_ACTIONS, ANONYMOUS, DELETE, PULL, PUSH, Principal
from core.auth.scopes import CATALOG, Access
from core.auth.tokens import Grant

# -- who -------------------------------------------------------------------------------------

ORG_A = Principal("org", "tok_org", frozenset({"acme"}), None, ALL_ACTIONS)
ORG_B = Principal("org", "tok_b", frozenset({"beta"}), None, ALL_ACTIONS)
USER = Principal("user", "u1", frozenset({"acme", "beta"}), None, frozenset({PULL, PUSH}))
PROJECT = Principal("project", "tok_proj", frozenset({"acme"}), "p1x2", ALL_ACTIONS)
PULL_A = Principal("pull", "tok_pull", frozenset({"acme"}), None, frozenset({PULL}))
PULL_PROJECT = Principal("pull", "tok_pp", frozenset({"acme"}), "p1x2", frozenset({PULL}))
TRUST = Principal("trust", "t1:repo:acme", frozenset({"acme"}), "p1x2", frozenset({PULL, PUSH}))
EDGE = Principal("edge", "edge-eu", frozenset(), None, frozenset({PULL}))


def repo(name: str, *actions: str) -> Access:
    return Access("repository", name, frozenset(actions))


def grant(kind: str, orgs: Iterable[str], *access: Access) -> Grant:
    return Grant("sub", kind, frozenset(orgs), tuple(access), 0, 300, "jti")


#: A bearer token issued to an org A token for push on acme/app and pull on beta/pub.
BEARER_A = grant("org", {"acme"}, repo("acme/app", PULL, PUSH), repo("beta/pub", PULL))
#: A bearer token issued to nobody: origin's anonymous grant for a public repository.
BEARER_ANONYMOUS = grant("anonymous", (), repo("beta/pub", PULL))

# -- what for --------------------------------------------------------------------------------

NONE: frozenset[str] = frozenset()
P = frozenset({PULL})
PP = frozenset({PULL, PUSH})
ALL = ALL_ACTIONS
STAR = frozenset({"*"})

A_APP = Repository("acme/app")
A_PUBLIC = Repository("acme/app", public=True)
A_PROJECT = Repository("acme/p1x2")
B_APP = Repository("beta/app")
B_PUBLIC = Repository("beta/pub", public=True)
A_SUB, A_BASE = Repository("acme/p1x2/sub"), Repository("acme/base")
A_OTHER_PUBLIC = Repository("acme/other", public=True)
PUSHES = frozenset({PUSH})

# (label, who, requested, resource, granted, reason)
Row = tuple[str, Who, frozenset[str], Resource, frozenset[str], Reason]

# fmt: off
REPOSITORIES: list[Row] = [
    # org token: everything in its org; elsewhere only public pulls
    ("org A in A", ORG_A, ALL, A_APP, ALL, Reason.MEMBER),
    ("org A in A, a project repo", ORG_A, ALL, A_PROJECT, ALL, Reason.MEMBER),
    ("org A in A, deep path", ORG_A, ALL, Repository("acme/a/b/c", True), ALL, Reason.MEMBER),
    ("org A in B", ORG_A, ALL, B_APP, NONE, Reason.OTHER_ORG),
    ("org A pulls B", ORG_A, P, B_APP, NONE, Reason.OTHER_ORG),
    ("org A in B public", ORG_A, ALL, B_PUBLIC, P, Reason.OTHER_ORG),
    ("org A pulls B public", ORG_A, P, B_PUBLIC, P, Reason.PUBLIC),
    ("org A in a look-alike org", ORG_A, ALL, Repository("acmex/app"), NONE, Reason.OTHER_ORG),
    ("org A on a bare org name", ORG_A, ALL, Repository("acme"), NONE, Reason.NOT_A_REPOSITORY),
    ("org B in A", ORG_B, ALL, A_APP, NONE, Reason.OTHER_ORG),
    ("org B deletes A public", ORG_B, frozenset({DELETE}), A_PUBLIC, NONE, Reason.OTHER_ORG),
    # user token: its orgs, never beyond its own actions
    ("user in B", USER, ALL, B_APP, PP, Reason.ACTIONS),
    ("user pushes in A", USER, PP, A_APP, PP, Reason.MEMBER),
    ("user in A public", USER, ALL, A_PUBLIC, PP, Reason.ACTIONS),
    # project token: only <org>/<project>
    ("project in its project", PROJECT, ALL, A_PROJECT, ALL, Reason.MEMBER),
    ("project below its project", PROJECT, ALL, A_SUB, NONE, Reason.OTHER_PROJECT),
    ("project elsewhere in A", PROJECT, ALL, A_APP, NONE, Reason.OTHER_PROJECT),
    ("project elsewhere in A public", PROJECT, ALL, A_PUBLIC, P, Reason.OTHER_PROJECT),
    ("project in B", PROJECT, ALL, Repository("beta/p1x2"), NONE, Reason.OTHER_ORG),
    # pull token: pull only, in its org (and its project when it has one)
    ("pull token pulls A", PULL_A, P, A_APP, P, Reason.MEMBER),
    ("pull token in A", PULL_A, ALL, A_APP, P, Reason.ACTIONS),
    ("pull token pushes A", PULL_A, PP, A_APP, P, Reason.ACTIONS),
    ("pull token deletes A", PULL_A, frozenset({DELETE}), A_APP, NONE, Reason.ACTIONS),
    ("pull token in B", PULL_A, ALL, B_APP, NONE, Reason.OTHER_ORG),
    ("pull token in B public", PULL_A, ALL, B_PUBLIC, P, Reason.OTHER_ORG),
    ("project pull token, project", PULL_PROJECT, PP, A_PROJECT, P, Reason.ACTIONS),
    ("project pull token, elsewhere", PULL_PROJECT, P, A_APP, NONE, Reason.OTHER_PROJECT),
    # OIDC trust relationship: its org and project, its configured actions
    ("trust pushes its project", TRUST, PP, A_PROJECT, PP, Reason.MEMBER),
    ("trust deletes", TRUST, ALL, A_PROJECT, PP, Reason.ACTIONS),
    ("trust elsewhere in A", TRUST, P, A_APP, NONE, Reason.OTHER_PROJECT),
    ("trust in B", TRUST, P, B_APP, NONE, Reason.OTHER_ORG),
    # anonymous: public pulls only
    ("anonymous on private", ANONYMOUS, P, A_APP, NONE, Reason.ANONYMOUS),
    ("anonymous, every action, private", ANONYMOUS, ALL, A_APP, NONE, Reason.ANONYMOUS),
    ("anonymous, every action, public", ANONYMOUS, ALL, A_PUBLIC, P, Reason.ANONYMOUS),
    ("anonymous pulls public", ANONYMOUS, P, A_PUBLIC, P, Reason.PUBLIC),
    ("anonymous pushes public", ANONYMOUS, PP, A_PUBLIC, P, Reason.ANONYMOUS),
    ("anonymous only pushes public", ANONYMOUS, PUSHES, A_PUBLIC, NONE, Reason.ANONYMOUS),
    # edge: pulls everywhere, never more
    ("edge pulls A", EDGE, P, A_APP, P, Reason.EDGE),
    ("edge in A", EDGE, ALL, A_APP, P, Reason.EDGE),
    ("edge pulls B public", EDGE, ALL, B_PUBLIC, P, Reason.EDGE),
    ("edge pushes", EDGE, PP, A_APP, P, Reason.EDGE),
    # bearer grants: exactly their access claim; visibility is not consulted
    ("bearer A in its claim", BEARER_A, PP, A_APP, PP, Reason.TOKEN),
    ("bearer A deletes", BEARER_A, ALL, A_APP, PP, Reason.NOT_IN_TOKEN),
    ("bearer A, same org, not claimed", BEARER_A, P, A_PROJECT, NONE, Reason.NOT_IN_TOKEN),
    ("bearer A, public, unclaimed", BEARER_A, P, A_OTHER_PUBLIC, NONE, Reason.NOT_IN_TOKEN),
    ("bearer A in B", BEARER_A, P, B_APP, NONE, Reason.NOT_IN_TOKEN),
    ("bearer A pulls B public", BEARER_A, P, B_PUBLIC, P, Reason.TOKEN),
    ("bearer A pushes B public", BEARER_A, PP, B_PUBLIC, P, Reason.NOT_IN_TOKEN),
    ("anonymous bearer pulls public", BEARER_ANONYMOUS, P, B_PUBLIC, P, Reason.TOKEN),
    ("anonymous bearer on private", BEARER_ANONYMOUS, P, B_APP, NONE, Reason.NOT_IN_TOKEN),

]

# A mount asks pull on its source (core.auth.scopes.required_access): these rows are that
# second decision, for a push into org A from elsewhere.
MOUNTS: list[Row] = [
    ("mount from own org", ORG_A, P, A_BASE, P, Reason.MEMBER),
    ("mount from org B", ORG_A, P, B_APP, NONE, Reason.OTHER_ORG),
    ("mount from org B public", ORG_A, P, B_PUBLIC, P, Reason.PUBLIC),
    ("project mounts from its org", PROJECT, P, A_BASE, NONE, Reason.OTHER_PROJECT),
    ("bearer mounts from org B", BEARER_A, P, B_APP, NONE, Reason.NOT_IN_TOKEN),
    ("bearer mounts claimed public", BEARER_A, P, B_PUBLIC, P, Reason.TOKEN),
]
# fmt: on

CATALOGS: list[Row] = [
    ("org lists", ORG_A, STAR, Catalog(), STAR, Reason.AUTHENTICATED),
    ("project lists", PROJECT, STAR, Catalog(), STAR, Reason.AUTHENTICATED),
    ("pull token lists", PULL_A, STAR, Catalog(), STAR, Reason.AUTHENTICATED),
    ("edge lists", EDGE, STAR, Catalog(), STAR, Reason.AUTHENTICATED),
    ("anonymous does not list", ANONYMOUS, STAR, Catalog(), NONE, Reason.ANONYMOUS),
    ("bearer lists", BEARER_A, STAR, Catalog(), STAR, Reason.AUTHENTICATED),
    ("anonymous bearer lists", BEARER_ANONYMOUS, STAR, Catalog(), STAR, Reason.AUTHENTICATED),
    ("catalog pull is no action", ORG_A, P, Catalog(), NONE, Reason.UNKNOWN_ACTION),
]

R, M, RM = frozenset({READ}), frozenset({MANAGE}), frozenset({READ, MANAGE})
RESOLVES = frozenset({RESOLVE})
A_ORG, B_ORG = Org("acme"), Org("beta")
A_P1, A_OTHER, A_WIDE = Project("acme", "p1x2"), Project("acme", "other"), Project("acme", None)

MANAGEMENT: list[Row] = [
    # orgs: members read, org and user tokens manage
    ("org A manages A", ORG_A, RM, A_ORG, RM, Reason.MANAGER),
    ("org A reads A", ORG_A, R, A_ORG, R, Reason.MEMBER),
    ("org A in B", ORG_A, R, B_ORG, NONE, Reason.OTHER_ORG),
    ("org B manages A", ORG_B, M, A_ORG, NONE, Reason.OTHER_ORG),
    ("user manages B", USER, RM, B_ORG, RM, Reason.MANAGER),
    ("project reads A", PROJECT, R, A_ORG, R, Reason.MEMBER),
    ("project manages A", PROJECT, RM, A_ORG, R, Reason.READ_ONLY),
    ("pull token reads A", PULL_A, R, A_ORG, R, Reason.MEMBER),
    ("pull token manages A", PULL_A, M, A_ORG, NONE, Reason.READ_ONLY),
    ("trust manages A", TRUST, M, A_ORG, NONE, Reason.READ_ONLY),
    ("edge reads A", EDGE, R, A_ORG, NONE, Reason.EDGE),
    # resolving an org (which slug its id names: the id as a subdomain)
    ("edge resolves any org", EDGE, RESOLVES, B_ORG, RESOLVES, Reason.EDGE),
    ("edge reads and resolves A", EDGE, R | RESOLVES, A_ORG, RESOLVES, Reason.EDGE),
    ("pull token resolves A", PULL_A, RESOLVES, A_ORG, RESOLVES, Reason.MEMBER),
    ("org A resolves B", ORG_A, RESOLVES, B_ORG, NONE, Reason.OTHER_ORG),
    ("anonymous resolves A", ANONYMOUS, RESOLVES, A_ORG, NONE, Reason.ANONYMOUS),
    ("anonymous reads A", ANONYMOUS, R, A_ORG, NONE, Reason.ANONYMOUS),
    ("bearer reads A", BEARER_A, R, A_ORG, NONE, Reason.BEARER),
    ("org push is no action", ORG_A, PUSHES, A_ORG, NONE, Reason.UNKNOWN_ACTION),
    # projects: read within the project restriction, push with push, manage by managers
    ("org A on a project", ORG_A, R | PUSHES | M, A_P1, R | PUSHES | M, Reason.MANAGER),
    ("org A on A's org-wide part", ORG_A, R, A_WIDE, R, Reason.MEMBER),
    ("org B on A's project", ORG_B, R, A_P1, NONE, Reason.OTHER_ORG),
    ("user resolves a project", USER, RESOLVES, A_P1, RESOLVES, Reason.MEMBER),
    ("project reads and pushes its own", PROJECT, R | PUSHES, A_P1, R | PUSHES, Reason.MEMBER),
    ("project manages its own", PROJECT, M, A_P1, NONE, Reason.READ_ONLY),
    ("project on another project", PROJECT, R, A_OTHER, NONE, Reason.OTHER_PROJECT),
    ("project resolves another", PROJECT, RESOLVES, A_OTHER, NONE, Reason.OTHER_PROJECT),
    ("project on the org-wide part", PROJECT, R, A_WIDE, NONE, Reason.OTHER_PROJECT),
    ("pull token reads a project", PULL_A, R, A_P1, R, Reason.MEMBER),
    ("pull token pushes a project", PULL_A, R | PUSHES, A_P1, R, Reason.ACTIONS),
    ("pull token on the org-wide part", PULL_A, R, A_WIDE, R, Reason.MEMBER),
    ("project pull token elsewhere", PULL_PROJECT, R, A_OTHER, NONE, Reason.OTHER_PROJECT),
    ("edge resolves any project", EDGE, RESOLVES, Project("beta", "p9"), RESOLVES, Reason.EDGE),
    ("edge reads a project", EDGE, R | RESOLVES, A_P1, RESOLVES, Reason.EDGE),
    ("anonymous resolves", ANONYMOUS, RESOLVES, A_P1, NONE, Reason.ANONYMOUS),
    ("bearer resolves", BEARER_A, RESOLVES, A_P1, NONE, Reason.BEARER),
    ("project delete is no action", ORG_A, frozenset({DELETE}), A_P1, NONE, Reason.UNKNOWN_ACTION),
]


# Mirrors: an operator's (docker.io) anonymous or authenticated, and org A's own (ghcr.io,
# fetched with A's credentials). The grants' access claims name no mirror repository: what
# decides is who they were issued to.
HUB_OPEN, HUB = Mirror("docker.io", anonymous=True), Mirror("docker.io")
A_GHCR = Mirror("ghcr.io", "acme")
BEARER_B = grant("org", {"beta"}, repo("beta/app", PULL))
BEARER_EDGE = grant("edge", ())
ORGLESS_USER = Principal("user", "u0", frozenset(), None, frozenset({PULL, PUSH}))

# fmt: off
MIRRORS: list[Row] = [
    # an anonymous operator's mirror: anyone pulls, nobody pushes
    ("anonymous pulls an open mirror", ANONYMOUS, P, HUB_OPEN, P, Reason.OPEN_MIRROR),
    ("anonymous bearer pulls an open mirror", BEARER_ANONYMOUS, P, HUB_OPEN, P, Reason.OPEN_MIRROR),
    ("org B pulls an open mirror", ORG_B, P, HUB_OPEN, P, Reason.OPEN_MIRROR),
    ("org A pushes to an open mirror", ORG_A, PP, HUB_OPEN, P, Reason.PULL_ONLY),
    ("anonymous deletes in an open mirror", ANONYMOUS, frozenset({DELETE}), HUB_OPEN, NONE,
     Reason.PULL_ONLY),
    # an authenticated operator's mirror: any caller of any org here, and edges
    ("org A pulls the mirror", ORG_A, P, HUB, P, Reason.MIRROR_MEMBER),
    ("org B pulls the mirror", ORG_B, P, HUB, P, Reason.MIRROR_MEMBER),
    ("pull token pulls the mirror", PULL_A, P, HUB, P, Reason.MIRROR_MEMBER),
    ("project token pulls the mirror", PROJECT, P, HUB, P, Reason.MIRROR_MEMBER),
    ("trust pulls the mirror", TRUST, P, HUB, P, Reason.MIRROR_MEMBER),
    ("user of two orgs pulls the mirror", USER, P, HUB, P, Reason.MIRROR_MEMBER),
    ("user of no org", ORGLESS_USER, P, HUB, NONE, Reason.OTHER_ORG),
    ("bearer of org A, no claim on it", BEARER_A, P, HUB, P, Reason.MIRROR_MEMBER),
    ("bearer of org B", BEARER_B, P, HUB, P, Reason.MIRROR_MEMBER),
    ("edge pulls the mirror", EDGE, P, HUB, P, Reason.EDGE),
    ("edge bearer pulls the mirror", BEARER_EDGE, P, HUB, P, Reason.EDGE),
    ("anonymous on the mirror", ANONYMOUS, P, HUB, NONE, Reason.MIRROR_CREDENTIALS),
    ("anonymous bearer on the mirror", BEARER_ANONYMOUS, P, HUB, NONE,
     Reason.MIRROR_CREDENTIALS),
    ("org A pushes to the mirror", ORG_A, PP, HUB, P, Reason.PULL_ONLY),
    ("org A, every action", ORG_A, ALL, HUB, P, Reason.PULL_ONLY),
    # org A's upstream: org A's callers only
    ("org A pulls its upstream", ORG_A, P, A_GHCR, P, Reason.MEMBER),
    ("pull token pulls its org's upstream", PULL_A, P, A_GHCR, P, Reason.MEMBER),
    ("user of A and B pulls A's upstream", USER, P, A_GHCR, P, Reason.MEMBER),
    ("bearer of org A pulls its upstream", BEARER_A, P, A_GHCR, P, Reason.MEMBER),
    ("org B on A's upstream", ORG_B, P, A_GHCR, NONE, Reason.OTHER_ORG),
    ("bearer of org B on A's upstream", BEARER_B, P, A_GHCR, NONE, Reason.OTHER_ORG),
    ("anonymous on A's upstream", ANONYMOUS, P, A_GHCR, NONE, Reason.MIRROR_CREDENTIALS),
    ("anonymous bearer on A's upstream", BEARER_ANONYMOUS, P, A_GHCR, NONE,
     Reason.MIRROR_CREDENTIALS),
    ("edge on A's upstream", EDGE, P, A_GHCR, NONE, Reason.EDGE),
    ("org A pushes to its upstream", ORG_A, PP, A_GHCR, P, Reason.PULL_ONLY),
    ("an org's upstream is never open", ANONYMOUS, P, Mirror("ghcr.io", "acme", True), NONE,
     Reason.MIRROR_CREDENTIALS),
    # the credentials themselves: edges read them, nobody else, the org's managers included
    ("edge reads credentials", EDGE, R, UpstreamCredentials("acme"), R, Reason.EDGE),
    ("edge manages credentials", EDGE, RM, UpstreamCredentials("acme"), R,
     Reason.UNKNOWN_ACTION),
    ("org A reads its credentials", ORG_A, R, UpstreamCredentials("acme"), NONE,
     Reason.EDGE_ONLY),
    ("user reads credentials", USER, R, UpstreamCredentials("acme"), NONE, Reason.EDGE_ONLY),
    ("anonymous reads credentials", ANONYMOUS, R, UpstreamCredentials("acme"), NONE,
     Reason.EDGE_ONLY),
    ("edge bearer reads credentials", BEARER_EDGE, R, UpstreamCredentials("acme"), NONE,
     Reason.EDGE_ONLY),
]
# fmt: on

ALL_ROWS = REPOSITORIES + MOUNTS + CATALOGS + MANAGEMENT + MIRRORS


@pytest.mark.parametrize(
    ("label", "who", "requested", "resource", "granted", "reason"),
    ALL_ROWS,
    ids=[row[0] for row in ALL_ROWS],
)
def test_tenant_matrix(
    label: str,
    who: Who,
    requested: frozenset[str],
    resource: Resource,
    granted: frozenset[str],
    reason: Reason,
) -> None:
    assert decide(who, requested, resource) == Decision(granted, reason), label


@pytest.mark.parametrize("row", REPOSITORIES, ids=[row[0] for row in REPOSITORIES])
def test_star_means_every_repository_action(row: Row) -> None:
    label, who, requested, resource, granted, _ = row
    if requested == ALL:
        assert decide(who, STAR, resource).granted == granted, label


def test_the_grant_is_within_the_request() -> None:
    assert decide(ORG_A, P, A_APP).granted == P
    assert decide(ORG_A, {DELETE}, A_APP).granted == {DELETE}
    assert decide(ORG_A, {PULL, "bogus"}, A_APP).granted == P
    assert decide(ORG_A, NONE, A_PUBLIC).granted == NONE
    assert decide(ANONYMOUS, {PUSH}, A_PUBLIC).granted == NONE


def test_an_edge_never_pushes_even_if_its_actions_say_so() -> None:
    greedy = Principal("edge", "edge-x", frozenset({"acme"}), None, ALL_ACTIONS)
    assert decide(greedy, ALL, A_APP) == Decision(P, Reason.EDGE)
    assert decide(greedy, {PUSH, DELETE}, A_PUBLIC).granted == NONE
    assert decide(greedy, M, A_ORG).granted == NONE


def test_a_bearer_token_is_not_widened_by_a_star_in_its_claim() -> None:
    starred = grant("org", {"acme"}, repo("acme/app", "*"))
    assert decide(starred, P, A_APP) == Decision(NONE, Reason.NOT_IN_TOKEN)


# -- which scopes a token carries (origin's /token) ------------------------------------------

NAMES = {"app": "acme/app", "acme/app": "acme/app", "pub": "beta/pub", "priv": "beta/priv"}
PUBLIC = {"beta/pub"}


def issue(principal: Principal, *scopes: Access) -> list[Access]:
    return grant_accesses(principal, list(scopes), resolve=NAMES.get, is_public=PUBLIC.__contains__)


def test_issued_grants_carry_internal_names() -> None:
    assert issue(ORG_A, repo("app", PULL, PUSH)) == [repo("acme/app", PULL, PUSH)]


def test_issued_grants_merge_names_resolving_to_the_same_repository() -> None:
    assert issue(ORG_A, repo("app", PULL), repo("acme/app", PUSH), repo("app", DELETE)) == [
        repo("acme/app", PULL, PUSH, DELETE)
    ]


def test_issued_grants_drop_unknown_and_empty() -> None:
    assert issue(ORG_A, repo("missing", PULL), repo("priv", PULL), repo("app", "bogus")) == []


def test_issued_grants_public_pull_only() -> None:
    assert issue(ANONYMOUS, repo("pub", PULL, PUSH), repo("app", PULL)) == [repo("beta/pub", PULL)]
    assert issue(PULL_A, repo("app", "*"), repo("pub", "*")) == [
        repo("acme/app", PULL),
        repo("beta/pub", PULL),
    ]


def test_issued_grants_a_project_token_only_its_project() -> None:
    names = {"p1x2": "acme/p1x2", "app": "acme/app"}
    scopes = [repo("p1x2", "*"), repo("app", PULL)]
    granted = grant_accesses(PROJECT, scopes, resolve=names.get, is_public=PUBLIC.__contains__)
    assert granted == [repo("acme/p1x2", PULL, PUSH, DELETE)]


def test_issued_grants_catalog() -> None:
    assert issue(ORG_A, CATALOG) == [CATALOG]
    assert issue(EDGE, CATALOG) == [CATALOG]
    assert issue(ANONYMOUS, CATALOG) == []
    assert issue(ORG_A, Access("registry", "catalog", frozenset({PULL}))) == []


def test_issued_grants_ignore_other_resource_types() -> None:
    assert issue(ORG_A, Access("registry", "other", frozenset({"*"}))) == []
    assert issue(ORG_A, Access("plugin", "app", frozenset({PULL}))) == []


def test_an_issued_token_decides_like_its_principal() -> None:
    """What /token grants for a principal is what the gates then allow the bearer."""
    scopes = [repo("app", "*"), repo("pub", "*"), repo("priv", "*")]
    for principal in (ORG_A, ORG_B, USER, PROJECT, PULL_A, EDGE, ANONYMOUS):
        bearer = grant(principal.kind, principal.orgs, *issue(principal, *scopes))
        for internal in ("acme/app", "beta/pub", "beta/priv"):
            resource = Repository(internal, internal in PUBLIC)
            expected = decide(principal, ALL, resource).granted
            assert decide(bearer, ALL, resource).granted == expected, (principal.kind, internal)
