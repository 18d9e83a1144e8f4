"""Where the edge's event follower is in origin's log, kept across restarts: the last
sequence number it acted on and what it learned about credentials and visibility
(:class:`~edge.events.revocations.Revocations`), in ``<cache dir>/events/state.json``
(outside the diskcache directories, whose recovery deletes files they do not know).

Written atomically (a temporary file renamed over the old one) after each batch the follower
acted on: a restarted edge resumes after the last batch it finished, so it may act on some
events twice (all idempotent) and misses none. A missing or unreadable file means no
position: the follower starts from origin's head and revalidates everything it holds.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("depot.edge.events")

STATE_FILE = "state.json"


@dataclass
class Position:
    last: int | None
    revocations: dict[str, Any]


def state_path(cache_dir: Path) -> Path:
    return cache_dir / "events" / STATE_FILE


def load_position(path: Path) -> Position:
    """The saved position; none (``last=None``) when there is no usable file."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return Position(None, {})
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable event position %s: %s", path, exc)
        return Position(None, {})
    last = document.get("last") if isinstance(document, dict) else None
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        last = None
    revocations = document.get("revocations") if isinstance(document, dict) else None
    return Position(last, revocations if isinstance(revocations, dict) else {})


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


async def save_position(path: Path, position: Position) -> None:
    text = json.dumps({"last": position.last, "revocations": position.revocations})
    await trio.to_thread.run_sync(_write, path, text)
