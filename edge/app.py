"""The edge's Quart application: the pull side served from cache, the rest passed through."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from quart import Quart, g, request
from quart_trio import QuartTrio

from config.settings import EdgeSettings
from core.auth.request import RequestView
from core.endpoints import BaseEndpoint, BlobEndpoint, ManifestEndpoint
from core.errors import NotFound, Unavailable, Unsupported
from core.reference import Tag
from core.web.app import create_app
from core.web.blobs import BlobInfo, FileChunks, blob_response
from core.web.manifests import manifest_response
from core.web.response import RegistryResponse as Response
from core.web.v2 import (
    Call,
    Chooser,
    Fallback,
    V2Gate,
    V2Routes,
    current_endpoint,
    install_v2,
    version_check,
)
from edge.auth import EdgeGate
from edge.cache.store import EdgeCache
from edge.fill import BlobStream, Fills
from edge.metrics import CONTENT_TYPE_LATEST, EdgeMetrics
from edge.passthrough import PassThrough
from edge.pullthrough import STALE_WARNING, PullThrough
from edge.region.upstream import FROM_PEER, PEER_HEADER
from edge.relay.routes import install_relay
from edge.relay.service import RelayService

access_log = logging.getLogger("depot.edge.access")


@dataclass
class EdgeServices:
    settings: EdgeSettings
    gate: EdgeGate
    cache: EdgeCache
    fills: Fills
    pullthrough: PullThrough
    origin: PassThrough  # to origin, with the client's credential (none of its own)
    metrics: EdgeMetrics
    ready: Callable[[], bool]
    relay: RelayService | None = None  # the push relay's jobs (its API is this edge's own)
    #: Given origin's ``/v2/`` routes, what chooses the routes per request (the mirrors'
    #: router, edge/mirror/routing.py); None: origin's routes answer everything.
    route_v2: Callable[[V2Routes], Chooser] | None = None
    #: A line for ``/readyz`` on the region's coordination (None: not in a region). Redis
    #: down does not make the edge unready: it serves from its own cache meanwhile.
    region_status: Callable[[], str] | None = None


def create_edge_app(services: EdgeServices) -> QuartTrio:
    app = create_app("depot-edge")
    _install_ops(app, services)
    _install_registry(app, services)
    if services.relay is not None:
        install_relay(app, services.gate, services.relay)
    _install_management_api(app, services)
    _install_access_log(app, services)
    return app


def _install_ops(app: Quart, services: EdgeServices) -> None:
    @app.route("/healthz", methods=["GET"])
    async def healthz() -> Response:
        return Response(b"ok\n", content_type="text/plain")

    @app.route("/readyz", methods=["GET"])
    async def readyz() -> Response:
        region = "" if services.region_status is None else services.region_status() + "\n"
        if services.ready():
            return Response(f"ready\n{region}".encode(), content_type="text/plain")
        return Response(f"not ready\n{region}".encode(), status=503, content_type="text/plain")

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        return Response(services.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.route("/.well-known/jwks.json", methods=["GET"])
    async def jwks() -> Response:
        # Edges below this one (tiered edges) load origin's keys from here.
        g.route = "jwks"
        document = services.gate.jwks
        if document is None:
            raise Unavailable("this edge has not loaded origin's token keys yet")
        return Response(json.dumps(document), content_type="application/json")

    @app.route("/token", methods=["GET", "POST"])
    async def token() -> Response:
        g.route = "token"
        services.metrics.passthrough.labels(request.method).inc()
        return await services.origin.token(request)


#: ``/api/v1`` paths the edge answers itself (its own routes; never forwarded to origin).
EDGE_API_PREFIXES = ("/api/v1/relay",)
_API_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def _install_management_api(app: Quart, services: EdgeServices) -> None:
    """``/api/v1/...`` goes to origin as it came (the client's ``Authorization`` and
    ``X-Forwarded-For`` along, bodies streamed), so the one URL a user has serves every
    ``depot`` command. A catch-all rule: Werkzeug ranks rules with more static parts first,
    so a route the edge registers itself under ``/api/v1`` wins over it; a path under
    :data:`EDGE_API_PREFIXES` that no such route matched is a 404 here, never origin's."""

    async def management_api(rest: str = "") -> Response:
        g.route = "api"
        if any(_under(request.path, prefix) for prefix in EDGE_API_PREFIXES):
            raise NotFound("no such endpoint", detail={"path": request.path[:200]})
        g.cache = "pass"
        return await _forward(services)

    app.add_url_rule("/api/v1", "api_forward_root", management_api, methods=_API_METHODS)
    app.add_url_rule("/api/v1/<path:rest>", "api_forward", management_api, methods=_API_METHODS)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _install_registry(app: Quart, services: EdgeServices) -> None:
    pull = PullHandlers(services.pullthrough, services.metrics)
    routes = pull.routes(services.gate, fallback=lambda view: _pass_through(services, view))
    install_v2(app, routes if services.route_v2 is None else services.route_v2(routes))


