"""The edge's Quart application: the pull side served from cache, the rest passed through."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import httpx
from quart import Quart, g, request
from quart_trio import QuartTrio

from config.settings import EdgeSettings
from core import mediatypes
from core.auth.request import Authorization, RequestView
from core.digest import parse_digest
from core.endpoints import Endpoint, Kind, parse_endpoint
from core.errors import NameUnknown, Unsupported
from core.reference import RepositoryName, Tag, parse_manifest_reference
from core.web.app import create_app
from core.web.blobs import BlobInfo, blob_response
from core.web.response import RegistryResponse as Response
from edge.auth import EdgeGate
from edge.cache.store import EdgeCache
from edge.fill import BlobStream, Fills
from edge.metrics import CONTENT_TYPE_LATEST, EdgeMetrics
from edge.passthrough import forward_headers, pass_through
from edge.pullthrough import STALE_WARNING, PullThrough

access_log = logging.getLogger("depot.edge.access")

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
_SERVED_HERE = {Kind.BASE, Kind.MANIFEST, Kind.BLOB}


@dataclass
class EdgeServices:
    settings: EdgeSettings
    gate: EdgeGate
    cache: EdgeCache
    fills: Fills
    pullthrough: PullThrough
    origin: httpx.AsyncClient  # for passthrough; carries no credential of its own
    metrics: EdgeMetrics
    ready: Callable[[], bool]


def create_edge_app(services: EdgeServices) -> QuartTrio:
    app = create_app("depot-edge")
    _install_ops(app, services)
    _install_registry(app, services)
    _install_access_log(app, services)
    return app


def _install_ops(app: Quart, services: EdgeServices) -> None:
    @app.route("/healthz", methods=["GET"])
    async def healthz() -> Response:
        return Response(b"ok\n", content_type="text/plain")

    @app.route("/readyz", methods=["GET"])
    async def readyz() -> Response:
        if services.ready():
            return Response(b"ready\n", content_type="text/plain")
        return Response(b"not ready\n", status=503, content_type="text/plain")

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        return Response(services.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.route("/token", methods=["GET", "POST"])
    async def token() -> Response:
        g.route = "token"
        return await _forward(services)


def _install_registry(app: Quart, services: EdgeServices) -> None:
    @app.route("/v2", methods=_METHODS)
    @app.route("/v2/", methods=_METHODS)
    @app.route("/v2/<path:rest>", methods=_METHODS)
    async def v2(rest: str = "") -> Response:
        endpoint = parse_endpoint(request.path)
        g.route = endpoint.kind.value
        g.repository = endpoint.name.value if endpoint.name else None
        if endpoint.kind not in _SERVED_HERE or request.method not in ("GET", "HEAD"):
            g.cache = "pass"
            response = await _forward(services)
            await _after_write(services, endpoint, response)
            return response
        authorization = await services.gate.authorize(
            RequestView(
                method=request.method,
                host=request.host,
                scheme=request.scheme,
                authorization=request.headers.get("Authorization"),
                endpoint=endpoint,
                query=request.args,
            )
        )
        if endpoint.kind is Kind.BASE:
            return Response(b"{}", content_type=mediatypes.JSON)
        name = _internal(endpoint, authorization)
        if endpoint.kind is Kind.MANIFEST:
            return await _manifest(services, name, endpoint.argument or "")
        return await _blob(services, name, endpoint.argument or "")


async def _manifest(services: EdgeServices, name: RepositoryName, argument: str) -> Response:
    reference = parse_manifest_reference(argument)
    served = await services.pullthrough.manifest(name, reference)
    g.digest = str(served.digest)
    g.cache = "stale" if served.stale else "ok"
    headers = {
        "Content-Type": served.media_type,
        "Docker-Content-Digest": str(served.digest),
        "ETag": f'"{served.digest}"',
    }
    if served.stale:
        headers["Warning"] = STALE_WARNING
    body = b"" if request.method == "HEAD" else served.payload
    response = Response(body, status=200, headers=headers)
    response.content_length = len(served.payload)
    return response


async def _blob(services: EdgeServices, name: RepositoryName, argument: str) -> Response:
    digest = parse_digest(argument)  # the one parse: typed from here down to the upstream
    g.digest = str(digest)
    if request.method == "HEAD":
        size, cached = await services.pullthrough.blob_size(name, digest)
        g.cache = "hit" if cached else "miss"
        info = BlobInfo(str(digest), size)
        return blob_response("HEAD", request.headers.get("Range"), info, _none)
    stream = await services.pullthrough.open_blob(name, digest)
    assert isinstance(stream, BlobStream)
    g.cache = "hit" if stream.from_cache else "miss"
    source = "cache" if stream.from_cache else "upstream"
    try:
        return blob_response(
            "GET",
            request.headers.get("Range"),
            BlobInfo(str(digest), stream.size),
            lambda offset, length: _counted(services, stream, offset, length, source),
        )
    except BaseException:
        stream.close()
        raise


@asynccontextmanager
async def _counted(
    services: EdgeServices, stream: BlobStream, offset: int, length: int, source: str
) -> AsyncIterator[AsyncIterator[bytes]]:
    counter = services.metrics.bytes_served.labels(source)

    async def count(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            counter.inc(len(chunk))
            yield chunk

    async with stream.chunks(offset, length) as chunks:
        counted = count(chunks)
        try:
            yield counted
        finally:
            await counted.aclose()  # type: ignore[attr-defined]


def _none(offset: int, length: int) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
    raise Unsupported("HEAD has no body")  # blob_response never opens a body for HEAD


def _internal(endpoint: Endpoint, authorization: Authorization) -> RepositoryName:
    assert endpoint.name is not None
    name = authorization.names.get(endpoint.name.value)
    if name is None:
        raise NameUnknown(detail={"name": endpoint.name.value})
    return name


async def _forward(services: EdgeServices) -> Response:
    services.metrics.passthrough.labels(request.method).inc()
    path = request.full_path if request.query_string else request.path
    has_body = request.method in ("POST", "PUT", "PATCH")
    return await pass_through(
        services.origin,
        request.method,
        path,
        forward_headers(dict(request.headers.items()), request.remote_addr),
        request.body if has_body else None,
        request.content_length if has_body else None,
    )


async def _after_write(services: EdgeServices, endpoint: Endpoint, response: Response) -> None:
    """A manifest PUT or DELETE by tag through this edge invalidates that tag at once."""
    if (
        endpoint.kind is Kind.MANIFEST
        and request.method in ("PUT", "DELETE")
        and 200 <= response.status_code < 300
        and endpoint.name is not None
    ):
        reference = parse_manifest_reference(endpoint.argument or "")
        if isinstance(reference, Tag):
            internal = await services.gate.resolve(request.host, endpoint.name)
            if internal is not None:
                await services.pullthrough.forget_tag(internal, reference)


def _install_access_log(app: Quart, services: EdgeServices) -> None:
    @app.before_request
    async def start() -> None:
        g.started = time.monotonic()
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        g.route, g.repository, g.digest, g.cache = "other", None, None, None

    @app.after_request
    async def finish(response: Response) -> Response:
        duration = time.monotonic() - g.started
        route = getattr(g, "route", "other")
        services.metrics.requests.labels(route, str(response.status_code)).inc()
        services.metrics.duration.labels(route).observe(duration)
        response.headers["X-Request-Id"] = g.request_id
        access_log.info(
            json.dumps(
                {
                    "request_id": g.request_id,
                    "method": request.method,
                    "path": request.path,
                    "repository": g.repository,
                    "digest": g.digest,
                    "cache": g.cache,
                    "status": response.status_code,
                    "bytes": response.content_length,
                    "duration_ms": round(duration * 1000, 2),
                }
            )
        )
        return response
