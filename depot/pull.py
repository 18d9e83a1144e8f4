"""``depot pull [BUILD_ID | TAG] [--project ID] [-t NAME:TAG ...] [--platform OS/ARCH]``.

The build is resolved through the management API (:mod:`depot.builds`); with no build named,
an interactive picker on a terminal (:mod:`depot.picker`), otherwise an error listing the
newest builds. Then the image goes, in this order of preference:

1. ``--output oci:DIR[:REF]`` / ``docker-archive:FILE``: written by ``depot`` itself through the
   registry client, every digest verified (:mod:`depot.local_output`);
2. the local Docker engine (``DOCKER_HOST`` or the default socket): the engine pulls
   ``<registry-host>/<project-id>:<build-id>`` through the registry ``depot`` is logged in to
   (the edge), with the CLI's token in ``X-Registry-Auth``; then tags it with every ``-t``
   name and drops the registry name (:mod:`depot.engine`);
3. podman, when no Docker engine answers (:mod:`depot.podman`).

Local names: every ``-t``; by default ``<project-id>:<tag>``, where the tag is what the build
was named by — its save-tag when pulled by save-tag, else its build id (so ``depot pull main``
gives ``<project-id>:main``, and ``depot pull <build-id>`` gives ``<project-id>:<build-id>``).

A multi-platform build gives the local platform's image unless ``--platform``. Progress:
per-layer bars on a terminal, a line per layer otherwise, nothing with ``--quiet``; the
result on stdout (the local names, one per line), or one JSON document with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TextIO

import trio

from core.errors import InputError, RegistryError
from core.reference import RepositoryName, parse_repository_name
from depot import api, builds, credentials, engine, picker, platforms, podman
from depot.builds import ResolvedBuild
from depot.credentials import Credentials
from depot.engine import DockerEngine, EngineUnreachable
from depot.local_output import OutputTarget, parse_output, write_output
from depot.progress import Progress, apply_engine_event, choose
from depot.project import find_project


def add_parser(commands: Any) -> None:
    pull = commands.add_parser(
        "pull",
        help="pull a build into the local Docker engine (or podman, or a file)",
        description=(
            "Pull a build of a project into the local Docker engine (podman when no engine "
            "answers), or write it to disk with --output. With no build named, pick one "
            "interactively on a terminal."
        ),
    )
    pull.add_argument(
        "reference",
        nargs="?",
        metavar="BUILD_ID|TAG",
        help="a build id, a save-tag (its newest build) or PROJECT_ID:BUILD_ID",
    )
    pull.add_argument("--project", metavar="ID", help="default: $DEPOT_PROJECT_ID, depot.json")
    pull.add_argument(
        "-t",
        "--tag",
        action="append",
        default=[],
        dest="names",
        metavar="NAME:TAG",
        help="local name (repeatable); default: PROJECT_ID:<save-tag or build id>",
    )
    pull.add_argument("--platform", metavar="OS/ARCH", help="default: this machine's platform")
    pull.add_argument(
        "--output",
        metavar="oci:DIR[:REF]|docker-archive:FILE",
        help="write the image to disk instead of loading it into an engine",
    )
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    pull.add_argument("--json", action="store_true", help="print the result as JSON")
    pull.add_argument("--registry", metavar="URL", help=f"default: ${credentials.REGISTRY_ENV}")
    pull.add_argument("--token", metavar="TOKEN", help=f"default: ${credentials.TOKEN_ENV}")
    pull.set_defaults(run=cmd_pull)


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def cmd_pull(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    creds = credentials.resolve(args.registry, args.token)
    if args.platform:
        platforms.parse_platform(args.platform)
    target = parse_output(args.output) if args.output else None
    for name in args.names:
        engine.split_name(name)
    project = find_project(args.project)
    reference: str | None = args.reference
    if reference is not None:
        project, reference = builds.split_reference(reference, project)
    if project is None:
        raise InputError(
            "no project: pass --project ID, set DEPOT_PROJECT_ID, add a depot.json "
            '({"id": "..."}) here, or name the build as PROJECT_ID:BUILD_ID'
        )
    if reference is None:
        reference = _pick(creds, project, allow_picker=interactive() and not args.json)
    progress = choose(err, quiet=args.quiet or args.json)
    try:
        result = trio.run(_pull, creds, project, reference, args, target, progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        for name in result["names"]:
            print(name, file=out)
        if not args.quiet:
            print(
                f"pulled build {result['build_id']} of project {project} "
                f"({result['digest']}) into {result['loaded_into']}",
                file=err,
            )
    return 0


def _pick(creds: Credentials, project: str, *, allow_picker: bool) -> str:
    async def listing() -> list[dict[str, Any]]:
        async with api.open_client(creds.registry, creds.token) as client:
            return await api.list_builds(client, project)

    found = trio.run(listing)
    if not allow_picker:
        raise builds.BuildNotFound(
            f"no build named, and no terminal to pick one on.\n{builds.describe_choices(found)}"
        )
    usable = [b for b in found if not builds.is_expired(b) and b.get("digest")]
    if not usable:
        raise builds.BuildNotFound(f"project {project} has no build to pull: save one first")
    now = time.time()
    choices = [picker.Choice(str(b["id"]), tuple(builds.row(b, now))) for b in usable]
    return picker.pick(choices, builds.ROW_HEADER, f"Builds of {project}")


@dataclass(frozen=True)
class _Loaded:
    into: str
    config_digest: str
    platform: str | None


async def _pull(
    creds: Credentials,
    project: str,
    reference: str,
    args: argparse.Namespace,
    target: OutputTarget | None,
    progress: Progress,
) -> dict[str, Any]:
    async with api.open_client(creds.registry, creds.token) as client:
        resolved = await builds.resolve(client, project, reference)
    names: list[str] = list(args.names) or [f"{project}:{resolved.tag}"]
    if target is not None:
        loaded = await _to_output(creds, resolved, target, names, args.platform, progress)
    else:
        quiet = args.quiet or args.json
        loaded = await _to_engine(creds, resolved, names, args.platform, quiet, progress)
    return {
        "build_id": resolved.id,
        "project": resolved.project,
        "digest": resolved.document.get("digest"),
        "config_digest": loaded.config_digest,
        "platform": loaded.platform,
        "names": names,
        "loaded_into": loaded.into,
    }


async def _to_output(
    creds: Credentials,
    resolved: ResolvedBuild,
    target: OutputTarget,
    names: list[str],
    platform: str | None,
    progress: Progress,
) -> _Loaded:
    repository = _repository(resolved)
    async with api.open_registry(creds.registry, creds.token) as registry:
        written = await write_output(
            registry,
            repository,
            str(resolved.document["digest"]),
            target,
            names,
            platform,
            progress,
        )
    return _Loaded(str(target), written.config_digest, written.platform)


def _repository(resolved: ResolvedBuild) -> RepositoryName:
    try:
        return parse_repository_name(resolved.project)
    except RegistryError as exc:
        raise api.registry_error(exc, f"using project {resolved.project}") from exc


def registry_host(creds: Credentials) -> str:
    """``host[:port]`` of the registry, as engines name images on it."""
    return creds.registry.partition("://")[2]


async def _to_engine(
    creds: Credentials,
    resolved: ResolvedBuild,
    names: list[str],
    platform: str | None,
    quiet: bool,
    progress: Progress,
) -> _Loaded:
    host = registry_host(creds)
    image = f"{host}/{resolved.project}"
    pulled = f"{image}:{resolved.id}"
    async with DockerEngine.open(os.environ) as docker:
        try:
            await docker.ping()
        except EngineUnreachable as unreachable:
            program = podman.find_podman()
            if program is None:
                raise EngineUnreachable(
                    f"{unreachable}, and podman is not installed: start Docker, set "
                    "DOCKER_HOST, or write the image to disk with --output"
                ) from unreachable
            progress.note(f"{unreachable}: pulling with podman")
            return await _to_podman(program, creds, pulled, names, platform, quiet)
        auth = engine.registry_auth("x-token", creds.token, host)
        async with aclosing(docker.pull(image, resolved.id, auth, platform)) as events:
            async for event in events:
                apply_engine_event(event, progress)
        inspected = await docker.inspect(pulled)
        for name in names:
            await docker.tag(pulled, name)
        if pulled not in names:
            await docker.untag(pulled)
    found = "/".join(
        str(inspected[k]) for k in ("Os", "Architecture", "Variant") if inspected.get(k)
    )
    return _Loaded("docker", str(inspected.get("Id")), found or None)


async def _to_podman(
    program: str,
    creds: Credentials,
    pulled: str,
    names: list[str],
    platform: str | None,
    quiet: bool,
) -> _Loaded:
    image_id = await podman.pull(
        program,
        pulled,
        server=registry_host(creds),
        token=creds.token,
        plain_http=creds.registry.startswith("http://"),
        platform=platform,
        quiet=quiet,
    )
    await podman.tag_all(program, image_id, names)
    if pulled not in names:
        await podman.run(program, "untag", image_id, pulled)
    inspected = json.loads(await podman.run(program, "image", "inspect", image_id))
    details = inspected[0] if isinstance(inspected, list) and inspected else {}
    found = "/".join(str(details[k]) for k in ("Os", "Architecture") if details.get(k))
    image = str(details.get("Id") or image_id)
    config = image if image.startswith("sha256:") else f"sha256:{image}"
    return _Loaded("podman", config, found or None)
