"""The origin's Prometheus metrics (``GET /metrics``), on a registry of its own per process.

Requests by route and status and their latency (to the response head), bytes in and out
(request and response bodies as they cross the ASGI boundary: chunked uploads and sendfile
bodies included), open upload sessions, garbage collection runs and bytes freed, token
exchanges by result, and database latency by kind of call. Names mirror the edge's
(``edge/metrics.py``): ``depot_origin_*`` where the edge has ``depot_edge_*``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from core.web.connection import ZERO_COPY
from origin.retention.gc import GcReport

__all__ = ["CONTENT_TYPE_LATEST", "CountBodyBytes", "OriginMetrics"]

log = logging.getLogger("depot.origin")
#: A scrape waits at most this long for each refreshed gauge.
REFRESH_SECONDS = 1.0

#: Database calls are fast (an indexed read ~50 µs) until a lock or a disk is slow.
DATABASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class OriginMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        r = self.registry
        self.requests = Counter(
            "depot_origin_requests", "Requests by route and status", ["route", "status"], registry=r
        )
        self.duration = Histogram(
            "depot_origin_request_seconds", "Time to the response head", ["route"], registry=r
        )
        self.bytes_received = Counter(
            "depot_origin_bytes_received", "Request body bytes received", registry=r
        )
        self.bytes_sent = Counter("depot_origin_bytes_sent", "Response body bytes sent", registry=r)
        self.token_exchanges = Counter(
            "depot_origin_token_exchanges",
            "GET/POST /token by result: issued, anonymous, refused (401), limited (429), "
            "invalid (other 4xx), failed (5xx)",
            ["result"],
            registry=r,
        )
        self.gc_runs = Counter(
            "depot_origin_gc_runs", "Periodic garbage collections by result", ["result"], registry=r
        )
        self.gc_bytes_freed = Counter(
            "depot_origin_gc_bytes_freed", "Blob bytes garbage collection deleted", registry=r
        )
        self.gc_blobs_deleted = Counter(
            "depot_origin_gc_blobs_deleted", "Blobs garbage collection deleted", registry=r
        )
        self.database_seconds = Histogram(
            "depot_origin_database_seconds",
            "Database calls by kind (lookup: inline primary-key read; read; write: a "
            "transaction, waiting for the write gate included)",
            ["operation"],
            buckets=DATABASE_BUCKETS,
            registry=r,
        )

    def gauge(
        self,
        name: str,
        documentation: str,
        read: Callable[[], float],
        *,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """A gauge read at scrape time; ``refresh`` (a database count) runs first."""
        gauge = Gauge(name, documentation, registry=self.registry)
        gauge.set_function(read)
        if refresh is not None:
            self._refreshers.append(refresh)

    async def render_fresh(self) -> bytes:
        """The exposition after the refreshers ran, each bounded: a slow or failing database
        leaves the last value (the scrape still answers, and database latency shows it)."""
        for refresh in self._refreshers:
            with trio.move_on_after(REFRESH_SECONDS):
                try:
                    await refresh()
                except Exception:  # the last value stays
                    log.exception("refreshing a metric failed")
        return self.render()

    def observe_database(self, operation: str, seconds: float) -> None:
        self.database_seconds.labels(operation).observe(seconds)

    def collected(self, report: GcReport) -> None:
        self.gc_runs.labels("ok").inc()
        self.gc_bytes_freed.inc(report.bytes_freed)
        self.gc_blobs_deleted.inc(report.blobs_deleted)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def token_result(status: int, authenticated: bool) -> str:
    """A /token answer's status as a result label."""
    if status == 200:
        return "issued" if authenticated else "anonymous"
    if status == 401:
        return "refused"
    if status == 429:
        return "limited"
    return "invalid" if status < 500 else "failed"


class CountBodyBytes:
    """ASGI middleware (around Quart's ``asgi_app``): counts request and response body bytes
    as they pass, whatever the framing (chunked, sendfile windows)."""

    def __init__(self, app: Any, metrics: OriginMetrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self._metrics

        async def counted_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                metrics.bytes_received.inc(len(message.get("body", b"")))
            return message

        async def counted_send(message: Any) -> None:
            if message["type"] == "http.response.body":
                metrics.bytes_sent.inc(len(message.get("body", b"")))
            elif message["type"] == ZERO_COPY:
                metrics.bytes_sent.inc(message["count"])
            await send(message)

        await self.app(scope, counted_receive, counted_send)
