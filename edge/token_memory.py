"""Remembered ``/token`` answers, for logins while origin is unreachable.

The edge forwards ``/token`` to origin (origin authenticates and decides the scopes). Every
successful answer is remembered for the token's lifetime, under a hash of what was asked —
the credential, the host, the query (service, scopes) and any form body — never under the
credential itself. While origin cannot be reached, the same question is answered from
memory, with ``expires_in`` counting down, so a node that was not logged in yet can still
pull what the edge has cached. When origin answers, memory is never consulted: revocations
and new grants take effect at once.

Pure bookkeeping: the caller says what time it is (POSIX seconds, the tokens' clock).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_ENTRIES = 10_000
#: A token remembered must have at least this long to live, or it is not worth keeping.
MIN_LIFETIME_SECONDS = 5
#: The Docker token spec's default when an answer names no ``expires_in``.
DEFAULT_EXPIRES_IN_SECONDS = 60


@dataclass(frozen=True, slots=True)
class _Remembered:
    document: dict[str, Any]
    expires_at: float


def question_key(
    method: str, authorization: str | None, host: str, query: Iterable[tuple[str, str]], body: bytes
) -> str:
    """A digest of one ``/token`` question; equal questions, equal keys."""
    hasher = hashlib.sha256()
    for part in (method.upper(), authorization or "", host.lower()):
        hasher.update(part.encode("utf-8", "surrogateescape") + b"\0")
    for name, value in sorted(query):
        hasher.update(f"{name}={value}".encode("utf-8", "surrogateescape") + b"\0")
    hasher.update(body)
    return hasher.hexdigest()


class TokenMemory:
    def __init__(self, size: int = MAX_ENTRIES) -> None:
        self._size = size
        self._entries: OrderedDict[str, _Remembered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: str, body: bytes, now: float) -> bool:
        """Keep a successful answer until its token expires; False when it is not one."""
        try:
            document = json.loads(body)
        except ValueError:
            return False
        if not isinstance(document, dict):
            return False
        token = document.get("token") or document.get("access_token")
        expires_in = document.get("expires_in", DEFAULT_EXPIRES_IN_SECONDS)
        if not isinstance(token, str) or not token:
            return False
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            return False
        if not math.isfinite(expires_in) or expires_in < MIN_LIFETIME_SECONDS:
            return False
        self._entries[key] = _Remembered(document, now + expires_in)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return True

    def recall(self, key: str, now: float) -> bytes | None:
        """The remembered answer, ``expires_in`` set to what is left; None when there is
        none or its token has expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = int(entry.expires_at - now)
        if left < 1:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return json.dumps({**entry.document, "expires_in": left}).encode()
