"""The edge's view of origin: OriginUpstream (over the registry client) and OriginControl
against a real auth-enabled origin (and against httpx.MockTransport where a real origin cannot
misbehave), and EdgeGate authorising like origin while verifying tokens locally."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from core.auth.request import Authorization, RequestView
from core.auth.scopes import Access
from core.auth.tokens import Grant, generate_signing_key, sign_grant
from core.client.credentials import x_token_credentials
from core.client.http import open_http_client, x_token_auth
from core.client.registry import RegistryClient
from core.digest import parse_digest as dig
from core.endpoints import parse_endpoint
from core.errors import (
    BlobUnknown,
    Denied,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    Unauthorized,
    Unavailable,
)
from core.reference import RepositoryName
from core.reference import parse_manifest_reference as ref
from core.reference import parse_repository_name as name
from core.web.serving import bind_socket, bound_url
from edge.auth import EdgeGate
from edge.origin_control import OriginControl
from edge.upstream import OriginUpstream
from origin.auth.keys import rotate
from origin.server import serve
from tests.integration.conftest import RunningOrigin
from tests.integration.oci import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Manifest,
    new_image,
    push_blob,
    push_manifest,
    random_blob,
    sha256_digest,
)
from tests.integration.tenants import (
    BASE_DOMAIN,
    Tenants,
    basic,
    bearer_for,
    claims_of,
    start_tenants,
)

TIMEOUT = 30
EDGE_HOST = "edge.test:8443"  # path style: not an org subdomain
ACME_HOST = f"acme.{BASE_DOMAIN}"


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "data")
    yield running
    running.origin.shutdown.set()
    running.store.close()


@dataclass
class Edge:
    upstream: OriginUpstream
    control: OriginControl
    #: Every request the edge sent to origin, in order.
    sent: list[httpx.Request] = field(default_factory=list)

    def paths(self, since: int = 0) -> list[str]:
        return [request.url.path for request in self.sent[since:]]


@asynccontextmanager
async def edge_to(url: str, token: str) -> AsyncIterator[Edge]:
    client = open_http_client(url, auth_header=x_token_auth(token))
    registry = RegistryClient(client, x_token_credentials(token), preemptive_basic=True)
    edge = Edge(OriginUpstream(registry), OriginControl(client, token))

    async def record(request: httpx.Request) -> None:
        edge.sent.append(request)

    client.event_hooks = {"request": [record], "response": []}
    async with client:
        yield edge


async def edge_token(tenants: Tenants) -> str:
    _, token = await tenants.store.create_token("edge", now=time.time())
    return token


def origin_client(tenants: Tenants, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=tenants.url, trust_env=False, timeout=TIMEOUT, headers=headers or {}
    )


async def seed(tenants: Tenants, repo: str, token: str, **image: bool) -> Manifest:
    manifest = new_image(layers=2, **image)
    async with origin_client(tenants, basic(token)) as http:
        await push_manifest(http, repo, manifest, "v1")
    return manifest


async def mint(tenants: Tenants, token: str | None, *scopes: str, host: str | None = None) -> str:
    """A bearer token minted by origin's /token, as a whole ``Authorization`` value."""
    async with origin_client(tenants) as http:
        return (await bearer_for(http, token, *scopes, host=host))["Authorization"]


def view(
    path: str,
    authorization: str | None = None,
    *,
    method: str = "GET",
    host: str = EDGE_HOST,
    query: dict[str, str] | None = None,
) -> RequestView:
    return RequestView(method, host, "https", authorization, parse_endpoint(path), query or {})


def challenge(scope: str | None = "repository:acme/app:pull", error: str | None = None) -> str:
    parts = [f'realm="https://{EDGE_HOST}/token"', 'service="depot-registry"']
    if scope:
        parts.append(f'scope="{scope}"')
    if error:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)


async def refused(gate: EdgeGate, request: RequestView) -> RegistryError:
    with pytest.raises((Unauthorized, Denied)) as caught:
        await gate.authorize(request)
    return caught.value


# -- OriginUpstream against a real origin --------------------------------------------------


