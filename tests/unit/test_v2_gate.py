"""The ``/v2/`` gate rules both gates share (core/auth/gate.py): names, per-request decisions,
mounts, the ``/v2/`` authentication rule and the refusals (401 challenges, 403).

Pure apart from the lookups, which are plain async callables here; the gates' own parts
(origin's tenancy store and keys, the edge's exchanges at origin) are integration-tested.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytest

from core.auth.gate import (
    BASIC,
    BEARER,
    NONE,
    Presented,
    decide_request,
    open_authorization,
    required_for,
    resolve_name,
    resolve_names,
)
from core.auth.principal import ALL_ACTIONS, ANONYMOUS, PULL, PUSH, Principal
from core.auth.request import Authorization, Caller, RequestView
from core.auth.scopes import Access
from core.auth.tokens import Grant
from core.endpoints import parse_endpoint
from core.errors import Denied, RegistryError, Unauthorized
from core.reference import RepositoryName

SERVICE = "depot-registry"
BASE_DOMAIN = "registry.test"
ORG_A = Principal("org", "tok_a", frozenset({"acme"}), None, ALL_ACTIONS)
ORG_B = Principal("org", "tok_b", frozenset({"beta"}), None, ALL_ACTIONS)
PULL_A = Principal("pull", "tok_p", frozenset({"acme"}), None, frozenset({PULL}))
PUBLIC = {"beta/pub"}
PROJECTS = {"p1x2": "acme"}


def bearer(*access: Access, orgs: frozenset[str] = frozenset({"acme"})) -> Grant:
    return Grant("sub", "org", orgs, access, 0, 300, "jti")


def repo(name: str, *actions: str) -> Access:
    return Access("repository", name, frozenset(actions))


async def project_org(project_id: str) -> str | None:
    return PROJECTS.get(project_id)


async def resolve(host: str, name: RepositoryName) -> RepositoryName | None:
    return await resolve_name(host, name, base_domain=BASE_DOMAIN, project_org=project_org)


class Visibility:
    """``is_public`` that remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, name: str) -> bool:
        self.asked.append(name)
        return name in PUBLIC


def view(
    method: str, path: str, query: Mapping[str, str] | None = None, host: str = "localhost:5000"
) -> RequestView:
    return RequestView(method, host, "http", None, parse_endpoint(path), query or {})


async def authorize(
    request: RequestView, presented: Presented, visibility: Visibility | None = None
) -> Authorization:
    required = required_for(request)
    names = await resolve_names(request.host, required, resolve)
    return await decide_request(
        request,
        required,
        names,
        presented,
        service=SERVICE,
        is_public=visibility if visibility is not None else Visibility(),
    )


async def refused(request: RequestView, presented: Presented) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        await authorize(request, presented)
    return caught.value


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "name", "internal"),
    [
        ("acme.registry.test", "team/app", "acme/team/app"),  # org subdomain
        ("acme.registry.test:5000", "p1x2", "acme/p1x2"),
        ("localhost:5000", "acme/team/app", "acme/team/app"),  # path style
        ("registry.test", "beta/pub", "beta/pub"),
        ("localhost:5000", "p1x2", "acme/p1x2"),  # legacy project URL
        ("localhost:5000", "nosuch", None),  # an id that is no project
        ("localhost:5000", "a_b/app", None),  # an org component that is no slug
    ],
)
async def test_names_resolve_to_internal_names(host: str, name: str, internal: str | None) -> None:
    resolved = await resolve(host, RepositoryName(name))
    assert resolved == (RepositoryName(internal) if internal else None)


async def test_resolve_names_keeps_what_resolves() -> None:
    required = [repo("acme/app", PULL), repo("nosuch", PULL), repo("acme/app", PUSH)]
    assert await resolve_names("localhost", required, resolve) == {
        "acme/app": RepositoryName("acme/app")
    }


def test_with_auth_off_names_are_what_they_say() -> None:
    granted = open_authorization([repo("app", PULL), Access("registry", "catalog", frozenset("*"))])
    assert granted == Authorization(
        Caller(frozenset(), everything=True), {"app": RepositoryName("app")}
    )


# -- deciding --------------------------------------------------------------------------------


async def test_the_caller_gets_its_internal_names_and_orgs() -> None:
    granted = await authorize(view("GET", "/v2/acme/app/manifests/v1"), Presented(BASIC, ORG_A))
    assert granted == Authorization(
        Caller(frozenset({"acme"})), {"acme/app": RepositoryName("acme/app")}, True
    )


async def test_referrers_need_pull_on_the_repository() -> None:
    path = "/v2/acme/app/referrers/sha256:" + "a" * 64
    assert isinstance(await authorize(view("GET", path), Presented(BASIC, PULL_A)), Authorization)
    assert isinstance(await refused(view("GET", path), Presented(BASIC, ORG_B)), Denied)
    public = "/v2/beta/pub/referrers/sha256:" + "a" * 64
    assert await authorize(view("GET", public), Presented(NONE, ANONYMOUS))


async def test_visibility_is_asked_for_principals_only() -> None:
    visibility = Visibility()
    request = view("GET", "/v2/beta/pub/manifests/v1")
    await authorize(request, Presented(NONE, ANONYMOUS), visibility)
    assert visibility.asked == ["beta/pub"]
    claimed = bearer(repo("beta/pub", PULL))
    await authorize(request, Presented(BEARER, claimed), visibility)
    assert visibility.asked == ["beta/pub"]


