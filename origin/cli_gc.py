"""``depot-registry gc``: online garbage collection of an origin's data directory, by hand.

Safe while origins serve the same data (no read-only window): see ``origin/retention/gc.py``.
Settings load exactly as for ``depot-registry origin serve``; ``--grace`` defaults to
``gc_grace_seconds``. Prints what it deleted (with ``--dry-run``: what it would delete) and the
bytes freed; ``--json`` prints the report as one JSON document. Failures print one line to
stderr: bad settings or arguments exit 2, a failing database or storage exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from config.settings import OriginSettings
from config.units import parse_duration
from core.errors import BackendError, InputError
from origin.cli_tenancy import require_registry
from origin.retention.gc import GcReport, collect
from origin.server import Services, open_services

_PROG = "depot-registry"


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gc = commands.add_parser(
        "gc", help="delete manifests and blobs nothing live reaches (online, safe while serving)"
    )
    gc.add_argument("--data-dir", type=Path, help="the origin's data directory")
    gc.add_argument("--config", type=Path, help="TOML settings file")
    gc.add_argument("--dry-run", action="store_true", help="print what would go; delete nothing")
    gc.add_argument(
        "--grace",
        type=_duration,
        help="keep anything younger than this, e.g. 2h, 30m, 0 (default: gc_grace_seconds)",
    )
    gc.add_argument("--json", action="store_true", help="print the report as JSON")


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return seconds


def run(
    args: argparse.Namespace, load_settings: Callable[[argparse.Namespace], OriginSettings]
) -> int:
    """Run ``gc``; the exit status."""
    try:
        settings = load_settings(args)
    except InputError as exc:
        return _fail(exc, 2)
    try:
        require_registry(settings)
    except InputError as exc:
        return _fail(exc, 2)
    grace = settings.gc_grace_seconds if args.grace is None else args.grace
    try:
        report = trio.run(_collect, settings, grace, args.dry_run)
    except InputError as exc:
        return _fail(exc, 2)
    except (BackendError, OSError) as exc:
        return _fail(exc, 1)
    if args.json:
        print(json.dumps(report.as_json()), flush=True)
    else:
        print(describe(report), flush=True)
    return 0


async def _collect(settings: OriginSettings, grace: float, dry_run: bool) -> GcReport:
    async with open_services(settings) as services:
        return await collect_with_builds(
            services,
            now=time.time(),
            grace_seconds=grace,
            dry_run=dry_run,
            upload_timeout_seconds=settings.upload_timeout_seconds,
        )


async def collect_with_builds(
    services: Services,
    *,
    now: float,
    grace_seconds: float,
    dry_run: bool,
    upload_timeout_seconds: float | None = None,
) -> GcReport:
    """What the origin's periodic collection does: retire expired builds' tags (they are
    not roots), then collect. A dry run changes nothing and plans as if those tags were gone,
    so it reports what the real run would free."""
    if dry_run:
        retired, untagged = await services.builds.retirable()
    else:
        retired, untagged = await services.builds.retire_expired(), []
    report = await collect(
        services.registry,
        now=now,
        grace_seconds=grace_seconds,
        dry_run=dry_run,
        upload_timeout_seconds=upload_timeout_seconds,
        untagged=untagged,
    )
    return dataclasses.replace(report, builds_retired=retired)


def describe(report: GcReport) -> str:
    """The report as lines of text: one per deletion, then the totals."""
    verb = "would delete" if report.dry_run else "deleted"
    retire = "would retire" if report.dry_run else "retired"
    unlink = "would unlink" if report.dry_run else "unlinked"
    lines = []
    if report.builds_retired:
        lines.append(f"{retire} the tags of {report.builds_retired} expired or deleted builds")
    lines += [f"{verb} manifest {repository}@{digest}" for repository, digest in report.manifests]
    lines += [f"{unlink} blob {digest} from {repository}" for repository, digest in report.links]
    lines += [f"{verb} blob {digest} ({size} bytes)" for digest, size in report.blobs]
    uploads = "expired upload sessions" if report.dry_run else "abandoned upload sessions purged"
    freed = "would free" if report.dry_run else "freed"
    lines.append(
        f"{report.manifests_deleted} manifests, {report.links_removed} links, "
        f"{report.blobs_deleted} blobs; {freed} {report.bytes_freed} bytes "
        f"({_human(report.bytes_freed)}); {report.uploads} {uploads}"
        + ("" if report.dry_run else f"; {report.refused} refused on re-check")
    )
    if report.dry_run:
        lines.append("dry run: nothing was deleted")
    return "\n".join(lines)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _fail(exc: BaseException | str, status: int) -> int:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"{_PROG}: {message}", file=sys.stderr)
    return status
