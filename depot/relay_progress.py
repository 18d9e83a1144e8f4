"""Showing a relay job's events: progress bars on a terminal, lines otherwise, JSON, or quiet.

- :class:`BarsView` (stderr is a terminal): a rich progress bar per blob being copied, with
  bytes, rate and time left; a line for each blob skipped or mounted, manifest, tag and
  referrer above the bars.
- :class:`LinesView` (stderr is a file or pipe): one line per event, the byte counts of a
  blob in flight left out (its start and end are shown, with the rate).
- :class:`JsonView` (``--json``): every event as the edge sent it, one JSON object per line,
  on stdout.
- :class:`QuietView` (``--quiet``): nothing; errors are still printed by the command.
"""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any, Protocol, Self, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

Event = dict[str, Any]
#: Blobs smaller than this get no progress bar (a line once copied).
BAR_MIN_BYTES = 1024 * 1024


class View(Protocol):
    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def event(self, event: Event) -> None: ...


def human_bytes(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def short(digest: Any) -> str:
    text = str(digest)
    algorithm, _, encoded = text.partition(":")
    return f"{algorithm}:{encoded[:12]}" if encoded else text[:19]


def describe(event: Event) -> str | None:
    """One line for ``event``; None for those a line view leaves out (bytes in flight)."""
    kind = event.get("event")
    target = event.get("target", "")
    if kind == "accepted":
        return f"relay job {event.get('job')}: {event.get('source')} ({short(event.get('digest'))})"
    if kind == "plan":
        return (
            f"{event.get('blobs')} blobs ({human_bytes(event.get('bytes'))}), "
            f"{event.get('manifests')} manifests, {event.get('referrers')} referrers"
        )
    if kind == "blob":
        status = event.get("status")
        size = human_bytes(event.get("size"))
        if status == "mounted":
            return f"{target}: mounted {short(event.get('digest'))} from {event.get('source')}"
        if status in ("skipped", "started", "done"):
            verb = {"skipped": "exists  ", "started": "copying ", "done": "copied  "}[status]
            return f"{target}: {verb}{short(event.get('digest'))} {size}"
        return None
    if kind == "manifest":
        return f"{target}: manifest {short(event.get('digest'))}"
    if kind == "tag":
        return f"{target}: tagged {short(event.get('digest'))}"
    if kind == "referrer":
        what = event.get("artifact_type") or "referrer"
        return f"{target}: {what} {short(event.get('digest'))} ({event.get('via')})"
    if kind == "done":
        return (
            f"done in {event.get('seconds')} s: {event.get('blobs_copied')} blobs copied "
            f"({human_bytes(event.get('bytes_copied'))}), {event.get('blobs_skipped')} present, "
            f"{event.get('blobs_mounted')} mounted"
        )
    return None  # errors and cancellations are the command's to print


class _Plain:
    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class QuietView(_Plain):
    def event(self, event: Event) -> None:
        return None


class JsonView(_Plain):
    def __init__(self, out: TextIO) -> None:
        self._out = out

    def event(self, event: Event) -> None:
        print(json.dumps(event), file=self._out, flush=True)


class LinesView(_Plain):
    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._started: dict[tuple[str, str], float] = {}

    def event(self, event: Event) -> None:
        line = describe(event)
        if line is None:
            return
        key = (str(event.get("target")), str(event.get("digest")))
        if event.get("event") == "blob" and event.get("status") == "started":
            self._started[key] = time.monotonic()
        elif event.get("event") == "blob" and event.get("status") == "done":
            began = self._started.pop(key, None)
            size = event.get("size")
            if began is not None and isinstance(size, int):
                seconds = max(time.monotonic() - began, 1e-6)
                line += f" in {seconds:.1f} s ({human_bytes(size / seconds)}/s)"
        print(line, file=self._err, flush=True)


class BarsView:
    def __init__(self, err: TextIO) -> None:
        self._console = Console(file=err)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def event(self, event: Event) -> None:
        kind, status = event.get("event"), event.get("status")
        key = (str(event.get("target")), str(event.get("digest")))
        if kind == "blob" and status == "started":
            size = event.get("size")
            if isinstance(size, int) and size < BAR_MIN_BYTES:
                return  # a config or a tiny layer: one line when it is done
            description = f"{event.get('target')} {short(event.get('digest'))}"
            total = size if isinstance(size, int) else None
            self._tasks[key] = self._progress.add_task(description, total=total)
            return
        if kind == "bytes" and key in self._tasks:
            self._progress.update(self._tasks[key], completed=event.get("sent", 0))
            return
        if kind == "blob" and status == "done" and key in self._tasks:
            task = self._tasks.pop(key)
            self._progress.update(task, completed=event.get("size", 0))
            return
        line = describe(event)
        if line is not None and (kind != "blob" or status in ("skipped", "mounted", "done")):
            self._progress.console.print(line, markup=False, highlight=False)
