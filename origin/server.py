"""The origin process: the root nursery, housekeeping, and hypercorn serving the app.

One :class:`~origin.metadata.database.Database` per process, opened here: the registry's
metadata store, the tenancy store and the build store are all built on it, so they share one
engine pair, one write gate and one thread limiter.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import httpx
import trio

from config.settings import OriginSettings
from core.storage.driver import StorageDriver
from core.web.serving import serve_app
from core.web.tls import server_tls_context
from origin.app import create_origin_app
from origin.auth.gate import Gate
from origin.auth.issuer import TokenIssuer
from origin.auth.keys import KeyRing, shared_key_ring
from origin.auth.oidc import OidcVerifier
from origin.auth.ratelimit import CredentialFailures
from origin.auth.shared_failures import RedisFailureLog
from origin.auth.store import TenancyStore
from origin.builds.metering import Metering
from origin.builds.service import BuildService
from origin.builds.store import BuildStore
from origin.events.feed import EventFeed
from origin.metadata.database import Database
from origin.metadata.store import MetadataStore
from origin.metrics import OriginMetrics
from origin.registry.registry import Registry
from origin.registry.uploads import UploadLimits
from origin.retention.gc import ExtraRoots, GcReport, collect
from origin.storage import open_storage
from origin.upstreams.cipher import DEFAULT_KEY_FILE, CredentialCipher
from origin.upstreams.store import UpstreamStore

if TYPE_CHECKING:
    import coredis

log = logging.getLogger("depot.origin")
#: The SQLite database in the data directory (when no ``database_url`` names another).
REGISTRY_FILE = "registry.db"


@dataclass
class Services:
    """Everything one origin process serves with, opened together and closed together."""

    database: Database
    registry: Registry
    tenancy: TenancyStore
    keys: KeyRing
    gate: Gate
    issuer: TokenIssuer
    builds: BuildService
    metering: Metering
    upstreams: UpstreamStore
    events: EventFeed


def open_database(settings: OriginSettings) -> Database:
    """The origin's database (``database_url``, or ``registry.db`` in the data directory),
    its tables created. Blocking: call it at start-up."""
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database.open(
        settings.resolved_database_url,
        busy_timeout_seconds=settings.database_busy_timeout_seconds,
    )


async def _key_ring(
    database: Database, settings: OriginSettings, clock: Callable[[], float]
) -> KeyRing:
    """Token-signing keys: in the data directory on SQLite (one host); in the database on
    PostgreSQL, the same for every origin sharing it."""
    directory = settings.data_dir / "keys"
    if database.dialect != "postgresql":
        return KeyRing.load(directory)
    return await shared_key_ring(database, open_upstream_cipher(settings), directory, clock())


def open_upstream_cipher(settings: OriginSettings) -> CredentialCipher:
    """The key that seals orgs' upstream credentials: the configured file, or one in the
    data directory, created on first start."""
    configured = settings.upstream_credentials_key_file
    path = configured if configured is not None else settings.data_dir / DEFAULT_KEY_FILE
    return CredentialCipher.load(path, create=configured is None)


def registry_on(
    database: Database,
    storage: StorageDriver,
    clock: Callable[[], float] = time.time,
    settings: OriginSettings | None = None,
) -> Registry:
    """The registry; with ``settings``, the per-org upload limits of a serving origin."""
    limits = None
    if settings is not None:
        limits = UploadLimits(
            settings.upload_sessions_per_org, settings.upload_staged_bytes_per_org
        )
    return Registry(storage, MetadataStore(database), clock, upload_limits=limits)


@asynccontextmanager
async def open_registry(
    settings: OriginSettings, clock: Callable[[], float] = time.time
) -> AsyncIterator[Registry]:
    """The registry alone, on a database and storage of its own (closed on exit)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(settings)
    try:
        async with open_storage(settings) as storage:
            yield registry_on(database, storage, clock)
    finally:
        database.close()


@asynccontextmanager
async def open_redis(url: str) -> AsyncIterator[coredis.Redis[bytes] | None]:
    """The process's one Redis client (None without ``redis_url``), entered here, in the
    process's own main around serving: never inside quart-trio's lifespan. Unreachable at
    start: None (per-process limits), logged."""
    if not url:
        yield None
        return
    import coredis  # only origins configured with Redis need it

    client: coredis.Redis[bytes] = coredis.Redis.from_url(url, decode_responses=False)
    entered = False
    try:
        async with client:
            entered = True
            yield client
    except Exception as exc:
        if entered:
            raise
        log.warning("Redis at %s unreachable at start (%s): limits per process", url, exc)
        yield None


