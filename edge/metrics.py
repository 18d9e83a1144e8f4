"""The edge's Prometheus metrics, on a registry of its own (one per process/app)."""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "EdgeMetrics"]


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "depot_edge_requests", "Requests by route and status", ["route", "status"], registry=r
        )
        self.duration = Histogram(
            "depot_edge_request_seconds", "Time to the response head", ["route"], registry=r
        )
        self.cache_hits = Counter("depot_edge_cache_hits", "Cache hits", ["kind"], registry=r)
        self.cache_misses = Counter("depot_edge_cache_misses", "Cache misses", ["kind"], registry=r)
        self.bytes_served = Counter(
            "depot_edge_bytes_served", "Blob bytes sent to clients", ["source"], registry=r
        )
        self.stale_serves = Counter(
            "depot_edge_stale_serves", "Answers served stale while origin failed", registry=r
        )
        self.passthrough = Counter(
            "depot_edge_passthrough", "Requests passed through to origin", ["method"], registry=r
        )
        # Each worker process of ``edge serve --workers N`` has its own registry: a scrape
        # answers for the one worker that took the connection, and says which.
        Gauge(
            "depot_edge_worker", "1, labelled with the answering process's pid", ["pid"], registry=r
        ).labels(pid=str(os.getpid())).set(1)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (fills in flight, cache size, ...)."""
        gauge = Gauge(name, documentation, registry=self.registry)
        gauge.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
