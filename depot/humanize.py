"""Sizes, moments and durations as ``depot`` prints them. Pure: the caller passes ``now``."""

from __future__ import annotations

import datetime
from typing import Any, TypeGuard


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def human_size(value: Any) -> str:
    if not is_number(value):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_time(value: Any) -> str:
    """An ISO 8601 string as is (to the second); a Unix time as UTC ISO 8601."""
    if is_number(value):
        moment = datetime.datetime.fromtimestamp(float(value), tz=datetime.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str) and value:
        return value
    return "-"


def human_duration(seconds: float) -> str:
    """The largest whole unit: ``45s``, ``12m``, ``5h``, ``3d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def human_age(created_at: Any, now: float) -> str:
    """``5m ago``; ``-`` when the moment is not a Unix time."""
    if not is_number(created_at):
        return "-"
    return f"{human_duration(now - float(created_at))} ago"


def human_expiry(expires_at: Any, now: float) -> str:
    """``in 6d`` or ``expired 2h ago``; ``-`` when the moment is not a Unix time."""
    if not is_number(expires_at):
        return "-"
    left = float(expires_at) - now
    if left <= 0:
        return f"expired {human_duration(-left)} ago"
    return f"in {human_duration(left)}"
