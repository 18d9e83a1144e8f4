"""The Quart application factory with registry-safe configuration."""

from __future__ import annotations

from quart_trio import QuartTrio

from core.web.connection import RegistryHTTPConnection, RegistryRequest
from core.web.errors import install_error_handlers
from core.web.response import RegistryResponse


def create_app(name: str) -> QuartTrio:
    app = QuartTrio(name)
    app.asgi_http_class = RegistryHTTPConnection
    app.request_class = RegistryRequest
    app.response_class = RegistryResponse
    app.config.update(
        # Quart's limits count buffered bytes and cut slow transfers silently; blob and
        # manifest sizes are enforced while streaming instead.
        MAX_CONTENT_LENGTH=None,
        BODY_TIMEOUT=None,
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
        JSON_SORT_KEYS=False,
    )
    app.url_map.strict_slashes = False
    # Werkzeug would answer "/v2/a//b/..." with an HTML 308 to another repository's path;
    # unmerged, the registry's own path parser refuses the name (NAME_INVALID) instead.
    app.url_map.merge_slashes = False
    install_error_handlers(app)

    @app.after_request
    async def _api_version(response: RegistryResponse) -> RegistryResponse:
        # On every response, errors included: clients probe it to recognise a registry.
        response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
        return response

    return app
