"""Remembered ``/token`` answers, for logins while origin is unreachable.

The edge forwards ``/token`` to origin (origin authenticates and decides the scopes). Every
successful answer is remembered for the token's lifetime, under a hash of what was asked —
the credential, the host, the query (service, scopes) and any form body — never under the
credential itself. While origin cannot be reached, the same question is answered from
memory, with ``expires_in`` counting down, so a node that was not logged in yet can still
pull what the edge has cached. When origin answers, memory is never consulted: revocations
and new grants take effect at once.

What origin's event feed says makes memory forget (``edge/events/``): the answers whose
token was issued for a long-lived token since revoked (:meth:`TokenMemory.forget_parent`),
and those granting anything on a repository whose visibility changed
(:meth:`TokenMemory.forget_repository`). What a token says is read from its claims without
verifying them: only the edge's own memory is at stake, and origin signed what it remembers.

Pure bookkeeping: the caller says what time it is (POSIX seconds, the tokens' clock).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
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
    parent: str | None = None  # the long-lived token the remembered token was issued for
    repositories: frozenset[str] = frozenset()  # what its access claim names


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
        parent, repositories = _claims_of(token)
        self._entries[key] = _Remembered(document, now + expires_in, parent, repositories)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return True

    def forget_parent(self, parent: str) -> int:
        """Forget the answers for long-lived token ``parent`` (revoked); how many."""
        return self._forget(lambda entry: entry.parent == parent)

    def forget_repository(self, repository: str) -> int:
        """Forget the answers naming ``repository`` (its visibility changed); how many."""
        return self._forget(lambda entry: repository in entry.repositories)

    def clear(self) -> None:
        self._entries.clear()

    def _forget(self, matches: Callable[[_Remembered], bool]) -> int:
        doomed = [key for key, entry in self._entries.items() if matches(entry)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

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


def _claims_of(token: str) -> tuple[str | None, frozenset[str]]:
    """The ``parent`` claim and the repositories of the ``access`` claim of a JWT, read
    without verification; nothing for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        return None, frozenset()
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None, frozenset()
    if not isinstance(claims, dict):
        return None, frozenset()
    parent = claims.get("parent")
    access = claims.get("access")
    names = frozenset(
        entry["name"]
        for entry in (access if isinstance(access, list) else [])
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    )
    return (parent if isinstance(parent, str) else None), names
