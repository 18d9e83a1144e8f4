"""Rendering every failure as the OCI error envelope, with the right status and headers."""

from __future__ import annotations

import json
import logging

from quart import Quart, request
from werkzeug.exceptions import HTTPException

from core.errors import (
    AlreadyExists,
    BackendError,
    BadRequest,
    Conflict,
    InputError,
    NotFound,
    RegistryError,
    TooLarge,
    Unavailable,
    UnknownObject,
    Unsupported,
)
from core.web.response import RegistryResponse as Response

log = logging.getLogger("depot.web")

#: Seconds a client is asked to wait after a dependency failed.
BACKEND_RETRY_AFTER_SECONDS = 5

_HTTP_TO_REGISTRY: dict[int, type[RegistryError]] = {
    404: NotFound,
    405: Unsupported,
    413: TooLarge,
}


def render(error: RegistryError) -> Response:
    body = json.dumps(error.envelope()).encode()
    response = Response(body, status=error.status, content_type="application/json")
    # Quart's (body, status) tuple form would drop these (WWW-Authenticate, Content-Range).
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def as_registry_error(error: InputError | BackendError) -> RegistryError:
    """What a client is told about an error that was not translated on its way up."""
    if isinstance(error, UnknownObject):
        return NotFound(str(error)[:300])
    if isinstance(error, AlreadyExists):
        return Conflict(str(error)[:300])
    if isinstance(error, InputError):
        return BadRequest(str(error)[:300])
    # The text is about the server (a database path, a driver message): log it, never send it.
    return Unavailable(headers={"Retry-After": str(BACKEND_RETRY_AFTER_SECONDS)})


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(RegistryError)
    async def _registry_error(error: RegistryError) -> Response:
        return render(error)

    @app.errorhandler(InputError)
    async def _input_error(error: InputError) -> Response:
        return render(as_registry_error(error))

    @app.errorhandler(BackendError)
    async def _backend_error(error: BackendError) -> Response:
        log.warning(
            "%s on %s %s (request %s): %s",
            type(error).__name__,
            request.method,
            request.path,
            request.headers.get("X-Request-Id", "-"),
            error,
        )
        return render(as_registry_error(error))

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        kind = _HTTP_TO_REGISTRY.get(error.code or 500)
        if kind is None:
            response = render(RegistryError(error.description))
            response.status_code = error.code or 500
            return response
        return render(kind())

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        request_id = request.headers.get("X-Request-Id", "-")
        log.exception(
            "unhandled error on %s %s (request %s)",
            request.method,
            request.path,
            request_id,
            exc_info=error,
        )
        return render(RegistryError("internal server error"))
