"""The scheme a client used, behind a TLS-terminating proxy (a load balancer in front).

Such a proxy speaks plain HTTP to us and says ``X-Forwarded-Proto: https``. The scheme matters
where we write our own URL for the client: the Bearer challenge's realm
(``https://HOST/token``). The header is believed only from ``trusted_proxies`` (the same
setting that makes ``X-Forwarded-For`` count); anyone else could write it.
"""

from __future__ import annotations

from typing import Any

from core.web.client_address import Network, is_trusted

SCHEMES = frozenset({"http", "https"})


class ForwardedScheme:
    """ASGI middleware: ``scope["scheme"]`` from a trusted proxy's ``X-Forwarded-Proto``."""

    def __init__(self, app: Any, trusted: tuple[Network, ...]) -> None:
        self.app = app
        self._trusted = trusted

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self._trusted:
            client = scope.get("client")
            if client and is_trusted(client[0], self._trusted):
                proto = _header(scope, b"x-forwarded-proto")
                if proto is not None:
                    # The leftmost entry is what the first proxy saw from the client.
                    first = proto.split(",")[0].strip().lower()
                    if first in SCHEMES:
                        scope = {**scope, "scheme": first}
        await self.app(scope, receive, send)


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            text: str = value.decode("latin-1")
            return text
    return None
