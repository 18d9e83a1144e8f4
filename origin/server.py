"""The origin process: the root nursery, housekeeping, and hypercorn serving the app."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import httpx
import trio

from config.settings import OriginSettings
from core.storage.filesystem import FilesystemDriver
from core.web.serving import serve_app
from origin.app import create_origin_app
from origin.auth.gate import Gate
from origin.auth.issuer import TokenIssuer
from origin.auth.keys import KeyRing
from origin.auth.oidc import OidcVerifier
from origin.auth.store import TenancyStore
from origin.builds.metering import Metering
from origin.builds.service import BuildService
from origin.builds.store import BuildStore
from origin.metadata.store import MetadataStore
from origin.registry.registry import Registry
from origin.retention.gc import ExtraRoots, collect

log = logging.getLogger("depot.origin")


@dataclass
class Services:
    """Everything one origin process serves with, opened together and closed together."""

    registry: Registry
    tenancy: TenancyStore
    keys: KeyRing
    gate: Gate
    issuer: TokenIssuer
    builds: BuildService
    metering: Metering


@asynccontextmanager
async def open_registry(
    settings: OriginSettings, clock: Callable[[], float] = time.time
) -> AsyncIterator[Registry]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    storage = FilesystemDriver(settings.data_dir / "storage")
    metadata = MetadataStore.open(settings.resolved_database_url)
    try:
        yield Registry(storage, metadata, clock)
    finally:
        metadata.close()


@asynccontextmanager
async def open_services(
    settings: OriginSettings, clock: Callable[[], float] = time.time
) -> AsyncIterator[Services]:
    async with (
        open_registry(settings, clock) as registry,
        httpx.AsyncClient(trust_env=False, timeout=10) as http,
    ):
        tenancy = TenancyStore.open(settings.resolved_database_url)
        build_store = BuildStore.open(settings.resolved_database_url)
        try:
            keys = KeyRing.load(settings.data_dir / "keys")
            gate = Gate(settings, tenancy, keys, clock)
            oidc = OidcVerifier(
                http, clock, allow_insecure_loopback=settings.oidc_allow_insecure_loopback
            )
            issuer = TokenIssuer(settings, tenancy, keys, gate, oidc, clock)
            builds = BuildService(
                build_store,
                registry.metadata,
                registry.storage,
                clock,
                default_ttl_seconds=settings.build_ttl_seconds,
            )
            registry.manifests.hooks = builds  # expired builds stop resolving at once
            metering = Metering(
                build_store,
                tenancy,
                clock,
                price_per_gb_month=settings.storage_price_per_gb_month,
            )
            yield Services(registry, tenancy, keys, gate, issuer, builds, metering)
        finally:
            build_store.close()
            tenancy.close()


async def housekeeping(registry: Registry, settings: OriginSettings) -> None:
    """Start-of-service cleanup; run only while no other process serves this data dir."""
    temporary = await registry.storage.clean_temporary(0)
    purged = await registry.uploads.purge(settings.upload_timeout_seconds, orphans=True)
    if temporary or purged:
        log.info("cleaned %d temporary files and %d abandoned uploads", temporary, purged)


async def _sweep_uploads(registry: Registry, settings: OriginSettings) -> None:
    while True:
        await trio.sleep(settings.upload_sweep_interval_seconds)
        try:
            await registry.uploads.purge(settings.upload_timeout_seconds, orphans=False)
            await registry.storage.clean_temporary(settings.upload_timeout_seconds)
        except Exception:  # keep sweeping; the next round retries
            log.exception("upload sweep failed")


async def collect_garbage_periodically(
    registry: Registry,
    settings: OriginSettings,
    *,
    clock: Callable[[], float] = time.time,
    extra_roots: ExtraRoots | None = None,
    before: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Online garbage collection every ``gc_interval_seconds`` (safe beside other origins and
    ``depot-registry gc``: each deletion re-checks itself), abandoned uploads included.
    ``extra_roots`` adds live saved builds as roots (``origin/retention/gc.py``)."""
    while True:
        await trio.sleep(settings.gc_interval_seconds)
        try:
            if before is not None:
                await before()  # e.g. retire expired builds' tags: they are not roots
            await collect(
                registry,
                now=clock(),
                grace_seconds=settings.gc_grace_seconds,
                extra_roots=extra_roots,
                upload_timeout_seconds=settings.upload_timeout_seconds,
            )
        except Exception:  # keep collecting; the next round retries
            log.exception("garbage collection failed")


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
    async with open_services(settings, clock) as services:
        registry = services.registry
        if clean_at_start:
            await housekeeping(registry, settings)
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
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sweep_uploads, registry, settings)
            if settings.gc_interval_seconds > 0:
                nursery.start_soon(
                    partial(
                        collect_garbage_periodically,
                        registry,
                        settings,
                        clock=clock,
                        before=services.builds.retire_expired,
                    )
                )
            nursery.start_soon(services.metering.run, settings.metering_interval_seconds)
            await serve_app(
                app,
                sock,
                graceful_timeout_seconds=settings.graceful_timeout_seconds,
                body_idle_timeout_seconds=settings.body_idle_timeout_seconds,
                send_idle_timeout_seconds=settings.send_idle_timeout_seconds,
                shutdown_trigger=shutdown_trigger,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # serving has drained: stop the sweepers too
