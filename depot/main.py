"""``depot``: the user CLI (save builds, list and delete them, org usage, login).

::

    depot login REGISTRY [--token-stdin]
    depot save PATH --project ID [--save-tag NAME ...] [--metadata-file build.json]
    depot builds list --project ID [--json]
    depot builds delete --project ID BUILD_ID
    depot usage --org ORG [--json]
    depot upstreams add|list|remove --org ORG ...   (see depot/upstreams.py)

Every command but ``login`` takes ``--registry URL`` and ``--token TOKEN``; without them
``DEPOT_REGISTRY`` / ``DEPOT_TOKEN``, then the file ``depot login`` wrote, are used (see
:mod:`depot.credentials`). Results go to stdout, progress and errors to stderr;
exit status 0 on success, 1 on an error, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeGuard

import httpx
import trio

from core.client.registry import RegistryClient
from depot import api, credentials, push, upstreams
from depot.api import ApiError
from depot.credentials import CredentialsError
from depot.image_source import Blob, ImageSourceError, load_image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depot", description="Depot registry user CLI.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = commands.add_parser("login", help="save a token for a registry")
    login.add_argument("registry", metavar="REGISTRY", help="e.g. registry.example")
    login.add_argument(
        "--token-stdin", action="store_true", help="read the token from stdin (no prompt)"
    )
    login.set_defaults(run=cmd_login)

    save = commands.add_parser("save", help="save an image as a build of a project")
    save.add_argument(
        "path", type=Path, metavar="PATH", help="OCI layout, OCI archive or docker save tar"
    )
    save.add_argument("--project", required=True, metavar="ID")
    save.add_argument("--save-tag", action="append", default=[], metavar="NAME", dest="save_tags")
    save.add_argument("--metadata-file", type=Path, metavar="FILE")
    save.add_argument("--ref", metavar="NAME", help="the image to save when PATH holds several")
    save.add_argument("-v", "--verbose", action="store_true", help="report each blob on stderr")
    _connection_flags(save)
    save.set_defaults(run=cmd_save)

    builds = commands.add_parser("builds", help="list or delete builds")
    builds_commands = builds.add_subparsers(dest="builds_command", required=True, metavar="ACTION")
    listing = builds_commands.add_parser("list", help="builds of a project, newest first")
    listing.add_argument("--project", required=True, metavar="ID")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    _connection_flags(listing)
    listing.set_defaults(run=cmd_builds_list)
    delete = builds_commands.add_parser("delete", help="delete a build")
    delete.add_argument("--project", required=True, metavar="ID")
    delete.add_argument("build_id", metavar="BUILD_ID")
    _connection_flags(delete)
    delete.set_defaults(run=cmd_builds_delete)

    usage = commands.add_parser("usage", help="storage used by an org this month")
    usage.add_argument("--org", required=True, metavar="ORG")
    usage.add_argument("--json", action="store_true", help="print the API's JSON")
    _connection_flags(usage)
    usage.set_defaults(run=cmd_usage)
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
    if args.token_stdin:
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
    image = load_image(args.path, args.ref)
    if args.verbose:
        platforms = ", ".join(image.platforms()) or "single platform"
        print(
            f"{args.path}: {image.kind}, {image.root.media_type} {image.root.digest} "
            f"({platforms}), {len(image.blobs())} blobs",
            file=err,
        )

    def on_blob(blob: Blob, uploaded: bool) -> None:
        if args.verbose:
            print(f"{'uploaded' if uploaded else 'exists  '} {blob.digest} {blob.size}", file=err)

    async def body(client: httpx.AsyncClient, registry: RegistryClient) -> int:
        saved = await push.save_build(
            client, registry, image, args.project, args.save_tags, on_blob
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
        builds = await api.list_builds(client, args.project)
        if args.json:
            print(json.dumps({"builds": builds}, indent=2), file=out)
            return 0
        rows = [["BUILD ID", "TAGS", "PLATFORMS", "SIZE", "CREATED", "EXPIRES"]]
        for build in builds:
            rows.append(
                [
                    str(build.get("id", "")),
                    ",".join(str(t) for t in _save_tags(build)) or "-",
                    ",".join(str(p) for p in build.get("platforms") or []) or "-",
                    human_size(build.get("size")),
                    human_time(build.get("created_at")),
                    human_time(build.get("expires_at")),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(),
                file=out,
            )
        return 0

    return _with_client(args, body)


def cmd_builds_delete(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def body(client: httpx.AsyncClient) -> int:
        await api.delete_build(client, args.project, args.build_id)
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
        gb_hours = f"{byte_hours / 1e9:.3f} GB-hours" if _is_number(byte_hours) else "-"
        print(f"accrued this month:       {gb_hours}", file=out)
        cost_text = f"${cost:.2f}" if _is_number(cost) else "-"
        print(f"month-to-date cost (USD): {cost_text}", file=out)
        return 0

    return _with_client(args, body)


def _save_tags(build: dict[str, Any]) -> list[Any]:
    """The build's save-tags (its id, which ``tags`` lists too, is in the first column)."""
    tags = build.get("save_tags")
    if isinstance(tags, list):
        return tags
    return [t for t in build.get("tags") or [] if t != build.get("id")]


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def human_size(value: Any) -> str:
    if not _is_number(value):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_time(value: Any) -> str:
    """An ISO 8601 string as is (to the second); a Unix time as UTC ISO 8601."""
    if _is_number(value):
        moment = datetime.datetime.fromtimestamp(float(value), tz=datetime.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str) and value:
        return value
    return "-"


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
    except httpx.HTTPError as exc:
        print(f"depot: error: cannot reach the registry: {type(exc).__name__}: {exc}", file=err)
    except OSError as exc:
        print(f"depot: error: {exc}", file=err)
    except KeyboardInterrupt:
        print("depot: interrupted", file=err)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
