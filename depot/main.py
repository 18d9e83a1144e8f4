"""``depot``: the user CLI (save builds, pull them, list and delete them, orgs, projects,
pull tokens, org usage, login).

::

    depot login REGISTRY [--token-stdin]
    depot save PATH|docker://IMAGE [--project ID] [--save-tag NAME ...] [--metadata-file F]
    depot pull [BUILD_ID|TAG] [--project ID] [-t NAME:TAG ...] [--platform OS/ARCH]
               [--output oci:DIR|docker-archive:FILE] [--quiet] [--json]
    depot builds list [--project ID] [--json]
    depot builds delete [--project ID] BUILD_ID
    depot org list [--json]
    depot projects list [--org ORG] [--json]
    depot pull-token [--project ID | --org ORG] [--expires 1h]
    depot usage --org ORG [--json]
    depot push [BUILD_ID | TAG] [--project ID] -t REGISTRY/REPO:TAG [-t ...]
    depot --version
    depot upstreams add|list|remove --org ORG ...   (see depot/upstreams.py)

Without ``--project``, the project comes from ``$DEPOT_PROJECT_ID`` or a ``depot.json``
(``{"id": ...}``) in the current directory (:mod:`depot.project`).

Every command but ``login`` takes ``--registry URL`` and ``--token TOKEN``; without them
``DEPOT_REGISTRY`` / ``DEPOT_TOKEN``, then the file ``depot login`` wrote, are used (see
:mod:`depot.credentials`). Results go to stdout, progress and errors to stderr;
exit status 0 on success, 1 on an error, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

import httpx
import trio

from core.client.registry import RegistryClient
from core.errors import DepotError, InputError
from depot import api, builds, credentials, docker_source, orgs, pull, push, push_command, upstreams
from depot.api import CA_FILE_VARIABLE, ApiError
from depot.credentials import CredentialsError
from depot.humanize import human_size, human_time, is_number
from depot.image_source import Blob, ImageSourceError, SourceImage, load_image
from depot.project import find_project


def package_version() -> str:
    try:
        return version("depot-registry")
    except PackageNotFoundError:
        return "unknown"


PROJECT_HELP = "default: $DEPOT_PROJECT_ID, then depot.json here"


def project_of(args: argparse.Namespace) -> str:
    """``--project``, ``$DEPOT_PROJECT_ID`` or ``depot.json``; an error naming all three."""
    found = find_project(args.project)
    if found is None:
        raise InputError(
            "no project: pass --project ID, set DEPOT_PROJECT_ID, or add a depot.json "
            '({"id": "..."}) to the current directory'
        )
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depot", description="Depot registry user CLI.")
    parser.add_argument("--version", action="version", version=f"depot {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = commands.add_parser("login", help="save a token for a registry")
    login.add_argument("registry", metavar="REGISTRY", help="e.g. registry.example")
    login.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the token from stdin (no prompt; the default when stdin is not a terminal)",
    )
    login.set_defaults(run=cmd_login)

    save = commands.add_parser("save", help="save an image as a build of a project")
    save.add_argument(
        "path",
        metavar="PATH|docker://IMAGE",
        help="OCI layout, OCI archive, docker save tar, or an image of the local Docker engine "
        "(docker://IMAGE or docker-daemon:IMAGE)",
    )
    save.add_argument("--project", metavar="ID", help=PROJECT_HELP)
    save.add_argument("--save-tag", action="append", default=[], metavar="NAME", dest="save_tags")
    save.add_argument("--metadata-file", type=Path, metavar="FILE")
    save.add_argument("--ref", metavar="NAME", help="the image to save when PATH holds several")
    save.add_argument("-v", "--verbose", action="store_true", help="report each blob on stderr")
    _connection_flags(save)
    save.set_defaults(run=cmd_save)

    builds = commands.add_parser("builds", help="list or delete builds")
    builds_commands = builds.add_subparsers(dest="builds_command", required=True, metavar="ACTION")
    listing = builds_commands.add_parser("list", help="builds of a project, newest first")
    listing.add_argument("--project", metavar="ID", help=PROJECT_HELP)
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    _connection_flags(listing)
    listing.set_defaults(run=cmd_builds_list)
    delete = builds_commands.add_parser("delete", help="delete a build")
    delete.add_argument("--project", metavar="ID", help=PROJECT_HELP)
    delete.add_argument("build_id", metavar="BUILD_ID")
    _connection_flags(delete)
    delete.set_defaults(run=cmd_builds_delete)

    usage = commands.add_parser("usage", help="storage used by an org this month")
    usage.add_argument("--org", required=True, metavar="ORG")
    usage.add_argument("--json", action="store_true", help="print the API's JSON")
    _connection_flags(usage)
    usage.set_defaults(run=cmd_usage)

    push_command.add_parser(commands, _connection_flags)
    pull.add_parser(commands)
    orgs.add_parsers(commands, _connection_flags)
    upstreams.register(commands)
    return parser


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="URL", help=f"default: ${credentials.REGISTRY_ENV}")
    parser.add_argument("--token", metavar="TOKEN", help=f"default: ${credentials.TOKEN_ENV}")


def _with_client(
    args: argparse.Namespace, body: Callable[[httpx.AsyncClient], Awaitable[int]]
) -> int:
    creds = credentials.resolve(args.registry, args.token)

    async def run() -> int:
        async with api.open_client(creds.registry, creds.token) as client:
            return await body(client)

    return trio.run(run)


def _with_clients(
    args: argparse.Namespace,
    body: Callable[[httpx.AsyncClient, RegistryClient], Awaitable[int]],
) -> int:
    """Run ``body`` with the ``/api/v1`` client and the ``/v2`` registry client."""
    creds = credentials.resolve(args.registry, args.token)

    async def run() -> int:
        async with (
            api.open_client(creds.registry, creds.token) as client,
            api.open_registry(creds.registry, creds.token) as registry,
        ):
            return await body(client, registry)

    return trio.run(run)


def cmd_login(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    registry = credentials.normalise_registry(args.registry)
    if args.token_stdin or not sys.stdin.isatty():
        token = sys.stdin.readline().strip()
    else:
        token = getpass.getpass(f"Token for {registry}: ").strip()
    if not token:
        raise CredentialsError("no token given")

    async def check() -> None:
        async with api.open_registry(registry, token) as client:
            await api.check_login(client)

    trio.run(check)
    path = credentials.credentials_path()
    credentials.save_token(registry, token, path)
    print(f"Login succeeded: {registry} (token saved in {path})", file=out)
    return 0


def cmd_save(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    name = docker_source.engine_image(args.path)
    if name is None:
        return _save(args, load_image(Path(args.path), args.ref), args.path, out, err)
    with tempfile.TemporaryDirectory(prefix="depot-save-") as directory:
        exported = docker_source.export(name, Path(directory))
        return _save(args, load_image(exported, args.ref), args.path, out, err)


def _save(
    args: argparse.Namespace, image: SourceImage, source: str, out: TextIO, err: TextIO
) -> int:
    if args.verbose:
        platforms = ", ".join(image.platforms()) or "single platform"
        print(
            f"{source}: {image.kind}, {image.root.media_type} {image.root.digest} "
            f"({platforms}), {len(image.blobs())} blobs",
            file=err,
        )

    def on_blob(blob: Blob, uploaded: bool) -> None:
        if args.verbose:
            print(f"{'uploaded' if uploaded else 'exists  '} {blob.digest} {blob.size}", file=err)

    async def body(client: httpx.AsyncClient, registry: RegistryClient) -> int:
        saved = await push.save_build(
            client, registry, image, project_of(args), args.save_tags, on_blob
        )
        stats = saved.stats
        if args.verbose:
            print(
                f"uploaded {stats.uploaded} blobs, skipped {stats.skipped} "
                f"({stats.uploaded_bytes} bytes sent, {stats.manifests} manifests)",
                file=err,
            )
        if args.metadata_file is not None:
            push.write_metadata(args.metadata_file, saved.build_id, saved.project_id)
        print(saved.build_id, file=out)
        return 0

    return _with_clients(args, body)


def cmd_builds_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def body(client: httpx.AsyncClient) -> int:
        found = await api.list_builds(client, project_of(args))
        if args.json:
            print(json.dumps({"builds": found}, indent=2), file=out)
            return 0
        rows = [["BUILD ID", "STATE", "TAGS", "PLATFORMS", "SIZE", "CREATED", "EXPIRES"]]
        for build in found:
            expired = builds.is_expired(build)
            rows.append(
                [
                    str(build.get("id", "")),
                    "EXPIRED" if expired else str(build.get("state") or "-"),
                    ",".join(str(t) for t in _save_tags(build)) or "-",
                    ",".join(str(p) for p in build.get("platforms") or []) or "-",
                    human_size(build.get("size")),
                    human_time(build.get("created_at")),
                    _expiry(build),
                ]
            )
        for line in builds.table(rows):
            print(line, file=out)
        return 0

    return _with_client(args, body)


def cmd_builds_delete(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def body(client: httpx.AsyncClient) -> int:
        await api.delete_build(client, project_of(args), args.build_id)
        print(f"deleted build {args.build_id}", file=out)
        return 0

    return _with_client(args, body)


def cmd_usage(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def body(client: httpx.AsyncClient) -> int:
        usage = await api.org_usage(client, args.org)
        if args.json:
            print(json.dumps(usage, indent=2), file=out)
            return 0
        stored = usage.get("stored_bytes")
        byte_hours = usage.get("byte_hours")
        cost = usage.get("month_to_date_cost_usd")
        print(f"org:                      {usage.get('org', args.org)}", file=out)
        print(f"stored:                   {human_size(stored)} ({stored} bytes)", file=out)
        gb_hours = f"{byte_hours / 1e9:.3f} GB-hours" if is_number(byte_hours) else "-"
        print(f"accrued this month:       {gb_hours}", file=out)
        cost_text = f"${cost:.2f}" if is_number(cost) else "-"
        print(f"month-to-date cost (USD): {cost_text}", file=out)
        return 0

    return _with_client(args, body)


def _save_tags(build: dict[str, Any]) -> list[Any]:
    """The build's save-tags (its id, which ``tags`` lists too, is in the first column)."""
    tags = build.get("save_tags")
    if isinstance(tags, list):
        return tags
    return [t for t in build.get("tags") or [] if t != build.get("id")]


def _expiry(build: dict[str, Any]) -> str:
    """When the build expires, marked when the registry says it has (its clock decides)."""
    moment = human_time(build.get("expires_at"))
    return f"{moment} (expired)" if builds.is_expired(build) else moment


def unreachable(exc: BaseException) -> str:
    """Why the registry could not be reached, in words a person can act on."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"its TLS certificate is not trusted ({cause.verify_message}); if a private CA "
                f"signed it, set {CA_FILE_VARIABLE} to that CA's certificate (PEM)"
            )
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause}); is it a plain-HTTP registry (http://)?"
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {exc}"


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args, out, err)
        return result
    except (CredentialsError, ImageSourceError, ApiError) as exc:
        print(f"depot: error: {exc}", file=err)
    except DepotError as exc:
        print(f"depot: error: {exc}", file=err)
    except httpx.HTTPError as exc:
        print(f"depot: error: cannot reach the registry: {unreachable(exc)}", file=err)
    except OSError as exc:
        print(f"depot: error: {exc}", file=err)
    except KeyboardInterrupt:
        print("depot: interrupted", file=err)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
