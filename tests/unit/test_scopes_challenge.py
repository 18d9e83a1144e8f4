import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.auth.challenge import basic_challenge, bearer_challenge
from core.auth.scopes import CATALOG, Access, merge, parse_scopes, required_access
from core.endpoints import Kind


def acc(text: str) -> Access:
    type_, rest = text.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    return Access(type_, name, frozenset(actions.split(",")))


def test_access_str_sorts_actions() -> None:
    assert str(Access("repository", "a/b", frozenset({"push", "pull"}))) == (
        "repository:a/b:pull,push"
    )


def test_parse_one_scope() -> None:
    assert parse_scopes(["repository:acme/app:pull,push"]) == [
        Access("repository", "acme/app", frozenset({"pull", "push"}))
    ]


def test_parse_repeated_and_space_joined_scopes() -> None:
    assert parse_scopes(["repository:a/b:pull repository:c:push", "registry:catalog:*"]) == [
        acc("repository:a/b:pull"),
        acc("repository:c:push"),
        acc("registry:catalog:*"),
    ]


def test_parse_name_with_a_port() -> None:
    assert parse_scopes(["repository:localhost:5000/a:pull"]) == [
        Access("repository", "localhost:5000/a", frozenset({"pull"}))
    ]


def test_parse_strips_the_resource_class() -> None:
    assert parse_scopes(["repository(plugin):vieux/sshfs:pull"]) == [
        acc("repository:vieux/sshfs:pull")
    ]


def test_parse_ignores_empty_actions_between_commas() -> None:
    assert parse_scopes(["repository:a:pull,,push,"]) == [acc("repository:a:pull,push")]


@pytest.mark.parametrize(
    "scope",
    [
        "",
        "   ",
        "repository",
        "repository:a",
        "repository::pull",
        "repository:a:",
        "repository:a:,",
        ":a:pull",
        "Repository:a:pull",
        "repository:a:PULL",
        "repository:a:pull,pu-sh",
        'repository:a"b:pull',
        "repository:a\\b:pull",
        "repository(:a:pull",
        "repository(x)(y):a:pull",
        "repository:" + "a" * 600 + ":pull",
    ],
)
def test_parse_ignores_malformed_scopes(scope: str) -> None:
    assert parse_scopes([scope, "repository:ok:pull"]) == [acc("repository:ok:pull")]


def test_merge_unions_actions_in_first_seen_order() -> None:
    merged = merge([acc("repository:a:pull"), acc("repository:b:pull"), acc("repository:a:push")])
    assert merged == [acc("repository:a:pull,push"), acc("repository:b:pull")]
    assert merge([acc("repository:a:pull"), acc("registry:a:pull")]) == [
        acc("repository:a:pull"),
        acc("registry:a:pull"),
    ]


@pytest.mark.parametrize(
    ("method", "kind", "expected"),
    [
        ("GET", Kind.MANIFEST, "pull"),
        ("HEAD", Kind.MANIFEST, "pull"),
        ("get", Kind.BLOB, "pull"),
        ("HEAD", Kind.BLOB, "pull"),
        ("GET", Kind.TAGS, "pull"),
        ("GET", Kind.REFERRERS, "pull"),
        ("GET", Kind.UPLOAD, "pull"),
        ("POST", Kind.UPLOADS, "pull,push"),
        ("PATCH", Kind.UPLOAD, "pull,push"),
        ("PUT", Kind.UPLOAD, "pull,push"),
        ("PUT", Kind.MANIFEST, "pull,push"),
        ("DELETE", Kind.MANIFEST, "delete"),
        ("DELETE", Kind.BLOB, "delete"),
        ("DELETE", Kind.UPLOAD, "delete"),
        ("OPTIONS", Kind.BLOB, "pull,push"),
    ],
)
def test_required_access(method: str, kind: Kind, expected: str) -> None:
    assert required_access(method, kind, "acme/app", {}) == [acc(f"repository:acme/app:{expected}")]


def test_required_access_base_and_catalog() -> None:
    assert required_access("GET", Kind.BASE, None, {}) == []
    assert required_access("GET", Kind.CATALOG, None, {}) == [CATALOG]
    assert str(CATALOG) == "registry:catalog:*"


def test_required_access_mount_needs_pull_on_the_source() -> None:
    query = {"mount": "sha256:" + "a" * 64, "from": "acme/base"}
    assert required_access("POST", Kind.UPLOADS, "acme/app", query) == [
        acc("repository:acme/app:pull,push"),
        acc("repository:acme/base:pull"),
    ]


@pytest.mark.parametrize(
    "query",
    [
        {"from": "acme/base"},
        {"mount": "sha256:" + "a" * 64},
        {"mount": "", "from": "acme/base"},
        {"mount": "x", "from": ""},
        {"mount": "x", "from": "Not A Name"},
    ],
)
def test_required_access_without_a_usable_mount(query: dict[str, str]) -> None:
    assert required_access("POST", Kind.UPLOADS, "acme/app", query) == [
        acc("repository:acme/app:pull,push")
    ]


def test_required_access_mount_from_the_same_repository_merges() -> None:
    query = {"mount": "x", "from": "acme/app"}
    assert required_access("POST", Kind.UPLOADS, "acme/app", query) == [
        acc("repository:acme/app:pull,push")
    ]


def test_required_access_needs_a_name_for_repository_endpoints() -> None:
    with pytest.raises(ValueError):
        required_access("GET", Kind.MANIFEST, None, {})


@given(st.lists(st.text(max_size=60), max_size=5))
def test_parse_scopes_never_raises(values: list[str]) -> None:
    for access in parse_scopes(values):
        assert access.actions
        assert access.name


_types = st.from_regex(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", fullmatch=True)
_names = st.from_regex(r"[A-Za-z0-9._:/@+-]{1,60}", fullmatch=True)
_actions = st.frozensets(st.sampled_from(["pull", "push", "delete", "*", "x"]), min_size=1)


@given(_types, _names, _actions)
def test_parse_scopes_round_trips_str(type_: str, name: str, actions: frozenset[str]) -> None:
    access = Access(type_, name, actions)
    assert parse_scopes([str(access)]) == [access]
    assert parse_scopes([f"{access} {access}"]) == [access, access]


# -- challenges ------------------------------------------------------------------------------

REALM = "https://registry.example/token"


def test_bearer_challenge_one_scope() -> None:
    assert bearer_challenge(REALM, "registry.example", [acc("repository:a/b:push,pull")]) == (
        'Bearer realm="https://registry.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )


def test_bearer_challenge_several_scopes_and_error() -> None:
    header = bearer_challenge(
        REALM,
        "svc",
        [acc("repository:a/b:pull,push"), acc("repository:c:pull")],
        error="insufficient_scope",
    )
    assert header == (
        'Bearer realm="https://registry.example/token",service="svc",'
        'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"'
    )


def test_bearer_challenge_without_scopes() -> None:
    assert bearer_challenge(REALM, "svc", []) == (
        'Bearer realm="https://registry.example/token",service="svc"'
    )


def test_challenge_escapes_quotes_backslashes_and_drops_control_characters() -> None:
    header = bearer_challenge('a"b\\c', "s\r\nX-Evil: 1", [])
    assert header == 'Bearer realm="a\\"b\\\\c",service="sX-Evil: 1"'
    assert "\r" not in header and "\n" not in header


def test_basic_challenge() -> None:
    assert basic_challenge("depot") == 'Basic realm="depot"'
    assert basic_challenge('q"') == 'Basic realm="q\\""'