async def test_upstream_serves_blobs_and_manifests_of_every_org(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        image = await seed(tenants, "acme/app", tenants.acme)
        docker = await seed(tenants, "other/lib", tenants.other, docker=True)
        big = random_blob(3 * 1024 * 1024 + 7)
        async with origin_client(tenants, basic(tenants.acme)) as http:
            await push_blob(http, "acme/app", big)
        async with edge_to(tenants.url, await edge_token(tenants)) as edge:
            upstream = edge.upstream
            for blob in (big, *image.blobs):
                async with upstream.open_blob(name("acme/app"), dig(blob.digest)) as fetched:
                    assert fetched.size == blob.size
                    assert b"".join([chunk async for chunk in fetched.chunks]) == blob.data
                assert await upstream.blob_size(name("acme/app"), dig(blob.digest)) == blob.size
            # Leaving early closes the stream (no ResourceWarning, the pool stays usable).
            async with upstream.open_blob(name("acme/app"), dig(big.digest)) as fetched:
                async for _ in fetched.chunks:
                    break
            for repo, manifest, media_type in (
                ("acme/app", image, OCI_MANIFEST),
                ("other/lib", docker, DOCKER_MANIFEST),
            ):
                for reference in ("v1", manifest.digest):
                    got = await upstream.get_manifest(name(repo), ref(reference))
                    assert (str(got.digest), got.media_type) == (manifest.digest, media_type)
                    assert got.payload == manifest.payload
                    found = await upstream.head_manifest(name(repo), ref(reference))
                    assert str(found) == manifest.digest
            accept = edge.sent[-1].headers["Accept"]
            assert OCI_MANIFEST in accept and DOCKER_MANIFEST in accept
            assert "index" in accept and "manifest.list" in accept
            assert all(r.headers["Accept-Encoding"] == "identity" for r in edge.sent)


async def test_upstream_maps_404_to_unknown(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        await seed(tenants, "acme/app", tenants.acme)
        missing = sha256_digest(b"never pushed")
        async with edge_to(tenants.url, await edge_token(tenants)) as edge:
            upstream = edge.upstream
            assert await upstream.blob_size(name("acme/app"), dig(missing)) is None
            with pytest.raises(BlobUnknown):
                async with upstream.open_blob(name("acme/app"), dig(missing)):
                    pass
            with pytest.raises(ManifestUnknown):
                await upstream.get_manifest(name("acme/app"), ref("nope"))
            with pytest.raises(ManifestUnknown):
                await upstream.get_manifest(name("acme/app"), ref(missing))
            with pytest.raises(NameUnknown):
                await upstream.get_manifest(name("acme/nothing"), ref("v1"))
            assert await upstream.head_manifest(name("acme/app"), ref("nope")) is None
            assert await upstream.head_manifest(name("acme/nothing"), ref(missing)) is None
            assert await edge.control.project_org("nosuchproject") is None


async def test_a_refused_edge_credential_is_unavailable_and_logged(
    tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="depot.edge.upstream")
    bogus = "dpe_" + "x" * 40
    with trio.fail_after(TIMEOUT):
        image = await seed(tenants, "acme/app", tenants.acme)
        async with OriginUpstream.open(tenants.url, bogus) as upstream:
            for attempt in (
                upstream.blob_size(name("acme/app"), dig(image.blobs[0].digest)),
                upstream.get_manifest(name("acme/app"), ref("v1")),
                upstream.head_manifest(name("acme/app"), ref("v1")),
            ):
                with pytest.raises(Unavailable, match="edge credential rejected by origin"):
                    await attempt
    assert "refused the edge credential" in caplog.text
    assert bogus not in caplog.text


async def test_a_closed_port_is_unavailable_promptly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = trio.current_time()
    with trio.fail_after(5):
        async with OriginUpstream.open(f"http://127.0.0.1:{port}", "dpe_x") as upstream:
            digest = sha256_digest(b"x")
            with pytest.raises(Unavailable):
                await upstream.blob_size(name("acme/app"), dig(digest))
            with pytest.raises(Unavailable):
                async with upstream.open_blob(name("acme/app"), dig(digest)):
                    pass
            with pytest.raises(Unavailable):
                await upstream.get_manifest(name("acme/app"), ref("v1"))
        async with OriginControl.open(f"http://127.0.0.1:{port}", "dpe_x") as control:
            with pytest.raises(Unavailable):
                await control.jwks()
            with pytest.raises(Unavailable):
                await control.token(host="h", secret=None, service="s", scopes=[])
    assert trio.current_time() - started < 2


# -- OriginUpstream against a misbehaving origin (httpx.MockTransport) -----------------------


def mocked_http(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    transport = httpx.MockTransport(handler)
    return open_http_client("http://origin.test", auth_header=None, transport=transport)


def mocked(handler: Callable[[httpx.Request], httpx.Response]) -> OriginUpstream:
    return OriginUpstream(RegistryClient(mocked_http(handler)))


PAYLOAD = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'


def manifest_answer(payload: bytes, digest: str | None) -> httpx.Response:
    headers = {"Content-Type": OCI_MANIFEST}
    if digest is not None:
        headers["Docker-Content-Digest"] = digest
    return httpx.Response(200, headers=headers, content=payload)


@pytest.mark.parametrize(
    ("served", "announced", "reference"),
    [
        # Asked by digest; origin sends other bytes under the digest asked for.
        (b'{"other": 1}', sha256_digest(PAYLOAD), sha256_digest(PAYLOAD)),
        # Asked by digest; origin sends other bytes and announces their real digest.
        (b'{"other": 1}', sha256_digest(b'{"other": 1}'), sha256_digest(PAYLOAD)),
        # Asked by digest; origin announces nothing and the bytes differ.
        (b'{"other": 1}', None, sha256_digest(PAYLOAD)),
        # Asked by tag; the bytes do not match the digest origin announces.
        (b'{"other": 1}', sha256_digest(PAYLOAD), "v1"),
        # Asked by tag; the announced digest is not a digest.
        (PAYLOAD, "sha256:nothex", "v1"),
    ],
)
async def test_manifests_that_do_not_match_their_digest_are_never_returned(
    served: bytes, announced: str | None, reference: str
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = mocked(lambda request: manifest_answer(served, announced))
        with pytest.raises(Unavailable, match=r"(?i)digest"):
            await upstream.get_manifest(name("acme/app"), ref(reference))


async def test_matching_manifests_are_returned_with_their_digest() -> None:
    with trio.fail_after(TIMEOUT):
        upstream = mocked(lambda request: manifest_answer(PAYLOAD, None))
        got = await upstream.get_manifest(name("acme/app"), ref("v1"))  # no header: computed
        assert (str(got.digest), got.payload) == (sha256_digest(PAYLOAD), PAYLOAD)
        got = await upstream.get_manifest(name("acme/app"), ref(sha256_digest(PAYLOAD)))
        assert str(got.digest) == sha256_digest(PAYLOAD)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_overload_and_server_errors_are_unavailable_with_retry_after(status: int) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = mocked(lambda request: httpx.Response(status, headers={"Retry-After": "7"}))
        with pytest.raises(Unavailable) as caught:
            await upstream.get_manifest(name("acme/app"), ref("v1"))
        assert caught.value.headers == {"Retry-After": "7"}
        with pytest.raises(Unavailable):
            await upstream.blob_size(name("acme/app"), dig(sha256_digest(b"x")))


class _BrokenBody(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"abc"
        raise httpx.ReadError("connection reset")


async def test_transport_errors_mid_blob_are_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": "10"}, stream=_BrokenBody())

    with trio.fail_after(TIMEOUT):
        upstream = mocked(handler)
        received = []
        with pytest.raises(Unavailable, match="unreachable"):
            async with upstream.open_blob(name("acme/app"), dig(sha256_digest(b"x"))) as blob:
                assert blob.size == 10
                async for chunk in blob.chunks:
                    received.append(chunk)
        assert received == [b"abc"]


async def test_encoded_blobs_and_missing_lengths_are_refused() -> None:
    answers = [
        httpx.Response(
            200,
            headers={"Content-Encoding": "gzip", "Content-Length": "2"},
            stream=httpx.ByteStream(b"zz"),
        ),
        httpx.Response(200, stream=_BrokenBody()),  # no Content-Length
    ]
    with trio.fail_after(TIMEOUT):
        upstream = mocked(lambda request: answers.pop(0))
        for _ in range(2):
            with pytest.raises(Unavailable):
                async with upstream.open_blob(name("acme/app"), dig(sha256_digest(b"x"))):
                    pass


async def test_project_lookups_are_cached() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == "/api/v1/projects/p1x2":
            return httpx.Response(200, json={"id": "p1x2", "org_slug": "acme"})
        return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND", "message": "no"}]})

    with trio.fail_after(TIMEOUT):
        gate = EdgeGate(OriginControl(mocked_http(handler), "dpe_x"), base_domain=BASE_DOMAIN)
        for _ in range(3):
            assert await gate.resolve(EDGE_HOST, RepositoryName("p1x2")) == RepositoryName(
                "acme/p1x2"
            )
            assert await gate.resolve(EDGE_HOST, RepositoryName("zz9")) is None
        assert await gate.resolve(ACME_HOST, RepositoryName("p1x2")) == RepositoryName(
            "acme/p1x2"
        )  # on an org host a one-component name is a path of that org: no lookup
    assert asked == ["/api/v1/projects/p1x2", "/api/v1/projects/zz9"]


# -- EdgeGate against a real origin ---------------------------------------------------------


@asynccontextmanager
async def edge_gate(
    tenants: Tenants, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[EdgeGate, Edge]]:
    async with edge_to(tenants.url, await edge_token(tenants)) as edge:
        gate = EdgeGate(edge.control, base_domain=BASE_DOMAIN, clock=clock)
        assert not gate.ready
        await gate.load()
        assert gate.ready
        yield gate, edge


async def test_bearer_tokens_verify_locally(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        token = await mint(tenants, tenants.acme, "repository:acme/app:pull")
        async with edge_gate(tenants) as (gate, edge):
            before = len(edge.sent)
            for method in ("GET", "HEAD"):
                granted = await gate.authorize(
                    view("/v2/acme/app/manifests/v1", token, method=method)
                )
                assert granted.names == {"acme/app": RepositoryName("acme/app")}
                assert granted.caller.orgs == frozenset({"acme"})
            # The same token on acme's subdomain: the name resolves to the same repository.
            granted = await gate.authorize(
                view("/v2/app/blobs/sha256:" + "a" * 64, token, host=ACME_HOST)
            )
            assert granted.names == {"app": RepositoryName("acme/app")}
            assert isinstance(await gate.authorize(view("/v2/", token)), Authorization)
            assert edge.paths(before) == []  # nothing asked of origin


async def test_bad_bearer_tokens_are_challenged_at_the_edge(tenants: Tenants) -> None:
    now = int(time.time())
    grant = Grant(
        "forger",
        "org",
        frozenset({"acme"}),
        (Access("repository", "acme/app", frozenset({"pull"})),),
        now,
        now + 300,
        "jti",
    )
    foreign_key, foreign_kid = generate_signing_key()
    with trio.fail_after(TIMEOUT):
        valid = (await mint(tenants, tenants.acme, "repository:acme/app:pull")).split()[1]
        other_repo = await mint(tenants, tenants.acme, "repository:acme/else:pull")
        header, payload, signature = valid.split(".")
        claims = claims_of(valid) | {"sub": "someone-else"}
        forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        kid = json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]
        sign = partial(sign_grant, grant, issuer="depot-registry", audience="depot-registry")
        bad = {
            "tampered payload": f"{header}.{forged_payload.decode()}.{signature}",
            "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
            "foreign key, origin's kid": sign(private_key=foreign_key, kid=kid),
            "wrong audience": sign_grant(
                grant, private_key=foreign_key, kid=kid, issuer="depot-registry", audience="x"
            ),
            "garbage": "not.a.jwt",
        }
        async with edge_gate(tenants) as (gate, edge):
            before = len(edge.sent)
            for what, token in bad.items():
                error = await refused(gate, view("/v2/acme/app/manifests/v1", f"Bearer {token}"))
                assert isinstance(error, Unauthorized), what
                assert error.headers["WWW-Authenticate"] == challenge(error="invalid_token"), what
            assert edge.paths(before) == []  # all named a known kid (or none)

            # An unknown kid: origin's keys are refetched once, then not again for 30 s.
            foreign = sign(private_key=foreign_key, kid=foreign_kid)
            for _ in range(3):
                error = await refused(gate, view("/v2/acme/app/manifests/v1", f"Bearer {foreign}"))
                assert error.headers["WWW-Authenticate"] == challenge(error="invalid_token")
            assert edge.paths(before) == ["/.well-known/jwks.json"]

            error = await refused(gate, view("/v2/acme/app/manifests/v1", other_repo))
            assert error.headers["WWW-Authenticate"] == challenge(error="insufficient_scope")
            error = await refused(gate, view("/v2/"))
            assert error.headers["WWW-Authenticate"] == challenge(scope=None)

        # Expired: the same valid token, on an edge whose clock is an hour ahead.
        async with edge_gate(tenants, clock=lambda: time.time() + 3600) as (late, _):
            error = await refused(late, view("/v2/acme/app/manifests/v1", f"Bearer {valid}"))
            assert error.headers["WWW-Authenticate"] == challenge(error="invalid_token")


async def test_tenants_stay_apart_at_the_edge(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        await seed(tenants, "acme/app", tenants.acme)
        asked_for_acme = await mint(tenants, tenants.other, "repository:acme/app:pull")
        assert claims_of(asked_for_acme.split()[1])["access"] == []
        others_app = await mint(tenants, tenants.other, "repository:other/app:pull")
        async with edge_gate(tenants) as (gate, _):
            error = await refused(gate, view("/v2/acme/app/manifests/v1", asked_for_acme))
            assert error.headers["WWW-Authenticate"] == challenge(error="insufficient_scope")
            # other's token for other/app used on acme's subdomain names acme/app: refused.
            error = await refused(
                gate, view("/v2/other/app/manifests/v1", others_app, host=ACME_HOST)
            )
            assert isinstance(error, Unauthorized)
            error = await refused(
                gate, view("/v2/acme/app/manifests/v1", basic(tenants.other)["Authorization"])
            )
            assert isinstance(error, Denied)
            # acme's project token reaches only its project.
            error = await refused(
                gate,
                view("/v2/acme/app/manifests/v1", basic(tenants.acme_project)["Authorization"]),
            )
            assert isinstance(error, Denied)
            granted = await gate.authorize(
                view("/v2/other/app/manifests/v1", basic(tenants.other)["Authorization"])
            )
            assert granted.caller.orgs == frozenset({"other"})


async def test_basic_x_token_is_exchanged_once_and_cached(
    tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    acme = basic(tenants.acme)["Authorization"]
    with trio.fail_after(TIMEOUT):
        async with edge_gate(tenants) as (gate, edge):
            before = len(edge.sent)
            for method in ("GET", "HEAD", "GET"):
                granted = await gate.authorize(
                    view("/v2/acme/app/manifests/v1", acme, method=method)
                )
                assert granted.names == {"acme/app": RepositoryName("acme/app")}
                assert granted.caller.orgs == frozenset({"acme"})
            assert edge.paths(before) == ["/token"]
            exchange = edge.sent[-1]
            assert exchange.headers["Authorization"] == acme  # the client's, not the edge's
            assert exchange.headers["Host"] == EDGE_HOST
            assert exchange.url.params.get_list("scope") == ["repository:acme/app:pull"]

            # Another host (or other scopes) is another exchange, cached in turn.
            before = len(edge.sent)
            for _ in range(2):
                granted = await gate.authorize(view("/v2/app/manifests/v1", acme, host=ACME_HOST))
                assert granted.names == {"app": RepositoryName("acme/app")}
            assert edge.paths(before) == ["/token"]
            assert edge.sent[-1].headers["Host"] == ACME_HOST

            # A refused token is a Basic challenge, and is refused from memory the second time.
            before = len(edge.sent)
            wrong = basic("dpo_" + "x" * 40)["Authorization"]
            for _ in range(2):
                error = await refused(gate, view("/v2/acme/app/manifests/v1", wrong))
                assert isinstance(error, Unauthorized)
                assert error.headers["WWW-Authenticate"] == 'Basic realm="depot-registry"'
            assert edge.paths(before) == ["/token"]
            error = await refused(gate, view("/v2/acme/app/manifests/v1", "Basic !!"))
            assert isinstance(error, Unauthorized)
    for secret in (tenants.acme, acme.split()[1], wrong.split()[1]):
        assert secret not in caplog.text


async def test_anonymous_clients_pull_public_repositories_only(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        await seed(tenants, "acme/public", tenants.acme)
        await tenants.store.set_public(tenants.acme_id, "acme/public", True)
        async with edge_gate(tenants) as (gate, edge):
            before = len(edge.sent)
            granted = await gate.authorize(view("/v2/acme/public/manifests/v1"))
            assert granted.names == {"acme/public": RepositoryName("acme/public")}
            assert edge.paths(before) == ["/token"]
            assert "Authorization" not in edge.sent[-1].headers  # never the edge's credential
            error = await refused(gate, view("/v2/acme/app/manifests/v1"))
            assert error.headers["WWW-Authenticate"] == challenge()
            error = await refused(gate, view("/v2/_catalog"))
            assert error.headers["WWW-Authenticate"] == challenge("registry:catalog:*")


async def test_writes_are_left_to_origin(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        async with edge_gate(tenants) as (gate, edge):
            before = len(edge.sent)
            granted = await gate.authorize(
                view("/v2/app/manifests/v1", method="PUT", host=ACME_HOST)
            )
            assert granted.names == {"app": RepositoryName("acme/app")}
            mount = view(
                "/v2/acme/app/blobs/uploads/",
                "Bearer whatever",
                method="POST",
                query={"mount": sha256_digest(b"x"), "from": "acme/base"},
            )
            granted = await gate.authorize(mount)
            assert set(granted.names) == {"acme/app", "acme/base"}
            assert edge.paths(before) == []


async def test_legacy_project_ids_resolve_through_origin_once(tenants: Tenants) -> None:
    project = tenants.project
    with trio.fail_after(TIMEOUT):
        await seed(tenants, f"acme/{project}", tenants.acme)
        token = await mint(tenants, tenants.acme, f"repository:{project}:pull")
        async with edge_gate(tenants) as (gate, edge):
            before = len(edge.sent)
            for _ in range(3):
                granted = await gate.authorize(view(f"/v2/{project}/manifests/v1", token))
                assert granted.names == {project: RepositoryName(f"acme/{project}")}
            assert edge.paths(before) == [f"/api/v1/projects/{project}"]
            error = await refused(gate, view("/v2/nosuchproject/manifests/v1", token))
            assert isinstance(error, Unauthorized)


async def test_run_loads_keys_or_keeps_trying(tenants: Tenants, nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        token = await mint(tenants, tenants.acme, "repository:acme/app:pull")
        async with edge_to(tenants.url, await edge_token(tenants)) as edge:
            gate = EdgeGate(edge.control, base_domain=BASE_DOMAIN)
            async with trio.open_nursery() as inner:
                await inner.start(gate.run)
                assert gate.ready
                await gate.authorize(view("/v2/acme/app/manifests/v1", token))
                inner.cancel_scope.cancel()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        async with OriginControl.open(f"http://127.0.0.1:{port}", "dpe_x") as control:
            down = EdgeGate(control, base_domain=BASE_DOMAIN)
            async with trio.open_nursery() as inner:
                await inner.start(down.run)  # started after a first, failed, attempt
                assert not down.ready
                with pytest.raises(Unavailable):
                    await down.authorize(view("/v2/acme/app/manifests/v1", token))
                inner.cancel_scope.cancel()


# -- key rotation ---------------------------------------------------------------------------


async def restart_on_same_port(nursery: trio.Nursery, before: RunningOrigin) -> RunningOrigin:
    """A new origin process on ``before``'s data dir and port (the edge keeps its URL)."""
    port = urlsplit(before.url).port
    sock = bind_socket(f"127.0.0.1:{port}")
    shutdown = trio.Event()
    await nursery.start(partial(serve, before.settings, sock, shutdown_trigger=shutdown.wait))
    return RunningOrigin(bound_url(sock), before.settings, shutdown)


def kid_of(authorization: str) -> str:
    header = authorization.split()[1].split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]
    return kid


async def test_rotated_keys_are_fetched_once_and_old_tokens_still_verify(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            async with trio.open_nursery() as first:
                tenants = await start_tenants(first, data_dir, graceful_timeout_seconds=1)
                stack.callback(tenants.store.close)
                edge = await stack.enter_async_context(
                    edge_to(tenants.url, await edge_token(tenants))
                )
                gate = EdgeGate(edge.control, base_domain=BASE_DOMAIN)
                await gate.load()
                old = await mint(tenants, tenants.acme, "repository:acme/app:pull")
                tenants.origin.shutdown.set()

            new_key = rotate(data_dir / "keys")  # signs from the next start on
            origin = await restart_on_same_port(nursery, tenants.origin)
            stack.callback(origin.shutdown.set)
            new = await mint(tenants, tenants.acme, "repository:acme/app:pull")
            assert kid_of(new) == new_key.kid != kid_of(old)

            before = len(edge.sent)
            for token in (new, new, old, new):
                granted = await gate.authorize(view("/v2/acme/app/manifests/v1", token))
                assert granted.names == {"acme/app": RepositoryName("acme/app")}
            assert edge.paths(before) == ["/.well-known/jwks.json"]
