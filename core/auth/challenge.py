"""``WWW-Authenticate`` challenges (RFC 7235 auth-params, Docker token-protocol scopes)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from core.auth.scopes import Access

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _quote(value: str) -> str:
    """A quoted-string: escape '\\' and '"', drop control characters (no header injection)."""
    value = _CONTROL.sub("", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bearer_challenge(
    realm: str, service: str, accesses: Sequence[Access], error: str | None = None
) -> str:
    """``Bearer realm="...",service="...",scope="repository:a/b:pull,push"``.

    Several scopes are space-joined inside one ``scope``; no accesses, no ``scope``.
    ``error`` (e.g. ``insufficient_scope``) is appended when given.
    """
    params = [f"realm={_quote(realm)}", f"service={_quote(service)}"]
    if accesses:
        params.append(f"scope={_quote(' '.join(str(access) for access in accesses))}")
    if error is not None:
        params.append(f"error={_quote(error)}")
    return "Bearer " + ",".join(params)


def basic_challenge(realm: str) -> str:
    return f"Basic realm={_quote(realm)}"
