"""Every use of diskcache's private API outside ``edge/cache/disk.py``, and the version check.

diskcache has no public "least recently used key" query, and its own cull takes victims ten at
a time (possibly the value just stored), so :func:`lru_victim` reads its index the way its
cull does: the ``Cache`` table's ``key``, ``raw`` and ``access_time`` columns through the
private ``Cache._sql``. ``edge/cache/disk.py`` subclasses its ``Disk`` (``store``,
``filename``, ``MODE_BINARY``, ``UNKNOWN``).

``pyproject.toml`` pins diskcache to the range these were checked against, this module
refuses to import under any other, and ``tests/unit/test_diskcache_fence.py`` has a test per
internal that fails, naming diskcache and the internal, when a release changes it.
"""

from __future__ import annotations

import diskcache

#: The diskcache releases (major, minor) the internals here were checked against.
TESTED = (5, 6)

# The least recently used entry other than ``keep`` (diskcache's own LRU order; a str key
# is stored as itself with raw = 1).
_LRU_VICTIM = "SELECT key FROM Cache WHERE NOT (key = ? AND raw = 1) ORDER BY access_time LIMIT 1"


def check_version(version: str) -> None:
    """Refuse a diskcache release other than the tested one (RuntimeError, naming it)."""
    parts = version.split(".")
    try:
        release = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        release = None
    if release != TESTED:
        raise RuntimeError(
            f"diskcache {version} is outside the tested {TESTED[0]}.{TESTED[1]}.x: "
            "edge/cache/diskcache_private.py and edge/cache/disk.py use its private schema "
            "and Disk internals (see tests/unit/test_diskcache_fence.py)"
        )


def lru_victim(cache: diskcache.Cache, keep: str) -> str | None:
    """The least recently used key other than ``keep``; None when there is none.

    Call inside ``cache.transact()`` so the key is still there when it is deleted.
    """
    rows = cache._sql(_LRU_VICTIM, (keep,)).fetchall()
    return str(rows[0][0]) if rows else None


check_version(diskcache.__version__)