class PullHandlers:
    """The pull side of one upstream, answered here: GET/HEAD of ``/v2/``, manifests and
    blobs, through ``pullthrough`` (the cache, or the upstream once).

    ``stale_warning`` is the ``Warning`` of a tag served stale; ``on_stale`` is called then
    (a mirror counts its stale serves)."""

    def __init__(
        self,
        pullthrough: PullThrough,
        metrics: EdgeMetrics,
        *,
        stale_warning: str = STALE_WARNING,
        on_stale: Callable[[], None] | None = None,
    ) -> None:
        self._pullthrough = pullthrough
        self._metrics = metrics
        self._stale_warning = stale_warning
        self._on_stale = on_stale

    def routes(
        self, gate: V2Gate, *, fallback: Fallback | None, unsupported: str | None = None
    ) -> V2Routes:
        """These handlers behind ``gate``; every other request goes to ``fallback`` (or is
        refused with 405 and the ``unsupported`` message)."""
        routes = V2Routes(gate, fallback=fallback, unsupported=unsupported)
        routes.on(BaseEndpoint, ("GET", "HEAD"), version_check)
        routes.on(ManifestEndpoint, ("GET", "HEAD"), self.manifest)
        routes.on(BlobEndpoint, ("GET", "HEAD"), self.blob)
        return routes

    async def manifest(self, call: Call[ManifestEndpoint]) -> Response:
        served = await self._pullthrough.manifest(call.repository, call.endpoint.reference)
        g.digest = str(served.digest)
        g.cache = "stale" if served.stale else "ok"
        if served.stale and self._on_stale is not None:
            self._on_stale()
        return manifest_response(
            request.method,
            str(served.digest),
            served.media_type,
            served.payload,
            warning=self._stale_warning if served.stale else None,
        )

    async def blob(self, call: Call[BlobEndpoint]) -> Response:
        name, digest = call.repository, call.endpoint.digest
        g.digest = str(digest)
        if request.method == "HEAD":
            size, cached = await self._pullthrough.blob_size(name, digest)
            g.cache = "hit" if cached else "miss"
            info = BlobInfo(str(digest), size)
            return blob_response("HEAD", request.headers.get("Range"), info, _none)
        stream = await self._pullthrough.open_blob(name, digest)
        g.cache = "hit" if stream.from_cache else "miss"
        source = "cache" if stream.from_cache else "upstream"
        try:
            return blob_response(
                "GET",
                request.headers.get("Range"),
                BlobInfo(str(digest), stream.size),
                lambda offset, length: _counted(self._metrics, stream, offset, length, source),
            )
        except BaseException:
            stream.close()
            raise


@asynccontextmanager
async def _counted(
    metrics: EdgeMetrics, stream: BlobStream, offset: int, length: int, source: str
) -> AsyncIterator[AsyncIterator[bytes]]:
    counter = metrics.bytes_served.labels(source)

    async def count(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            counter.inc(len(chunk))
            yield chunk

    async with stream.chunks(offset, length) as chunks:
        if isinstance(chunks, FileChunks):
            # Passed on as is: the connection layer sends it zero-copy where it can.
            yield chunks
            counter.inc(length)
            return
        counted = count(chunks)
        try:
            yield counted
        finally:
            await counted.aclose()  # type: ignore[attr-defined]


def _none(offset: int, length: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
    raise Unsupported("HEAD has no body")  # blob_response never opens a body for HEAD


async def _pass_through(services: EdgeServices, view: RequestView) -> Response:
    """Anything but the pull side goes to origin, which authorises it."""
    g.cache = "pass"
    response = await _forward(services)
    await _after_write(services, view, response)
    return response


async def _forward(services: EdgeServices) -> Response:
    services.metrics.passthrough.labels(request.method).inc()
    return await services.origin.forward(request)


async def _after_write(services: EdgeServices, view: RequestView, response: Response) -> None:
    """A manifest PUT or DELETE by tag through this edge invalidates that tag at once."""
    endpoint = view.endpoint
    if (
        isinstance(endpoint, ManifestEndpoint)
        and isinstance(endpoint.reference, Tag)
        and view.method in ("PUT", "DELETE")
        and 200 <= response.status_code < 300
    ):
        internal = await services.gate.resolve(view.host, endpoint.name)
        if internal is not None:
            await services.pullthrough.forget_tag(internal, endpoint.reference)


def _install_access_log(app: Quart, services: EdgeServices) -> None:
    @app.before_request
    async def start() -> None:
        g.started = time.monotonic()
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        if PEER_HEADER in request.headers:
            FROM_PEER.set(True)  # fills this request starts ask no other peer (no loops)
        g.route, g.digest, g.cache = "other", None, None

    @app.after_request
    async def finish(response: Response) -> Response:
        duration = time.monotonic() - g.started
        endpoint = current_endpoint()
        route = endpoint.kind.value if endpoint is not None else getattr(g, "route", "other")
        repository = endpoint.name.value if endpoint is not None and endpoint.name else None
        services.metrics.requests.labels(route, str(response.status_code)).inc()
        services.metrics.duration.labels(route).observe(duration)
        response.headers["X-Request-Id"] = g.request_id
        access_log.info(
            json.dumps(
                {
                    "request_id": g.request_id,
                    "method": request.method,
                    "path": request.path,
                    "repository": repository,
                    "digest": g.digest,
                    "cache": g.cache,
                    "status": response.status_code,
                    "bytes": response.content_length,
                    "duration_ms": round(duration * 1000, 2),
                }
            )
        )
        return response