@asynccontextmanager
async def open_services(
    settings: OriginSettings,
    clock: Callable[[], float] = time.time,
    redis: coredis.Redis[bytes] | None = None,
) -> AsyncIterator[Services]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(settings)
    try:
        async with (
            open_storage(settings) as storage,
            httpx.AsyncClient(trust_env=False, timeout=10) as http,
        ):
            registry = registry_on(database, storage, clock, settings)
            tenancy = TenancyStore(database)
            build_store = BuildStore(database)
            keys = await _key_ring(database, settings, clock)
            # One failed-credential limit for /token, /v2/ and /api/v1/.
            failures = CredentialFailures(
                settings.token_failures_allowed,
                settings.token_failure_window_seconds,
                trusted_proxies=settings.trusted_proxies,
                clock=clock,
                shared=None
                if redis is None
                else RedisFailureLog(redis, settings.token_failure_window_seconds),
            )
            gate = Gate(settings, tenancy, keys, clock, failures=failures)
            oidc = OidcVerifier(
                http, clock, allow_insecure_loopback=settings.oidc_allow_insecure_loopback
            )
            issuer = TokenIssuer(settings, tenancy, keys, gate, oidc, clock, failures=failures)
            builds = BuildService(
                build_store, registry, clock, default_ttl_seconds=settings.build_ttl_seconds
            )
            registry.manifests.hooks = builds  # expired builds stop resolving at once
            metering = Metering(
                build_store,
                tenancy,
                registry,
                clock,
                price_per_gb_month=settings.storage_price_per_gb_month,
            )
            upstreams = UpstreamStore(database, open_upstream_cipher(settings))
            events = EventFeed(database, settings, clock)
            yield Services(
                database,
                registry,
                tenancy,
                keys,
                gate,
                issuer,
                builds,
                metering,
                upstreams,
                events,
            )
    finally:
        database.close()


async def housekeeping(registry: Registry, settings: OriginSettings) -> None:
    """Start-of-service cleanup. On a data directory of its own, everything temporary is
    abandoned (no other process serves it); on shared storage (an S3 bucket, several origins)
    only what the upload timeout already gave up is, so other origins' uploads survive."""
    # A PostgreSQL database means other origins may share the storage (a bucket, or one
    # directory mounted on every host).
    shared = settings.storage_url.startswith("s3://") or settings.resolved_database_url.startswith(
        "postgresql"
    )
    temporary = await registry.uploads.clean_storage(
        settings.upload_timeout_seconds if shared else 0
    )
    purged = await registry.uploads.purge(settings.upload_timeout_seconds, orphans=True)
    if temporary or purged:
        log.info("cleaned %d temporary files and %d abandoned uploads", temporary, purged)


async def once_across_origins(
    database: Database | None, name: str, work: Callable[[], Awaitable[object]]
) -> bool:
    """Run one pass of background work unless another origin on the database is running
    the same pass right now (then skip it: the next interval tries again). True if it ran."""
    if database is None:
        await work()
        return True
    async with database.exclusive(name) as mine:
        if not mine:
            log.info("%s: another origin is running this pass; skipped", name)
            return False
        await work()
        return True


async def _sweep_uploads(
    registry: Registry, settings: OriginSettings, database: Database | None = None
) -> None:
    async def sweep() -> None:
        await registry.uploads.purge(settings.upload_timeout_seconds, orphans=False)
        await registry.uploads.clean_storage(settings.upload_timeout_seconds)

    while True:
        await trio.sleep(settings.upload_sweep_interval_seconds)
        try:
            await once_across_origins(database, "upload-sweep", sweep)
        except Exception:  # keep sweeping; the next round retries
            log.exception("upload sweep failed")


async def _meter_periodically(
    metering: Metering, settings: OriginSettings, database: Database | None = None
) -> None:
    """Accrue now and then every ``metering_interval_seconds``, one origin at a time."""
    while True:
        try:
            await once_across_origins(database, "metering", metering.accrue)
        except Exception:  # keep metering; the next round covers the gap
            log.exception("metering round failed")
        await trio.sleep(settings.metering_interval_seconds)


