"""The edge process: the root nursery (fills, key refresh, cache gauges), the mirrors
(edge/mirror/) and hypercorn."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from config.settings import EdgeSettings
from core.client.trust import verifying_context
from core.errors import ConfigError
from core.web.serving import bound_url, serve_app
from core.web.tls import server_tls_context
from core.web.v2 import Chooser, V2Routes
from edge.app import EdgeServices, create_edge_app
from edge.auth import EdgeGate
from edge.breaker import CircuitBreaker, State
from edge.cache.store import CacheStats, EdgeCache
from edge.coord.host_lock import HostLocks
from edge.events.actions import EventActions
from edge.events.feed_client import FeedClient
from edge.events.follower import Follower
from edge.events.position import state_path
from edge.events.revocations import Revocations
from edge.fill import Fills
from edge.metrics import EdgeMetrics
from edge.mirror.config import default_mirror, log_access, site_specs
from edge.mirror.metrics import MirrorMetrics
from edge.mirror.org_directory import OrgDirectory
from edge.mirror.routing import Router
from edge.mirror.site import MirrorSite, open_site
from edge.origin_control import OriginControl
from edge.passthrough import Limits, PassThrough
from edge.pullthrough import PullThrough
from edge.region.membership import Region, open_region
from edge.region.upstream import RegionalUpstream
from edge.relay.service import RelayService
from edge.relay.source import BuildReader
from edge.upstream import OriginUpstream
from edge.upstream_types import Upstream

log = logging.getLogger("depot.edge")
STATS_INTERVAL_SECONDS = 5.0


def read_upstream_token(settings: EdgeSettings) -> str:
    if settings.upstream_token_file is None:
        raise ConfigError("--upstream-token-file is required (an edge token, dpe_...)")
    try:
        token = settings.upstream_token_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {settings.upstream_token_file}: {exc}") from exc
    if not token:
        raise ConfigError(f"{settings.upstream_token_file} is empty")
    return token


@dataclass
class _CacheGauges:
    """The last cache statistics, refreshed by a task: scrapes must not block on SQLite."""

    stats: CacheStats | None = None

    def read(self, field: str) -> float:
        return float(getattr(self.stats, field)) if self.stats is not None else 0.0


async def _refresh_stats(cache: EdgeCache, gauges: _CacheGauges) -> None:
    while True:
        try:
            gauges.stats = await cache.stats()
        except Exception:  # a scrape shows the last good figures; the next round retries
            log.exception("reading cache statistics failed")
        await trio.sleep(STATS_INTERVAL_SECONDS)


def _region_gauges(metrics: EdgeMetrics, region: Region, regional: RegionalUpstream) -> None:
    directory, counters = region.directory, regional.counters
    metrics.gauge(
        "depot_edge_region_redis_up",
        "1 while Redis answers (the region's fills are coordinated)",
        lambda: float(directory.healthy),
    )
    metrics.gauge(
        "depot_edge_region_peer_fetches",
        "Blob streams this edge took from a peer edge of its region",
        lambda: float(counters.peer_fetches),
    )
    metrics.gauge(
        "depot_edge_region_upstream_fetches",
        "Blob streams this edge took from its own upstream",
        lambda: float(counters.upstream_fetches),
    )
    metrics.gauge(
        "depot_edge_region_takeovers",
        "Broken peer streams this edge continued from elsewhere",
        lambda: float(counters.takeovers),
    )


async def _follow_events(root: trio.Nursery, follower: Follower, metrics: EdgeMetrics) -> None:
    """Start following origin's event feed (edge/events/), with its gauges."""
    stats = follower.stats
    metrics.gauge(
        "depot_edge_events_position", "Last origin event acted on", lambda: float(stats.last)
    )
    metrics.gauge(
        "depot_edge_events_applied", "Origin events acted on", lambda: float(stats.applied)
    )
    metrics.gauge(
        "depot_edge_events_revalidations",
        "Times everything cached was revalidated (first start, or behind origin's log)",
        lambda: float(stats.revalidations),
    )
    metrics.gauge(
        "depot_edge_events_lag_seconds",
        "From origin appending the last event to this edge acting on it",
        lambda: stats.lag_seconds,
    )
    metrics.gauge(
        "depot_edge_events_connected",
        "1 while origin's event feed answers",
        lambda: float(stats.connected),
    )
    await root.start(follower.run)


