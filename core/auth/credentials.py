"""Reading the ``Authorization`` header."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Credentials:
    scheme: str  # "basic" or "bearer" (lower case), or another scheme as sent
    username: str | None
    secret: str  # the Basic password or the bearer token


def parse_authorization(header: str | None) -> Credentials | None:
    """None when absent; a Basic header that does not decode yields ``secret=""``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme != "basic":
        return Credentials(scheme, None, value.strip())
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    # ValueError: non-ASCII text before decoding ("Basic \x80" as hypercorn decodes latin-1)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return Credentials("basic", None, "")
    username, sep, password = decoded.partition(":")
    return Credentials("basic", username, password if sep else "")