async def test_a_mount_from_a_source_the_caller_cannot_pull_becomes_a_plain_upload() -> None:
    upload = "/v2/acme/app/blobs/uploads/"
    mount = {"mount": "sha256:" + "a" * 64}
    foreign = await authorize(
        view("POST", upload, {**mount, "from": "beta/private"}), Presented(BASIC, ORG_A)
    )
    assert foreign.mount_allowed is False
    public = await authorize(
        view("POST", upload, {**mount, "from": "beta/pub"}), Presented(BASIC, ORG_A)
    )
    assert public.mount_allowed is True
    own = await authorize(
        view("POST", upload, {**mount, "from": "acme/base"}), Presented(BASIC, ORG_A)
    )
    assert own.mount_allowed is True
    # The target itself is never excused: a pull token cannot push, mount or not.
    denied = await refused(
        view("POST", upload, {**mount, "from": "acme/base"}), Presented(BASIC, PULL_A)
    )
    assert isinstance(denied, Denied)


async def test_a_mount_by_bearer_token_needs_the_source_in_its_claim() -> None:
    upload = view(
        "POST", "/v2/acme/app/blobs/uploads/", {"mount": "sha256:" + "a" * 64, "from": "beta/pub"}
    )
    token = bearer(repo("acme/app", PULL, PUSH))
    assert (await authorize(upload, Presented(BEARER, token))).mount_allowed is False
    token = bearer(repo("acme/app", PULL, PUSH), repo("beta/pub", PULL))
    assert (await authorize(upload, Presented(BEARER, token))).mount_allowed is True


async def test_the_catalog_needs_authentication() -> None:
    catalog = view("GET", "/v2/_catalog")
    assert (await authorize(catalog, Presented(BASIC, ORG_A))).caller == Caller(frozenset({"acme"}))
    assert (await authorize(catalog, Presented(BEARER, bearer()))).caller.orgs == {"acme"}
    error = await refused(catalog, Presented(NONE, ANONYMOUS))
    assert error.headers["WWW-Authenticate"] == (
        'Bearer realm="http://localhost:5000/token",service="depot-registry",'
        'scope="registry:catalog:*"'
    )


# -- /v2/ and the refusals -------------------------------------------------------------------

BASE_CHALLENGE = 'Bearer realm="http://localhost:5000/token",service="depot-registry"'
PULL_CHALLENGE = (
    'Bearer realm="http://localhost:5000/token",service="depot-registry",'
    'scope="repository:acme/app:pull"'
)


@pytest.mark.parametrize(
    ("presented", "allowed"),
    [
        (Presented(NONE, ANONYMOUS), False),
        (Presented(NONE, None), False),
        (Presented(NONE, bearer()), False),  # the edge's anonymous exchange is no login
        (Presented(BEARER, ANONYMOUS, "invalid_token"), False),
        (Presented(BEARER, None, "invalid_token"), False),
        (Presented(BEARER, bearer()), True),
        (Presented(BEARER, bearer(orgs=frozenset())), True),  # an anonymous bearer token
        (Presented(BASIC, ORG_A), True),
        (Presented(BASIC, bearer()), True),  # the edge's exchanged Basic credentials
    ],
)
async def test_v2_base_needs_valid_credentials(presented: Presented, allowed: bool) -> None:
    request = view("GET", "/v2/")
    if allowed:
        assert await authorize(request, presented)
    else:
        assert (
            (await refused(request, presented))
            .headers["WWW-Authenticate"]
            .startswith(BASE_CHALLENGE)
        )


@pytest.mark.parametrize(
    ("presented", "status", "challenge"),
    [
        (Presented(NONE, ANONYMOUS), 401, PULL_CHALLENGE),
        (Presented(NONE, None), 401, PULL_CHALLENGE),
        (Presented(BEARER, None, "invalid_token"), 401, PULL_CHALLENGE + ',error="invalid_token"'),
        (
            Presented(BEARER, ANONYMOUS, "invalid_token"),
            401,
            PULL_CHALLENGE + ',error="invalid_token"',
        ),
        (Presented(BEARER, bearer()), 401, PULL_CHALLENGE + ',error="insufficient_scope"'),
        (Presented(BASIC, ORG_B), 403, None),
        (Presented(BASIC, bearer()), 403, None),
    ],
)
async def test_refusals(presented: Presented, status: int, challenge: str | None) -> None:
    error = await refused(view("GET", "/v2/acme/app/manifests/v1"), presented)
    assert error.status == status
    if challenge is None:
        assert isinstance(error, Denied)
        assert error.detail == ["repository:acme/app:pull"]
        assert "WWW-Authenticate" not in error.headers
    else:
        assert isinstance(error, Unauthorized)
        assert error.headers == {"WWW-Authenticate": challenge}


async def test_the_realm_is_the_host_the_client_asked() -> None:
    endpoint = parse_endpoint("/v2/app/manifests/v1")
    request = RequestView("GET", "acme.registry.test", "https", None, endpoint, {})
    error = await refused(request, Presented(NONE, ANONYMOUS))
    assert error.headers["WWW-Authenticate"] == (
        'Bearer realm="https://acme.registry.test/token",service="depot-registry",'
        'scope="repository:app:pull"'
    )


async def test_an_unknown_name_is_refused_like_a_foreign_one() -> None:
    """A name that resolves to nothing grants nothing: the client cannot tell it apart."""
    unknown = await refused(view("GET", "/v2/nosuch/manifests/v1"), Presented(BASIC, ORG_A))
    foreign = await refused(view("GET", "/v2/beta/app/manifests/v1"), Presented(BASIC, ORG_A))
    assert type(unknown) is type(foreign) is Denied


async def test_a_refusal_logs_why_without_the_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="depot.auth")
    request = RequestView(
        "GET", "localhost", "http", "Basic c2VjcmV0", parse_endpoint("/v2/beta/app/tags/list"), {}
    )
    await refused(request, Presented(BASIC, ORG_A))
    assert caplog.messages == ["refused repository:beta/app:pull: outside the caller's orgs"]
    assert "c2VjcmV0" not in caplog.text
