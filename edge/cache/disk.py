"""A diskcache ``Disk`` that can adopt a finished file by rename instead of copying it.

``cache.set(key, Adopt(path, size))`` moves ``path`` (already written, verified and
fsynced by the caller) under a fresh name in the cache directory with ``os.rename`` and
records it as a binary file value, exactly as if diskcache had written it: ``get(read=True)``
opens it, eviction unlinks it. The file must be on the cache directory's filesystem (the
edge keeps its spool directory beside the cache directory for that). Every other value is
stored by diskcache's own ``Disk``.

Built on diskcache 5.6's ``Disk.store`` contract: return ``(size, mode, filename, value)``
where ``filename`` is relative to the cache directory and ``value`` is None for file values
(fenced: ``edge/cache/diskcache_private.py`` checks the version at import, and
``tests/unit/test_diskcache_fence.py`` checks each internal used here).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN

from edge.cache import diskcache_private  # noqa: F401  # refuses an untested diskcache

#: Attempts to create the value's directory and rename into it: another cache handle (a
#: thread, a process) removes emptied directories while evicting, as diskcache's own
#: ``Disk._write`` allows for.
_RENAME_ATTEMPTS = 10


@dataclass(frozen=True, slots=True)
class Adopt:
    """Marker value: move the file at ``path`` (of ``size`` bytes) into the cache."""

    path: Path
    size: int


class AdoptingDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache ships no types
    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[Any, ...]:
        if not isinstance(value, Adopt):
            return tuple(super().store(value, read, key=key))
        filename, full_path = self.filename(key, value)
        directory = os.path.dirname(full_path)
        for attempt in range(1, _RENAME_ATTEMPTS + 1):
            with contextlib.suppress(FileExistsError):
                os.makedirs(directory)
            try:
                os.rename(value.path, full_path)
            except FileNotFoundError:
                # Either the directory vanished under us (retry) or the source is gone.
                if attempt == _RENAME_ATTEMPTS or not os.path.exists(value.path):
                    raise
                continue
            return value.size, MODE_BINARY, filename, None
        raise AssertionError("unreachable")  # pragma: no cover
