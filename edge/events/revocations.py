"""What the edge learned from origin's event feed about credentials and visibility, applied
to every bearer grant the edge's gate accepts (:class:`edge.auth.EdgeGate`).

- A long-lived token revoked (or expired) at origin: every grant naming it as its ``parent``
  is refused, however long the grant itself still has to live.
- A repository made private: a grant's access to it is dropped unless the grant reaches it as
  a member (its org, and its project when bound to one) or is an edge's. Such access could
  only have come from the repository having been public; origin issues none of it now. Made
  public again: nothing is dropped any more (access granted then is right again).

Entries are kept for ``keep_seconds`` (longer than any bearer token lives) and at most
``size`` of each; they are saved beside the follower's position so a restarted edge refuses
the same grants (:meth:`snapshot`, :meth:`restore`). Pure bookkeeping: callers pass the time.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from core.auth.tokens import Grant
from core.tenancy import org_of

MAX_ENTRIES = 100_000
#: Origin caps bearer tokens far below this (``token_ttl_seconds``, 5 minutes by default).
KEEP_SECONDS = 24 * 3600.0
_EDGE = "edge"


class Revocations:
    def __init__(self, *, size: int = MAX_ENTRIES, keep_seconds: float = KEEP_SECONDS) -> None:
        self._size = size
        self._keep = keep_seconds
        self._parents: OrderedDict[str, float] = OrderedDict()  # token id → when learned
        self._private: OrderedDict[str, float] = OrderedDict()  # repository → when learned

    def __len__(self) -> int:
        return len(self._parents) + len(self._private)

    # -- learning ------------------------------------------------------------------------

    def revoke(self, parent: str, now: float) -> None:
        _put(self._parents, parent, now, self._size)

    def made_private(self, repository: str, now: float) -> None:
        _put(self._private, repository, now, self._size)

    def made_public(self, repository: str) -> None:
        self._private.pop(repository, None)

    def expire(self, now: float) -> None:
        """Forget entries older than ``keep_seconds``: every grant they concern has expired."""
        for entries in (self._parents, self._private):
            while entries and next(iter(entries.values())) <= now - self._keep:
                entries.popitem(last=False)

    # -- applying ------------------------------------------------------------------------

    def refuses(self, grant: Grant) -> bool:
        """Whether ``grant`` was issued for a token revoked since."""
        return grant.parent is not None and grant.parent in self._parents

    def is_revoked(self, parent: str) -> bool:
        return parent in self._parents

    def is_private(self, repository: str) -> bool:
        return repository in self._private

    def restrict(self, grant: Grant) -> Grant:
        """``grant`` without its access to repositories made private that it does not reach
        as a member; the same object when nothing is dropped."""
        if not self._private:
            return grant
        kept = tuple(
            access
            for access in grant.access
            if access.type != "repository"
            or access.name not in self._private
            or _member(grant, access.name)
        )
        if len(kept) == len(grant.access):
            return grant
        return dataclasses.replace(grant, access=kept)

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"revoked": dict(self._parents), "private": dict(self._private)}

    def restore(self, document: Any) -> None:
        """Entries from :meth:`snapshot` (malformed ones ignored)."""
        if not isinstance(document, dict):
            return
        for name, entries in (("revoked", self._parents), ("private", self._private)):
            saved = document.get(name)
            if not isinstance(saved, dict):
                continue
            for key, when in sorted(saved.items(), key=lambda item: _number(item[1])):
                if isinstance(key, str) and key:
                    _put(entries, key, _number(when), self._size)


def _member(grant: Grant, repository: str) -> bool:
    """Whether ``grant`` reaches ``repository`` whatever its visibility (the rules of
    :mod:`core.auth.access` for principals)."""
    if grant.kind == _EDGE:
        return True
    org = org_of(repository)
    if "/" not in repository or org not in grant.orgs:
        return False
    return grant.project is None or repository == f"{org}/{grant.project}"


def _put(entries: OrderedDict[str, float], key: str, now: float, size: int) -> None:
    entries[key] = now
    entries.move_to_end(key)
    while len(entries) > size:
        entries.popitem(last=False)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
