"""Per request, on the origin: one JSON access-log line (``depot.origin.access``, the same
fields as the edge's ``depot.edge.access``), the request metrics, and ``GET /metrics``."""

from __future__ import annotations

import json
import logging
import time
import uuid

from quart import Quart, Response, g, request

from core.digest import Digest
from core.endpoints import BlobEndpoint, ManifestEndpoint
from core.web.v2 import current_endpoint
from origin.metrics import CONTENT_TYPE_LATEST, CountBodyBytes, OriginMetrics, token_result

access_log = logging.getLogger("depot.origin.access")

#: Routes outside /v2, by path prefix (for the route label; the path itself is logged).
_ROUTES = (
    ("/token", "token"),
    ("/.well-known/", "jwks"),
    ("/api/v1", "api"),
    ("/metrics", "metrics"),
)


def install_access(app: Quart, metrics: OriginMetrics) -> None:
    app.asgi_app = CountBodyBytes(app.asgi_app, metrics)  # type: ignore[method-assign]

    @app.route("/metrics", methods=["GET"])
    async def render_metrics() -> Response:
        return Response(await metrics.render_fresh(), content_type=CONTENT_TYPE_LATEST)

    @app.before_request
    async def start() -> None:
        g.started = time.monotonic()
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]

    @app.after_request
    async def finish(response: Response) -> Response:
        started = getattr(g, "started", None)
        duration = 0.0 if started is None else time.monotonic() - started
        endpoint = current_endpoint()
        route = endpoint.kind.value if endpoint is not None else _route(request.path)
        repository = endpoint.name.value if endpoint is not None and endpoint.name else None
        digest = None
        if isinstance(endpoint, BlobEndpoint):
            digest = str(endpoint.digest)
        elif isinstance(endpoint, ManifestEndpoint) and isinstance(endpoint.reference, Digest):
            digest = str(endpoint.reference)
        status = response.status_code
        metrics.requests.labels(route, str(status)).inc()
        metrics.duration.labels(route).observe(duration)
        if route == "token":
            authenticated = "Authorization" in request.headers or request.method == "POST"
            metrics.token_exchanges.labels(token_result(status, authenticated)).inc()
        request_id = getattr(g, "request_id", None) or uuid.uuid4().hex[:16]
        response.headers.setdefault("X-Request-Id", request_id)
        access_log.info(
            json.dumps(
                {
                    "request_id": request_id,
                    "method": request.method,
                    "path": request.path,
                    "repository": repository,
                    "digest": digest,
                    "cache": None,  # the edge's field (hit, miss, pass); origin has no cache
                    "status": status,
                    "bytes": response.content_length,
                    "duration_ms": round(duration * 1000, 2),
                }
            )
        )
        return response


def _route(path: str) -> str:
    for prefix, route in _ROUTES:
        if path.startswith(prefix):
            return route
    return "other"