async def collect_garbage_periodically(
    registry: Registry,
    settings: OriginSettings,
    *,
    clock: Callable[[], float] = time.time,
    extra_roots: ExtraRoots | None = None,
    before: Callable[[], Awaitable[object]] | None = None,
    database: Database | None = None,
    metrics: OriginMetrics | None = None,
) -> None:
    """Online garbage collection every ``gc_interval_seconds`` (safe beside other origins and
    ``depot-registry gc``: each deletion re-checks itself), abandoned uploads included.
    ``extra_roots`` adds live saved builds as roots (``origin/retention/gc.py``). With
    ``database``, one origin at a time runs a pass (the others skip theirs); the grace window
    keeps what other origins are uploading right now (blobs not yet in a manifest, sessions
    younger than the upload timeout: their rows are in the shared database)."""

    reports: list[GcReport] = []

    async def one_pass() -> None:
        if before is not None:
            # e.g. retire expired builds' tags: they are not roots
            await once_across_origins(database, "build-retirement", before)
        reports.append(
            await collect(
                registry,
                now=clock(),
                grace_seconds=settings.gc_grace_seconds,
                extra_roots=extra_roots,
                upload_timeout_seconds=settings.upload_timeout_seconds,
            )
        )

    while True:
        await trio.sleep(settings.gc_interval_seconds)
        try:
            ran = await once_across_origins(database, "garbage-collection", one_pass)
        except Exception:  # keep collecting; the next round retries
            log.exception("garbage collection failed")
            if metrics is not None:
                metrics.gc_runs.labels("failed").inc()
        else:
            if metrics is not None:
                if ran and reports:
                    metrics.collected(reports[-1])
                else:  # another origin on the database ran this pass
                    metrics.gc_runs.labels("skipped").inc()
        reports.clear()


@dataclass
class _UploadGauge:
    """Open upload sessions, counted when /metrics is scraped (bounded: see OriginMetrics)."""

    registry: Registry
    sessions: int = 0

    async def refresh(self) -> None:
        # Every session last advanced before a time far ahead: all of them.
        self.sessions = len(await self.registry.metadata.expired_uploads(time.time() + 1e9))


async def serve(
    settings: OriginSettings,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    clean_at_start: bool = True,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the origin on an already bound, listening socket until shutdown.

    ``task_status.started`` receives the bound URLs once hypercorn is accepting. ``clock``
    is what every service reads the time from (tests drive it forward).
    """
    tls = server_tls_context(settings.tls_cert_file, settings.tls_key_file)
    async with (
        open_redis(settings.redis_url) as redis,
        open_services(settings, clock, redis) as services,
    ):
        registry = services.registry
        if clean_at_start:
            await housekeeping(registry, settings)
        metrics = OriginMetrics()
        services.database.observe = metrics.observe_database
        uploads = _UploadGauge(registry)
        metrics.gauge(
            "depot_origin_upload_sessions",
            "Upload sessions open (all orgs)",
            lambda: float(uploads.sessions),
            refresh=uploads.refresh,
        )
        app = create_origin_app(
            registry,
            settings,
            services.gate,
            services.issuer,
            services.keys,
            services.tenancy,
            clock,
            builds=services.builds,
            metering=services.metering,
            upstreams=services.upstreams,
            events=services.events,
            metrics=metrics,
        )

        async def trigger() -> None:
            if shutdown_trigger is None:
                await trio.sleep_forever()
            else:
                await shutdown_trigger()
            services.events.close()  # long polls answer now instead of holding the drain

        async with trio.open_nursery() as nursery:
            await nursery.start(services.events.run)
            nursery.start_soon(_sweep_uploads, registry, settings, services.database)
            if settings.gc_interval_seconds > 0:
                nursery.start_soon(
                    partial(
                        collect_garbage_periodically,
                        registry,
                        settings,
                        clock=clock,
                        before=services.builds.retire_expired,
                        database=services.database,
                        metrics=metrics,
                    )
                )
            nursery.start_soon(_meter_periodically, services.metering, settings, services.database)
            await serve_app(
                app,
                sock,
                graceful_timeout_seconds=settings.graceful_timeout_seconds,
                body_idle_timeout_seconds=settings.body_idle_timeout_seconds,
                send_idle_timeout_seconds=settings.send_idle_timeout_seconds,
                tls=tls,
                trusted_proxies=settings.trusted_proxies,
                shutdown_trigger=trigger,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # serving has drained: stop the sweepers too
