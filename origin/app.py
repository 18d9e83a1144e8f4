"""The origin's Quart application."""

from __future__ import annotations

from quart_trio import QuartTrio

from config.settings import OriginSettings
from core.web.app import create_app
from origin.registry.registry import Registry
from origin.routes.v2 import install_v2_routes


def create_origin_app(registry: Registry, settings: OriginSettings) -> QuartTrio:
    app = create_app("depot-origin")
    install_v2_routes(
        app,
        registry,
        max_manifest_bytes=settings.max_manifest_bytes,
        chunk_min_length=settings.chunk_min_length_bytes,
    )
    return app
