"""core/web/v2.py on a real server: parse once, choose routes, refuse or fall back, authorise,
hand typed values to the registered handler."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio
from quart import request

from core.auth.request import Authorization, Caller, RequestView
from core.digest import Digest
from core.endpoints import BlobEndpoint, ManifestEndpoint, TagsEndpoint
from core.reference import RepositoryName, parse_repository_name
from core.web.app import create_app
from core.web.response import RegistryResponse as Response
from core.web.serving import bind_socket, bound_url, serve_app
from core.web.v2 import Call, V2Routes, install_v2
from tests.integration.oci import assert_error, guarded

TIMEOUT = 10
DIGEST = "sha256:" + "ab" * 32


class RecordingGate:
    """Resolves ``<name>`` to ``<prefix>/<name>``, except ``nobody/home``; records calls."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.calls: list[RequestView] = []

    async def authorize(self, view: RequestView) -> Authorization:
        self.calls.append(view)
        names: dict[str, RepositoryName] = {}
        name = view.endpoint.name
        if name is not None and name.value != "nobody/home":
            names[name.value] = parse_repository_name(f"{self.prefix}/{name.value}")
        return Authorization(Caller(frozenset()), names)


def answer(call: Call[BlobEndpoint] | Call[ManifestEndpoint], served_by: str) -> Response:
    endpoint = call.endpoint
    value = endpoint.digest if isinstance(endpoint, BlobEndpoint) else endpoint.reference
    document = {
        "by": served_by,
        "method": request.method,
        "external": endpoint.name.value,
        "internal": call.repository.value,
        "value": str(value),
        "value_type": type(value).__name__,
    }
    return Response(json.dumps(document).encode(), content_type="application/json")


class Registry:
    def __init__(self) -> None:
        self.local_gate, self.mirror_gate = RecordingGate("local"), RecordingGate("mirror")
        self.fallbacks: list[RequestView] = []
        self.local = V2Routes(self.local_gate, fallback=self.fallback)
        self.local.on(BlobEndpoint, ("GET", "HEAD"), self.local_blob)
        self.local.on(ManifestEndpoint, ("GET",), self.local_manifest)
        self.mirror = V2Routes(self.mirror_gate)  # no fallback: the rest is 405
        self.mirror.on(BlobEndpoint, ("GET", "HEAD"), self.mirror_blob)
        self.mirror.on(ManifestEndpoint, ("GET", "HEAD"), self.mirror_manifest)
        # Routes whose 405 says why, whose gate is made per request (with_gate).
        self.unused_gate, self.request_gates = RecordingGate("never"), list[RecordingGate]()
        self.pulls_only = V2Routes(self.unused_gate, unsupported="pulls only: push upstream")
        self.pulls_only.on(BlobEndpoint, ("GET",), self.mirror_blob)

    async def choose(self, view: RequestView) -> V2Routes:
        if view.query.get("ns") == "pulls-only.test":
            self.request_gates.append(RecordingGate(f"request{len(self.request_gates)}"))
            return self.pulls_only.with_gate(self.request_gates[-1])
        return self.mirror if view.query.get("ns") == "mirror.test" else self.local

    async def fallback(self, view: RequestView) -> Response:
        self.fallbacks.append(view)
        return Response(b"passed", status=299)

    async def local_blob(self, call: Call[BlobEndpoint]) -> Response:
        return answer(call, "local")

    async def local_manifest(self, call: Call[ManifestEndpoint]) -> Response:
        return answer(call, "local")

    async def mirror_blob(self, call: Call[BlobEndpoint]) -> Response:
        return answer(call, "mirror")

    async def mirror_manifest(self, call: Call[ManifestEndpoint]) -> Response:
        return answer(call, "mirror")


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[Registry, httpx.AsyncClient]]:
    registry = Registry()
    app = create_app("dispatch-test")
    install_v2(app, registry.choose)
    sock = bind_socket("127.0.0.1:0")
    stop = trio.Event()
    serve = partial(serve_app, graceful_timeout_seconds=1, shutdown_trigger=stop.wait)
    await nursery.start(serve, app, sock)
    async with httpx.AsyncClient(base_url=bound_url(sock), trust_env=False) as client:
        yield registry, guarded(client)
    stop.set()


