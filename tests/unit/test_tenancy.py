import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import NameInvalid
from core.reference import RepositoryName, parse_repository_name
from core.tenancy import (
    Addressed,
    address,
    internal_name,
    is_org_slug,
    org_from_host,
    org_of,
)

BASE = "registry.example"


@pytest.mark.parametrize("text", ["acme", "a", "0", "a-b", "a--b", "p1x2", "a" * 63, "9lives"])
def test_valid_org_slugs(text: str) -> None:
    assert is_org_slug(text)


@pytest.mark.parametrize(
    "text", ["", "-a", "a-", "Acme", "a_b", "a.b", "a/b", "a" * 64, "acme\n", " acme", "é"]
)
def test_invalid_org_slugs(text: str) -> None:
    assert not is_org_slug(text)


@pytest.mark.parametrize(
    ("host", "base", "org"),
    [
        ("acme.registry.example", BASE, "acme"),
        ("ACME.Registry.Example", BASE, "acme"),
        ("acme.registry.example:5000", BASE, "acme"),
        ("acme.registry.example.", BASE, "acme"),
        ("acme.registry.example", "Registry.Example:443", "acme"),
        ("registry.example", BASE, None),
        ("registry.example:5000", BASE, None),
        ("a.b.registry.example", BASE, None),
        ("xregistry.example", BASE, None),
        ("acme.registry.example.evil.com", BASE, None),
        ("under_score.registry.example", BASE, None),
        ("-acme.registry.example", BASE, None),
        (".registry.example", BASE, None),
        ("localhost:5000", BASE, None),
        ("127.0.0.1:5000", BASE, None),
        ("[::1]:5000", BASE, None),
        ("::1", BASE, None),
        ("", BASE, None),
        ("acme.registry.example", None, None),
        ("acme.registry.example", "", None),
    ],
)
def test_org_from_host(host: str, base: str | None, org: str | None) -> None:
    assert org_from_host(host, base) == org


def _name(text: str) -> RepositoryName:
    return parse_repository_name(text)


@pytest.mark.parametrize(
    ("host", "name", "expected"),
    [
        # 1. org subdomain: the whole name is the path
        ("acme.registry.example", "your/app", Addressed("acme", "your/app", None)),
        ("acme.registry.example", "p1x2", Addressed("acme", "p1x2", "p1x2")),
        ("acme.registry.example:443", "acme/app", Addressed("acme", "acme/app", None)),
        # 2. path style on any other host
        ("registry.example", "acme/your/app", Addressed("acme", "your/app", None)),
        ("localhost:5000", "acme/p1x2", Addressed("acme", "p1x2", "p1x2")),
        ("10.0.0.1", "acme/a/b/c", Addressed("acme", "a/b/c", None)),
        ("a.b.registry.example", "acme/app", Addressed("acme", "app", "app")),
        # 3. legacy project URL: one component on a non-subdomain host
        ("registry.example", "p1x2", Addressed(None, "p1x2", "p1x2")),
        ("localhost", "p1x2", Addressed(None, "p1x2", "p1x2")),
        ("a.b.registry.example", "my_project", Addressed(None, "my_project", "my_project")),
    ],
)
def test_address(host: str, name: str, expected: Addressed) -> None:
    assert address(host, _name(name), BASE) == expected


def test_address_without_base_domain_is_path_style() -> None:
    assert address("acme.registry.example", _name("acme/your/app"), None) == Addressed(
        "acme", "your/app", None
    )
    assert address("acme.registry.example", _name("p1x2"), None) == Addressed(None, "p1x2", "p1x2")


@pytest.mark.parametrize("name", ["my_org/app", "a.b/app", "a__b/c", "x-y_z/app", "a.b.c/d/e"])
def test_address_rejects_an_invalid_org_component(name: str) -> None:
    with pytest.raises(NameInvalid):
        address("registry.example", _name(name), BASE)


def test_address_rejects_an_internal_name_over_the_length_limit() -> None:
    assert address("acme.registry.example", _name("a" * 250), BASE).org == "acme"  # 255
    name = _name("a" * 251)
    with pytest.raises(NameInvalid):
        address("acme.registry.example", name, BASE)
    # Path style never grows the name.
    assert address("registry.example", _name("acme/" + "a" * 250), BASE).org == "acme"


def test_internal_name_and_org_of() -> None:
    assert internal_name("acme", "your/app") == RepositoryName("acme/your/app")
    assert org_of(RepositoryName("acme/your/app")) == "acme"
    assert org_of("acme/p1x2") == "acme"
    assert org_of("lonely") == "lonely"
    with pytest.raises(NameInvalid):
        internal_name("Acme", "app")
    with pytest.raises(NameInvalid):
        internal_name("acme", "Bad")
    with pytest.raises(NameInvalid):
        internal_name("acme", "")


_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_components = st.from_regex(_COMPONENT, fullmatch=True).filter(lambda c: len(c) <= 40)
_names = st.lists(_components, min_size=1, max_size=6).map("/".join).filter(lambda n: len(n) <= 255)
_hosts = st.one_of(
    st.sampled_from(
        ["acme.registry.example", "registry.example", "localhost:5000", "a.b.registry.example"]
    ),
    st.from_regex(r"[a-z0-9_.-]{0,20}\.registry\.example(:[0-9]{1,5})?", fullmatch=True),
    st.text(max_size=40),
)


@given(_hosts, _names, st.sampled_from([BASE, None, "", "Registry.Example."]))
def test_address_raises_only_name_invalid(host: str, text: str, base: str | None) -> None:
    name = parse_repository_name(text)
    try:
        addressed = address(host, name, base)
    except NameInvalid:
        return
    if addressed.org is None:
        assert "/" not in text
        assert addressed.path == addressed.project_id == text
        return
    assert is_org_slug(addressed.org)
    assert addressed.project_id == (addressed.path if "/" not in addressed.path else None)
    internal = internal_name(addressed.org, addressed.path)
    assert org_of(internal) == addressed.org
    if org_from_host(host, base) is None:
        assert internal.value == text
