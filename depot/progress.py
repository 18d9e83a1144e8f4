"""Per-layer progress of a pull, shown three ways:

- on a terminal: one rich progress bar per layer, with bytes, rate and time left;
- otherwise (CI logs, pipes): one line per layer when it is done, and the notes;
- ``--quiet`` / ``--json``: nothing.

:func:`apply_engine_event` turns the Docker engine's pull messages (``{"id", "status",
"progressDetail": {"current", "total"}}``) into calls of a :class:`Progress`; ``depot``'s own
transfers (``--output``) call it directly.
"""

from __future__ import annotations

from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichBars

from depot.humanize import human_size


class Progress(Protocol):
    def start(self, key: str, total: int | None) -> None: ...

    def update(self, key: str, completed: int | None, total: int | None, status: str) -> None: ...

    def finish(self, key: str, status: str) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


def short(key: str) -> str:
    """A layer's name on screen: 12 hex digits, as Docker shows them."""
    return key.removeprefix("sha256:")[:12]


class QuietProgress:
    def start(self, key: str, total: int | None) -> None:
        pass

    def update(self, key: str, completed: int | None, total: int | None, status: str) -> None:
        pass

    def finish(self, key: str, status: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """One line per layer, when it is done (``<id>: <status> (<size>)``), and the notes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._totals: dict[str, int | None] = {}
        self._done: set[str] = set()

    def start(self, key: str, total: int | None) -> None:
        self._totals.setdefault(key, total)

    def update(self, key: str, completed: int | None, total: int | None, status: str) -> None:
        if total:
            self._totals[key] = total

    def finish(self, key: str, status: str) -> None:
        if key in self._done:
            return
        self._done.add(key)
        total = self._totals.get(key)
        size = f" ({human_size(total)})" if total else ""
        print(f"{short(key)}: {status}{size}", file=self._stream, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def close(self) -> None:
        pass


class BarProgress:
    """rich bars on a terminal, one per layer."""

    def __init__(self, stream: TextIO) -> None:
        self._bars = RichBars(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=stream),
        )
        self._tasks: dict[str, TaskID] = {}
        self._totals: dict[str, int] = {}
        self._bars.start()

    def _task(self, key: str, total: int | None) -> TaskID:
        if total:
            self._totals[key] = total
        task = self._tasks.get(key)
        if task is None:
            task = self._bars.add_task(short(key), total=total, status="waiting")
            self._tasks[key] = task
        elif total:
            self._bars.update(task, total=total)
        return task

    def start(self, key: str, total: int | None) -> None:
        self._task(key, total)

    def update(self, key: str, completed: int | None, total: int | None, status: str) -> None:
        task = self._task(key, total)
        if completed is None and status == "download complete":
            completed = self._totals.get(key)
        if completed is None:
            self._bars.update(task, status=status)
        else:
            self._bars.update(task, completed=completed, status=status)

    def finish(self, key: str, status: str) -> None:
        task = self._task(key, None)
        total = self._totals.get(key)
        if total is None:
            self._bars.update(task, total=1, completed=1, status=status)
        else:
            self._bars.update(task, completed=total, status=status)

    def note(self, text: str) -> None:
        self._bars.console.print(text, highlight=False, markup=False)

    def close(self) -> None:
        self._bars.stop()


def choose(stream: TextIO, *, quiet: bool) -> Progress:
    if quiet:
        return QuietProgress()
    if stream.isatty():
        return BarProgress(stream)
    return LineProgress(stream)


#: Engine statuses that end a layer.
_DONE = {"Pull complete": "pull complete", "Already exists": "already exists"}


def apply_engine_event(event: dict[str, Any], progress: Progress) -> str | None:
    """Show one engine pull message; returns the manifest digest when the message names it
    (``Digest: sha256:…``)."""
    status = str(event.get("status") or "")
    key = event.get("id")
    if status.startswith("Digest: "):
        return status.removeprefix("Digest: ").strip()
    if not isinstance(key, str) or status.startswith("Pulling from "):
        if status:
            progress.note(status if not key else f"{key}: {status}")
        return None
    detail = event.get("progressDetail") or {}
    current = detail.get("current") if isinstance(detail, dict) else None
    total = detail.get("total") if isinstance(detail, dict) else None
    total = total if isinstance(total, int) and total > 0 else None
    if status in _DONE:
        progress.finish(key, _DONE[status])
    elif status == "Downloading" and isinstance(current, int):
        progress.update(key, current, total, "downloading")
    elif status in ("Verifying Checksum", "Download complete", "Extracting"):
        progress.update(key, None, None, status.lower())
    else:
        progress.start(key, total)
    return None
