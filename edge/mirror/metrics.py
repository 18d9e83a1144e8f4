"""Per-upstream metrics of the mirrors, on the edge's Prometheus registry.

Labelled by ``upstream`` (an operator's mirror: its name; an org's: ``<org>/<name>``):

- ``depot_edge_mirror_requests_total{upstream,status}``: every HTTP answer from the upstream,
  its token service included (``status="error"``: no answer, a transport failure);
- ``depot_edge_mirror_bytes_total``: manifest and blob bytes received;
- ``depot_edge_mirror_fills_total``: blob fetches started (one per digest, however many
  clients wait for it);
- ``depot_edge_mirror_stale_serves_total``: tags answered stale while the upstream failed;
- ``depot_edge_mirror_throttled_total``: 429 answers;
- ``depot_edge_mirror_ratelimit_remaining``: Docker Hub's ``ratelimit-remaining`` (pulls left
  in its window), from the last answer that carried it.

:class:`ObservingTransport` counts the answers: it wraps the httpx transport of the mirror's
one registry client, so the token fetches are seen as well as the ``/v2`` requests.
"""

from __future__ import annotations

import re

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

_RATELIMIT = re.compile(r"^\s*(\d+)")


class MirrorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "depot_edge_mirror_requests",
            "Answers from a mirrored upstream (its token service included), by status",
            ["upstream", "status"],
            registry=r,
        )
        self.bytes = Counter(
            "depot_edge_mirror_bytes",
            "Manifest and blob bytes received from a mirrored upstream",
            ["upstream"],
            registry=r,
        )
        self.fills = Counter(
            "depot_edge_mirror_fills",
            "Blob fetches from a mirrored upstream",
            ["upstream"],
            registry=r,
        )
        self.stale_serves = Counter(
            "depot_edge_mirror_stale_serves",
            "Tags served stale while a mirrored upstream failed",
            ["upstream"],
            registry=r,
        )
        self.throttled = Counter(
            "depot_edge_mirror_throttled",
            "429 answers from a mirrored upstream",
            ["upstream"],
            registry=r,
        )
        self.ratelimit_remaining = Gauge(
            "depot_edge_mirror_ratelimit_remaining",
            "Pulls left in the upstream's rate-limit window (Docker Hub's ratelimit-remaining)",
            ["upstream"],
            registry=r,
        )


class ObservingTransport(httpx.AsyncBaseTransport):
    """``inner``, with every answer (or failure) counted for ``upstream``."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, metrics: MirrorMetrics, upstream: str
    ) -> None:
        self._inner = inner
        self._requests = metrics.requests
        self._throttled = metrics.throttled.labels(upstream)
        self._remaining = metrics.ratelimit_remaining  # labelled once a value arrives
        self._upstream = upstream

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError:
            self._requests.labels(self._upstream, "error").inc()
            raise
        self._requests.labels(self._upstream, str(response.status_code)).inc()
        if response.status_code == 429:
            self._throttled.inc()
        remaining = _RATELIMIT.match(response.headers.get("ratelimit-remaining", ""))
        if remaining is not None:
            self._remaining.labels(self._upstream).set(int(remaining.group(1)))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
