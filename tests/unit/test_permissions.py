import pytest

from core.auth.permissions import allowed_actions, grant_accesses
from core.auth.principal import ALL_ACTIONS, ANONYMOUS, DELETE, PULL, PUSH, Principal
from core.auth.scopes import CATALOG, Access

ORG = Principal("org", "tok_org", frozenset({"acme"}), None, ALL_ACTIONS)
USER = Principal("user", "u1", frozenset({"acme", "beta"}), None, frozenset({PULL, PUSH}))
PROJECT = Principal("project", "tok_proj", frozenset({"acme"}), "p1x2", ALL_ACTIONS)
PULL_TOKEN = Principal("pull", "tok_pull", frozenset({"acme"}), None, frozenset({PULL}))
EDGE = Principal("edge", "edge-eu", frozenset(), None, frozenset({PULL}))

NONE: frozenset[str] = frozenset()
P = frozenset({PULL})
PP = frozenset({PULL, PUSH})
ALL = ALL_ACTIONS


@pytest.mark.parametrize(
    ("principal", "repository", "public", "expected"),
    [
        # org token: everything in its org, nothing elsewhere unless public (then pull only)
        (ORG, "acme/app", False, ALL),
        (ORG, "acme/p1x2", False, ALL),
        (ORG, "acme/a/b/c", True, ALL),
        (ORG, "other/app", False, NONE),
        (ORG, "other/app", True, P),
        (ORG, "acmex/app", False, NONE),
        (ORG, "acme", False, NONE),
        # a principal never exceeds its own actions
        (USER, "beta/app", False, PP),
        (USER, "acme/app", True, PP),
        # project token: only <org>/<project>
        (PROJECT, "acme/p1x2", False, ALL),
        (PROJECT, "acme/p1x2/sub", False, NONE),
        (PROJECT, "acme/other", False, NONE),
        (PROJECT, "acme/other", True, P),
        (PROJECT, "other/p1x2", False, NONE),
        # pull token: pull only
        (PULL_TOKEN, "acme/app", False, P),
        (PULL_TOKEN, "other/app", False, NONE),
        (PULL_TOKEN, "other/app", True, P),
        # anonymous: public pull only
        (ANONYMOUS, "acme/app", False, NONE),
        (ANONYMOUS, "acme/app", True, P),
        # edge: pull everywhere, never more
        (EDGE, "acme/app", False, P),
        (EDGE, "other/app", True, P),
    ],
)
def test_permission_matrix(
    principal: Principal, repository: str, public: bool, expected: frozenset[str]
) -> None:
    assert allowed_actions(principal, repository, ALL, public=public) == expected
    assert allowed_actions(principal, repository, frozenset({"*"}), public=public) == expected


def test_result_is_within_the_request() -> None:
    assert allowed_actions(ORG, "acme/app", P, public=False) == P
    assert allowed_actions(ORG, "acme/app", frozenset({DELETE}), public=False) == {DELETE}
    assert allowed_actions(ORG, "acme/app", frozenset({"pull", "bogus"}), public=False) == P
    assert allowed_actions(ORG, "acme/app", NONE, public=True) == NONE
    assert allowed_actions(ANONYMOUS, "acme/app", frozenset({PUSH}), public=True) == NONE


def test_edge_never_pushes_even_if_its_actions_say_so() -> None:
    greedy = Principal("edge", "edge-x", frozenset({"acme"}), None, ALL_ACTIONS)
    assert allowed_actions(greedy, "acme/app", ALL, public=False) == P
    assert allowed_actions(greedy, "acme/app", frozenset({PUSH, DELETE}), public=True) == NONE


NAMES = {"app": "acme/app", "acme/app": "acme/app", "pub": "other/pub", "priv": "other/priv"}
PUBLIC = {"other/pub"}


def grant(principal: Principal, *scopes: Access) -> list[Access]:
    return grant_accesses(principal, list(scopes), resolve=NAMES.get, is_public=PUBLIC.__contains__)


def repo(name: str, *actions: str) -> Access:
    return Access("repository", name, frozenset(actions))


def test_grant_carries_internal_names() -> None:
    assert grant(ORG, repo("app", "pull", "push")) == [repo("acme/app", "pull", "push")]


def test_grant_merges_names_resolving_to_the_same_repository() -> None:
    assert grant(ORG, repo("app", "pull"), repo("acme/app", "push"), repo("app", "delete")) == [
        repo("acme/app", "pull", "push", "delete")
    ]


def test_grant_drops_unknown_and_empty() -> None:
    assert grant(ORG, repo("missing", "pull"), repo("priv", "pull"), repo("app", "bogus")) == []


def test_grant_public_pull_only() -> None:
    assert grant(ANONYMOUS, repo("pub", "pull", "push"), repo("app", "pull")) == [
        repo("other/pub", "pull")
    ]
    assert grant(PULL_TOKEN, repo("app", "*"), repo("pub", "*")) == [
        repo("acme/app", "pull"),
        repo("other/pub", "pull"),
    ]


def test_grant_catalog() -> None:
    assert grant(ORG, CATALOG) == [CATALOG]
    assert grant(EDGE, CATALOG) == [CATALOG]
    assert grant(ANONYMOUS, CATALOG) == []
    assert grant(ORG, Access("registry", "catalog", frozenset({"pull"}))) == []


def test_grant_ignores_other_resource_types() -> None:
    assert grant(ORG, Access("registry", "other", frozenset({"*"}))) == []
    assert grant(ORG, Access("plugin", "app", frozenset({"pull"}))) == []
