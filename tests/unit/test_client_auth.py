"""core/client/auth.py: challenge parsing, scopes, token answers and the token cache (pure), and
the auth flow of the registry client against an in-memory registry (httpx.MockTransport) with
virtual time: tokens cached per scope until shortly before they expire, one token request in
flight per key, a refused token renewed, Basic challenges, error mapping, no secret leaked."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import trio

from core.client.auth import (
    Challenge,
    TokenCache,
    TokenKey,
    normalise_scope,
    parse_challenges,
    parse_token_answer,
    usable_seconds,
)
from core.client.credentials import ANONYMOUS, Credentials, StaticCredentials
from core.client.http import open_http_client
from core.client.registry import RegistryClient
from core.digest import sha256_of
from core.errors import Denied, TooManyRequests, Unauthorized, Unavailable
from core.reference import RepositoryName

REPO = RepositoryName("team/app")
DIGEST = sha256_of(b"blob")
SECRET = "s3cret-password"
CREDENTIALS = StaticCredentials(Credentials("alice", SECRET))
REALM = "https://auth.test/token"
BEARER = f'Bearer realm="{REALM}",service="registry.test"'


# -- pure pieces ----------------------------------------------------------------------------------


def test_challenges_are_parsed_with_quoting_and_several_per_header() -> None:
    header = (
        'Bearer realm="https://auth.test/token",service="registry.test",'
        'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope", '
        'Basic realm="say \\"hi\\""'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.test/token",
                "service": "registry.test",
                "scope": "repository:a/b:pull,push repository:c:pull",
                "error": "insufficient_scope",
            },
        ),
        Challenge("basic", {"realm": 'say "hi"'}),
    ]
    assert parse_challenges("Basic") == [Challenge("basic", {})]
    assert parse_challenges("BASIC Realm=x") == [Challenge("basic", {"realm": "x"})]
    assert parse_challenges("") == []
    assert parse_challenges('=junk "') == []


def test_scopes_are_normalised_for_the_cache() -> None:
    assert normalise_scope("repository:b:push,pull repository:a:pull") == (
        "repository:a:pull repository:b:pull,push"
    )
    assert normalise_scope("repository:a:pull repository:a:push") == "repository:a:pull,push"
    assert normalise_scope("repository:localhost:5000/a:pull") == "repository:localhost:5000/a:pull"
    assert normalise_scope("registry:catalog:*") == "registry:catalog:*"
    assert normalise_scope("") == ""


def test_token_answers() -> None:
    assert parse_token_answer(b'{"token": "t", "expires_in": 300}') == ("t", 300.0)
    assert parse_token_answer(b'{"access_token": "a"}') == ("a", 60.0)
    assert parse_token_answer(b'{"token": "t", "expires_in": true}') == ("t", 60.0)
    assert parse_token_answer(b'{"token": "t", "expires_in": -5}') == ("t", 60.0)
    for bad in (b"not json", b"[]", b'{"token": ""}', b'{"expires_in": 60}'):
        with pytest.raises(Unavailable):
            parse_token_answer(bad)
    assert usable_seconds(60) == 50
    assert usable_seconds(300) == 290
    assert usable_seconds(4) == 2


def test_token_cache_expires_and_forgets() -> None:
    cache = TokenCache(size=2)
    one, two, three = (TokenKey(REALM, "s", f"repository:{n}:pull") for n in "abc")
    cache.put(one, "t1", until=10)
    assert cache.get(one, now=9.9) == "t1"
    assert cache.get(one, now=10) is None
    cache.put(one, "t1", until=100)
    cache.put(two, "t2", until=100)
    cache.forget("t1")
    assert cache.get(one, now=0) is None
    cache.put(one, "t1", until=100)
    cache.get(two, now=0)  # two is now the most recently used
    cache.put(three, "t3", until=100)
    assert (cache.get(one, 0), cache.get(two, 0), cache.get(three, 0)) == (None, "t2", "t3")


# -- the flow against an in-memory registry -----------------------------------------------------


@dataclass
class FakeRegistry:
    """``HEAD /v2/team/app/blobs/...`` behind Bearer auth, and its token service."""

    expires_in: int | None = 60
    token_delay: float = 0.0
    token_status: int = 200
    refused: set[str] = field(default_factory=set)  # tokens the registry no longer takes
    insufficient: bool = False  # every token lacks the scope asked for
    issued: list[str] = field(default_factory=list)
    token_auth: list[str | None] = field(default_factory=list)
    registry_auth: list[str | None] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return await self._token(request)
        authorization = request.headers.get("Authorization")
        self.registry_auth.append(authorization)
        token = (authorization or "").removeprefix("Bearer ")
        if token in self.issued and token not in self.refused and not self.insufficient:
            return httpx.Response(200, headers={"Content-Length": "4"})
        challenge = f'{BEARER},scope="repository:team/app:pull"'
        if token in self.issued and self.insufficient:
            challenge += ',error="insufficient_scope"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return httpx.Response(401, headers={"WWW-Authenticate": challenge}, json=body)

    async def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_auth.append(request.headers.get("Authorization"))
        await trio.sleep(self.token_delay)
        if self.token_status != 200:
            return httpx.Response(
                self.token_status,
                headers={"Retry-After": "9"},
                json={"details": "token service says no"},
            )
        token = f"token-{len(self.issued)}"
        self.issued.append(token)
        answer: dict[str, object] = {"token": token}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return httpx.Response(200, json=answer)


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def client(handler: Handler, credentials: StaticCredentials | None = CREDENTIALS) -> RegistryClient:
    http = open_http_client(
        "https://registry.test", auth_header=None, transport=httpx.MockTransport(handler)
    )
    return RegistryClient(http, credentials or ANONYMOUS)


def basic_value(header: str | None) -> str:
    assert header is not None and header.startswith("Basic ")
    return base64.b64decode(header.removeprefix("Basic ")).decode()


async def test_a_token_is_fetched_on_challenge_then_cached_until_near_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = FakeRegistry(expires_in=60)
    registry_client = client(registry)
    for _ in range(3):
        assert await registry_client.blob_size(REPO, DIGEST) == 4
    assert registry.issued == ["token-0"]
    assert registry.registry_auth == [None, "Bearer token-0", "Bearer token-0", "Bearer token-0"]
    assert [basic_value(a) for a in registry.token_auth] == [f"alice:{SECRET}"]

    await trio.sleep(49)  # still inside the token's usable life (60 s less 10)
    await registry_client.blob_size(REPO, DIGEST)
    assert registry.issued == ["token-0"]
    await trio.sleep(2)  # past it: renewed before the request goes out, no 401 round trip
    await registry_client.blob_size(REPO, DIGEST)
    assert registry.issued == ["token-0", "token-1"]
    assert registry.registry_auth[-1] == "Bearer token-1"
    assert registry.registry_auth.count(None) == 1


async def test_without_expires_in_a_token_lives_60_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = FakeRegistry(expires_in=None)
    registry_client = client(registry)
    await registry_client.blob_size(REPO, DIGEST)
    await trio.sleep(49)
    await registry_client.blob_size(REPO, DIGEST)
    await trio.sleep(2)
    await registry_client.blob_size(REPO, DIGEST)
    assert registry.issued == ["token-0", "token-1"]


async def test_concurrent_requests_share_one_token_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = FakeRegistry(token_delay=5)
    registry_client = client(registry)
    sizes: list[int | None] = []

    async def one() -> None:
        sizes.append(await registry_client.blob_size(REPO, DIGEST))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert sizes == [4] * 10
    assert registry.issued == ["token-0"]
    assert len(registry.token_auth) == 1


async def test_a_refused_token_is_renewed_and_the_request_retried_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = FakeRegistry(expires_in=3600)
    registry_client = client(registry)
    await registry_client.blob_size(REPO, DIGEST)
    registry.refused.add("token-0")  # revoked, or expired by the registry's clock
    assert await registry_client.blob_size(REPO, DIGEST) == 4
    assert registry.issued == ["token-0", "token-1"]
    assert registry.registry_auth[-2:] == ["Bearer token-0", "Bearer token-1"]


async def test_insufficient_scope_is_denied_with_credentials_unauthorized_without() -> None:
    with trio.fail_after(5):
        registry = FakeRegistry(insufficient=True)
        with pytest.raises(Denied, match="authentication required"):
            await client(registry).blob_size(REPO, DIGEST)
        assert len(registry.issued) == 1  # the retry got a token; it still lacked the scope
        anonymous = FakeRegistry(insufficient=True)
        with pytest.raises(Unauthorized):
            await client(anonymous, credentials=None).blob_size(REPO, DIGEST)
        assert anonymous.token_auth == [None]  # an anonymous token request


@pytest.mark.parametrize(
    ("status", "error", "headers"),
    [
        (401, Unauthorized, {}),
        (403, Denied, {}),
        (429, TooManyRequests, {"Retry-After": "9"}),
        (503, Unavailable, {"Retry-After": "9"}),
    ],
)
async def test_token_service_failures(
    status: int, error: type[Exception], headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(5):
        registry = FakeRegistry(token_status=status)
        with pytest.raises(error) as caught:
            await client(registry).blob_size(REPO, DIGEST)
    assert getattr(caught.value, "headers", {}) == headers
    if status < 500:
        assert str(caught.value) == "token service says no"  # the service's own words
    encoded = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    for text in (caplog.text, str(caught.value), repr(caught.value)):
        assert SECRET not in text and encoded not in text


@dataclass
class BasicRegistry:
    password: str
    seen: list[str | None] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("Authorization")
        self.seen.append(authorization)
        expected = "Basic " + base64.b64encode(f"alice:{self.password}".encode()).decode()
        if authorization == expected:
            return httpx.Response(200, headers={"Content-Length": "4"})
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": 'Basic realm="registry"'},
            json={"errors": [{"code": "UNAUTHORIZED", "message": "bad credential"}]},
        )


async def test_basic_challenges_get_basic_credentials_from_then_on() -> None:
    with trio.fail_after(5):
        registry = BasicRegistry(SECRET)
        registry_client = client(registry)
        for _ in range(2):
            assert await registry_client.blob_size(REPO, DIGEST) == 4
        assert registry.seen[0] is None
        assert [basic_value(a) for a in registry.seen[1:]] == [f"alice:{SECRET}"] * 2

        wrong = BasicRegistry("other")
        with pytest.raises(Unauthorized, match="bad credential"):
            await client(wrong).blob_size(REPO, DIGEST)
        assert len(wrong.seen) == 2  # anonymous, then the credentials once: no loop
        with pytest.raises(Unauthorized):
            await client(BasicRegistry(SECRET), credentials=None).blob_size(REPO, DIGEST)


async def test_preemptive_basic_sends_credentials_first() -> None:
    with trio.fail_after(5):
        registry = BasicRegistry(SECRET)
        http = open_http_client(
            "https://registry.test", auth_header=None, transport=httpx.MockTransport(registry)
        )
        registry_client = RegistryClient(http, CREDENTIALS, preemptive_basic=True)
        assert await registry_client.blob_size(REPO, DIGEST) == 4
        assert [basic_value(a) for a in registry.seen] == [f"alice:{SECRET}"]


async def test_a_streamed_body_is_restarted_for_the_retry_after_a_challenge() -> None:
    """The token expires at the registry between the POST and the PUT: the PUT is challenged,
    a new token fetched, and the body produced again from the source for the retry."""
    starts: list[int] = []
    received: list[tuple[str | None, str | None, bytes]] = []
    issued: list[str] = []
    refused: set[str] = set()
    data = b"0123456789" * 1000
    digest = sha256_of(data)

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            issued.append(f"t{len(issued)}")
            return httpx.Response(200, json={"token": issued[-1], "expires_in": 3600})
        body = await request.aread()
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in issued or token in refused:
            return httpx.Response(401, headers={"WWW-Authenticate": BEARER})
        if request.method == "POST":
            refused.add(token)
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u?s=1"})
        received.append((token, request.url.params.get("s"), body))
        return httpx.Response(201, headers={"Docker-Content-Digest": str(digest)})

    async def source(offset: int) -> AsyncIterator[bytes]:
        starts.append(offset)
        yield data[offset:5000]
        yield data[5000:]

    with trio.fail_after(5):
        await client(handler).upload_blob(REPO, digest, len(data), source)
    assert issued == ["t0", "t1"]
    assert starts == [0, 0]
    assert received == [("t1", "1", data)]


def test_credentials_never_show_their_password() -> None:
    credentials = Credentials("alice", SECRET)
    assert SECRET not in repr(credentials) and SECRET not in str(credentials)
    assert SECRET not in repr(CREDENTIALS)