async def serve(
    settings: EdgeSettings,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.time,
    recover: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the edge on a bound, listening socket until shutdown.

    ``recover`` False: another process (``edge serve --workers N``'s parent) recovered the
    cache before this one started, and sibling processes are filling it now."""
    token = read_upstream_token(settings)
    tls = server_tls_context(settings.tls_cert_file, settings.tls_key_file)
    # Origin's certificate is checked against --upstream-ca, else the system's trust store.
    trust = verifying_context(settings.upstream_ca_file)
    specs = site_specs(settings)
    log_access(specs)
    cache = EdgeCache.open(settings.cache_dir, settings.cache_size_bytes, recover=recover)
    host_locks = HostLocks(settings.cache_dir)
    metrics = EdgeMetrics()
    closing: list[Callable[[], Awaitable[None]]] = []  # the mirrors' clients, after the fills
    # One breaker per upstream: pulls, pass-through reads and the control plane all learn
    # from (and stop waiting on) the same hung origin.
    breaker = CircuitBreaker(
        threshold=settings.breaker_failures,
        max_interval_seconds=settings.breaker_max_interval_seconds,
    )
    limits = Limits(
        reads=settings.passthrough_reads_max,
        writes=settings.passthrough_writes_max,
        per_client=settings.passthrough_per_client_max,
        queue_seconds=settings.passthrough_queue_seconds,
        read_deadline_seconds=settings.upstream_deadline_seconds,
        retry_after_seconds=settings.unavailable_retry_after_seconds,
    )
    try:
        async with (
            OriginUpstream.open(settings.upstream, token, verify=trust) as upstream,
            OriginControl.open(settings.upstream, token, breaker=breaker, verify=trust) as control,
            PassThrough.open(
                settings.upstream,
                verify=trust,
                limits=limits,
                breaker=breaker,
                trusted_proxies=settings.trusted_proxies,
                clock=clock,
            ) as passthrough,
            open_region(
                settings, token, bound_url(sock, tls=tls is not None), verify=trust
            ) as region,
            FeedClient.open(settings.upstream, token, verify=trust) as feed,
            trio.open_nursery() as root,
        ):
            revocations = Revocations()  # what origin's event feed says, for the gate
            gate = EdgeGate(
                control,
                base_domain=settings.base_domain,
                token_service=settings.token_service,
                token_issuer=settings.token_issuer,
                clock=clock,
                jwks_refresh_seconds=settings.jwks_refresh_seconds,
                revocations=revocations,
            )
            await root.start(gate.run)
            # In a region, blob bytes come from a peer edge or, once per region, upstream.
            fill_upstream: Upstream = upstream
            if region is not None:
                regional = RegionalUpstream(upstream, region.directory, region.peers)
                fill_upstream = regional
                await root.start(region.directory.run)
                _region_gauges(metrics, region, regional)
            fills = Fills(
                cache,
                fill_upstream,
                root,
                fill_deadline_seconds=settings.fill_deadline_seconds,
                clock=clock,
                host_locks=host_locks,
            )
            metrics.gauge(
                "depot_edge_fill_host_waits",
                "Fills that waited for another process of this host filling the same blob",
                lambda: float(host_locks.waits),
            )
            gauges = _CacheGauges()
            root.start_soon(_refresh_stats, cache, gauges)
            metrics.gauge(
                "depot_edge_fills_in_flight",
                "Blob fills running",
                lambda: float(fills.statistics().in_flight),
            )
            metrics.gauge(
                "depot_edge_fill_waiters_coalesced",
                "Requests that joined a running fill",
                lambda: float(fills.statistics().waiters_coalesced),
            )
            metrics.gauge(
                "depot_edge_fill_failures",
                "Fills that failed (nothing cached)",
                lambda: float(fills.statistics().failed),
            )
            metrics.gauge(
                "depot_edge_bytes_from_upstream",
                "Blob bytes fetched by fills (from origin and mirrored upstreams)",
                lambda: float(fills.statistics().bytes_from_upstream),
            )
            metrics.gauge(
                "depot_edge_origin_circuit_open",
                "1 while the circuit breaker keeps requests from origin",
                lambda: float(breaker.state is not State.CLOSED),
            )
            metrics.gauge(
                "depot_edge_origin_circuit_openings",
                "Times the circuit breaker on origin opened",
                lambda: float(breaker.openings),
            )
            metrics.gauge(
                "depot_edge_cache_size_bytes",
                "Bytes in the cache",
                lambda: gauges.read("volume_bytes"),
            )
            metrics.gauge(
                "depot_edge_cache_evictions",
                "Entries evicted for space",
                lambda: gauges.read("evictions"),
            )
            pullthrough = PullThrough(
                settings, cache, fills, fill_upstream, metrics, clock, breaker=breaker, nursery=root
            )
            reader = BuildReader(
                pullthrough, upstream, deadline_seconds=settings.upstream_deadline_seconds
            )
            relay = RelayService(root, reader, settings)
            metrics.gauge(
                "depot_edge_relay_jobs", "Push relay jobs running", lambda: float(relay.running())
            )
            make_site = partial(
                open_site,
                settings=settings,
                cache=cache,
                fills=fills,
                metrics=metrics,
                mirror_metrics=MirrorMetrics(metrics.registry),
                clock=clock,
            )
            mirrors: dict[str, MirrorSite] = {}
            orgs = OrgDirectory(
                control, make_site, refresh_seconds=settings.org_upstreams_refresh_seconds
            )
            closing.append(orgs.aclose)
            for spec in specs:
                mirrors[spec.name] = make_site(spec)
                closing.append(mirrors[spec.name].aclose)
            if settings.events:
                follower = Follower(
                    feed,
                    EventActions(cache, gate, passthrough.memory, orgs, clock),
                    revocations,
                    state_path(settings.cache_dir),
                    wait_seconds=settings.events_wait_seconds,
                    clock=clock,
                )
                # Edges below this one (a shield) hear of a change once it has acted on it.
                passthrough.feed_barrier = follower.reached
                await _follow_events(root, follower, metrics)

            def router(origin: V2Routes) -> Chooser:
                return Router(
                    origin,
                    gate,
                    mirrors,
                    orgs,
                    default=default_mirror(settings, specs),
                    base_domain=settings.base_domain,
                ).choose

            services = EdgeServices(
                settings=settings,
                gate=gate,
                cache=cache,
                fills=fills,
                pullthrough=pullthrough,
                origin=passthrough,
                metrics=metrics,
                ready=lambda: gate.ready,
                relay=relay,
                route_v2=router,
                region_status=None if region is None else region.status,
            )
            await serve_app(
                create_edge_app(services),
                sock,
                graceful_timeout_seconds=settings.graceful_timeout_seconds,
                body_idle_timeout_seconds=settings.body_idle_timeout_seconds,
                send_idle_timeout_seconds=settings.send_idle_timeout_seconds,
                tls=tls,
                trusted_proxies=settings.trusted_proxies,
                shutdown_trigger=shutdown_trigger,
                task_status=task_status,
            )
            root.cancel_scope.cancel()  # drained: stop key refresh, gauges and fills
    finally:
        with trio.CancelScope(shield=True):
            for close in closing:
                await close()
        cache.close()
