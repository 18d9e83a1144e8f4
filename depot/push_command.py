"""``depot push [BUILD_ID | TAG] [--project ID] -t REGISTRY/REPO:TAG [-t ...]``.

Copies a saved build to other registries through the edge's relay: the edge reads the build
from its cache and pushes it to each target itself; this command sends the target
credentials (read as Docker reads them, :mod:`depot.docker_credentials`) and shows the
job's progress (:mod:`depot.relay_progress`). The image's bytes never pass through this
machine.

Exit status: 0 when every tag is set (each printed on stdout as ``REF@DIGEST``); 1 with the
target's own message when the relay failed (``denied: requested access to the resource is
denied``); 130 after Ctrl-C, which cancels the job on the edge first.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable
from typing import Any, TextIO

import httpx
import trio

from core.errors import InputError
from core.image_reference import parse_image_reference
from depot import api, credentials, docker_credentials, relay
from depot.api import ApiError
from depot.project import resolve_build
from depot.relay_progress import BarsView, JsonView, LinesView, QuietView, View

CANCEL_SECONDS = 5


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    push = commands.add_parser(
        "push", help="copy a build to other registries (the edge pushes it, not this machine)"
    )
    push.add_argument("build", nargs="?", metavar="BUILD_ID|TAG", help="or PROJECT:BUILD_ID")
    push.add_argument("--project", metavar="ID", help="default: $DEPOT_PROJECT_ID, depot.json")
    push.add_argument(
        "-t",
        "--tag",
        action="append",
        dest="targets",
        required=True,
        metavar="REGISTRY/REPO:TAG",
        help="where to push (repeat for more)",
    )
    shown = push.add_mutually_exclusive_group()
    shown.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    shown.add_argument("--json", action="store_true", help="print the job's events as JSON lines")
    connection_flags(push)
    push.set_defaults(run=cmd_push)


def cmd_push(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return _push(args, out, err)
    except (InputError, ApiError) as exc:
        print(f"depot: error: {exc}", file=err)
    except httpx.HTTPError as exc:
        print(f"depot: error: cannot reach the registry: {type(exc).__name__}: {exc}", file=err)
    return 1


def _push(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.build:
        raise InputError(
            "name the build to push: depot push BUILD_ID -t REGISTRY/REPO:TAG "
            "(depot builds list --project ID lists them)"
        )
    project, reference = resolve_build(args.build, args.project)
    targets = [parse_image_reference(target) for target in args.targets]
    edge = credentials.resolve(args.registry, args.token)
    registries = sorted({target.registry for target in targets})

    async def run() -> int:
        logins = {}
        for registry in registries:  # never printed: only whether some were found
            login = await docker_credentials.lookup(registry)
            if login is not None:
                logins[registry] = login
        body = relay.job_body(project, reference, [str(t) for t in targets], logins)
        async with api.open_client(edge.registry, edge.token) as client:
            return await _follow(client, body, args, out, err)

    return trio.run(run)


async def _follow(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
) -> int:
    state = relay.JobState()
    final: relay.Event | None = None
    interrupted = False
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        _view(args, out, err) as view,
    ):
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            final = await relay.run_job(client, body, view.event, state)
            nursery.cancel_scope.cancel()
    if interrupted:
        if state.job_id is not None:
            with trio.move_on_after(CANCEL_SECONDS):
                try:
                    await relay.cancel_job(client, state.job_id)
                except (ApiError, httpx.HTTPError):
                    pass  # the edge cancels it anyway once this connection is gone
        print("depot: interrupted: the relay job was cancelled", file=err)
        return 130
    assert final is not None
    return _finish(final, args, out, err)


def _view(args: argparse.Namespace, out: TextIO, err: TextIO) -> View:
    if args.json:
        return JsonView(out)
    if args.quiet:
        return QuietView()
    if err.isatty() and os.environ.get("TERM") != "dumb":
        return BarsView(err)
    return LinesView(err)


def _finish(final: relay.Event, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    kind = final.get("event")
    if kind == "done":
        if not args.json and not args.quiet:
            for target in args.targets:  # as the edge names them: registry/repository:tag
                print(f"{parse_image_reference(target)}@{final.get('digest')}", file=out)
        return 0
    if kind == "error":
        code = str(final.get("code") or "error").lower()
        where = f"pushing to {final['target']}: " if final.get("target") else ""
        print(f"depot: error: {where}{code}: {final.get('message')}", file=err)
        return 1
    print(f"depot: error: the relay job was cancelled: {final.get('reason')}", file=err)
    return 1
