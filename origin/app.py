"""The origin's Quart application."""

from __future__ import annotations

import time
from collections.abc import Callable

from quart_trio import QuartTrio

from config.settings import OriginSettings
from core.errors import ConfigError
from core.web.app import create_app
from origin.access import install_access
from origin.auth.gate import Gate
from origin.auth.issuer import TokenIssuer
from origin.auth.keys import KeyRing
from origin.auth.store import TenancyStore
from origin.builds.metering import Metering
from origin.builds.service import BuildService
from origin.events.feed import EventFeed
from origin.metrics import OriginMetrics
from origin.registry.registry import Registry
from origin.routes.api import install_api_routes
from origin.routes.builds import install_build_routes
from origin.routes.events import install_event_routes
from origin.routes.token import install_token_routes
from origin.routes.upstreams import install_upstream_routes
from origin.routes.v2 import install_v2_routes
from origin.upstreams.store import UpstreamStore


def create_origin_app(
    registry: Registry,
    settings: OriginSettings,
    gate: Gate,
    issuer: TokenIssuer,
    keys: KeyRing,
    tenancy: TenancyStore,
    clock: Callable[[], float] = time.time,
    *,
    builds: BuildService | None = None,
    metering: Metering | None = None,
    upstreams: UpstreamStore | None = None,
    events: EventFeed | None = None,
    metrics: OriginMetrics | None = None,
) -> QuartTrio:
    """``issuer.failures`` (the failed-credential limit) is shared by ``/token``, ``/v2/``
    (through ``gate``, built with the same one) and ``/api/v1/``."""
    app = create_app("depot-origin")
    install_v2_routes(
        app,
        registry,
        gate,
        max_manifest_bytes=settings.max_manifest_bytes,
        chunk_min_length=settings.chunk_min_length_bytes,
        base_domain=settings.base_domain,
        storage_redirect_seconds=_redirect_seconds(settings),
    )
    install_token_routes(app, issuer, keys)
    install_api_routes(
        app,
        tenancy,
        clock,
        allow_insecure_loopback=settings.oidc_allow_insecure_loopback,
        failures=issuer.failures,
    )
    if builds is not None and metering is not None:
        install_build_routes(app, tenancy, builds, metering, clock, failures=issuer.failures)
    if upstreams is not None:
        install_upstream_routes(
            app,
            tenancy,
            upstreams,
            clock,
            allow_private_addresses=settings.upstreams_allow_private_addresses,
        )
    if events is not None:
        install_event_routes(app, tenancy, events, clock, failures=issuer.failures)
    install_access(app, metrics if metrics is not None else OriginMetrics())
    return app


def _redirect_seconds(settings: OriginSettings) -> int:
    """How long redirect mode's presigned URLs live (0: the mode is off). SigV4 allows up
    to 7 days: anything else is refused at start, not by a 500 on every blob GET."""
    if not settings.storage_redirect:
        return 0
    seconds = int(settings.storage_redirect_seconds)
    if not 1 <= seconds <= 7 * 24 * 3600:
        raise ConfigError("storage_redirect_seconds must be between 1 s and 7 days")
    return seconds