async def test_handlers_get_typed_values_and_the_internal_name(
    served: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, http = served
    with trio.fail_after(TIMEOUT):
        blob = await http.get(f"/v2/acme/app/blobs/{DIGEST}")
        assert blob.json() == {
            "by": "local",
            "method": "GET",
            "external": "acme/app",
            "internal": "local/acme/app",
            "value": DIGEST,
            "value_type": Digest.__name__,
        }
        tag = await http.get("/v2/docker.io/library/alpine/manifests/3.20")
        assert (tag.json()["internal"], tag.json()["value"], tag.json()["value_type"]) == (
            "local/docker.io/library/alpine",
            "3.20",
            "Tag",
        )
        (first, second) = registry.local_gate.calls
        assert isinstance(first.endpoint, BlobEndpoint) and first.method == "GET"
        assert isinstance(second.endpoint, ManifestEndpoint)


async def test_malformed_paths_are_refused_before_the_gate(
    served: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, http = served
    with trio.fail_after(TIMEOUT):
        for path, status, code in [
            ("/v2/acme/app/nothing", 404, "NOT_FOUND"),
            ("/v2/Acme/app/blobs/" + DIGEST, 400, "NAME_INVALID"),
            ("/v2/acme/app/blobs/sha256:abc", 400, "DIGEST_INVALID"),
            ("/v2/acme/app/referrers/md5:abc", 400, "DIGEST_INVALID"),
            ("/v2/acme/app/manifests/-tag", 400, "MANIFEST_INVALID"),
        ]:
            for method in ("GET", "PUT"):
                assert_error(await http.request(method, path), status, code)
        assert registry.local_gate.calls == [] and registry.fallbacks == []


async def test_unregistered_requests_go_to_the_fallback_unauthorised(
    served: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, http = served
    with trio.fail_after(TIMEOUT):
        for method, path in [
            ("DELETE", f"/v2/acme/app/blobs/{DIGEST}"),
            ("HEAD", "/v2/acme/app/manifests/v1"),
            ("GET", "/v2/acme/app/tags/list"),
            ("POST", "/v2/acme/app/blobs/uploads/"),
            ("GET", "/v2/"),
        ]:
            response = await http.request(method, path)
            assert response.status_code == 299, (method, path)
        assert [view.method for view in registry.fallbacks] == [
            "DELETE",
            "HEAD",
            "GET",
            "POST",
            "GET",
        ]
        assert isinstance(registry.fallbacks[2].endpoint, TagsEndpoint)
        assert registry.local_gate.calls == []


async def test_routes_are_chosen_per_request(
    served: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, http = served
    with trio.fail_after(TIMEOUT):
        mirrored = await http.get("/v2/library/alpine/manifests/3.20", params={"ns": "mirror.test"})
        assert (mirrored.json()["by"], mirrored.json()["internal"]) == (
            "mirror",
            "mirror/library/alpine",
        )
        # Without a fallback, a method without a handler is 405 naming those that have one.
        for method in ("PUT", "DELETE"):
            response = await http.request(
                method, "/v2/library/alpine/manifests/3.20", params={"ns": "mirror.test"}
            )
            assert_error(response, 405, "UNSUPPORTED")
            assert response.headers["Allow"] == "GET, HEAD"
        response = await http.get("/v2/library/alpine/tags/list", params={"ns": "mirror.test"})
        assert_error(response, 405, "UNSUPPORTED")
        assert response.headers["Allow"] == ""
        assert len(registry.mirror_gate.calls) == 1 and registry.local_gate.calls == []
        assert registry.fallbacks == []


async def test_routes_may_say_why_and_take_a_gate_per_request(
    served: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, http = served
    ns = {"ns": "pulls-only.test"}
    with trio.fail_after(TIMEOUT):
        response = await http.put("/v2/library/alpine/manifests/3.20", params=ns)
        error = assert_error(response, 405, "UNSUPPORTED")
        assert error["message"] == "pulls only: push upstream"
        assert response.headers["Allow"] == ""
        response = await http.delete(f"/v2/library/alpine/blobs/{DIGEST}", params=ns)
        assert assert_error(response, 405, "UNSUPPORTED")["message"] == "pulls only: push upstream"
        assert response.headers["Allow"] == "GET"
        for _ in range(2):
            blob = await http.get(f"/v2/library/alpine/blobs/{DIGEST}", params=ns)
            assert blob.json()["by"] == "mirror"
        # Each request had a gate of its own, the handlers were shared, the template's gate idle.
        assert blob.json()["internal"] == "request3/library/alpine"
        assert [len(gate.calls) for gate in registry.request_gates] == [0, 0, 1, 1]
        assert registry.unused_gate.calls == []
        # Routes without a message keep the generic one.
        response = await http.put("/v2/library/alpine/manifests/3.20", params={"ns": "mirror.test"})
        assert (
            assert_error(response, 405, "UNSUPPORTED")["message"] == "the operation is unsupported"
        )


async def test_a_name_the_gate_did_not_resolve_is_unknown(
    served: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, http = served
    with trio.fail_after(TIMEOUT):
        response = await http.get(f"/v2/nobody/home/blobs/{DIGEST}")
        assert_error(response, 404, "NAME_UNKNOWN")
        assert len(registry.local_gate.calls) == 1


def test_registration_is_checked() -> None:
    routes = V2Routes(RecordingGate("x"))

    async def handler(call: Call[BlobEndpoint]) -> Response:
        raise AssertionError("not called")

    routes.on(BlobEndpoint, ("GET",), handler)
    with pytest.raises(ValueError, match="two handlers"):
        routes.on(BlobEndpoint, ("HEAD", "GET"), handler)
    with pytest.raises(ValueError, match="OPTIONS"):
        routes.on(BlobEndpoint, ("OPTIONS",), handler)
    assert routes.allowed(BlobEndpoint.kind) == ["GET"]
