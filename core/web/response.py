"""The response class: no implied ``text/html`` on the registry's many empty bodies."""

from __future__ import annotations

from quart_trio.wrappers import TrioResponse


class RegistryResponse(TrioResponse):
    default_mimetype = None  # type: ignore[assignment]
