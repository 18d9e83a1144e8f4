"""``depot upstreams``: the upstream registries an org mirrors through the edges with its own
credentials.

::

    depot upstreams add --org ORG NAME URL [--username USER --password-stdin]
    depot upstreams list --org ORG [--json]
    depot upstreams remove --org ORG NAME

``NAME`` is the registry's host as clients write it (``ghcr.io``); images are then pulled
through an edge as ``EDGE/ORG/NAME/REPOSITORY:TAG``. The password is read from stdin (never
from the command line, where other users of the machine could read it), sent once, stored
encrypted by the registry, and never shown again: ``list`` says only whether there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import httpx
import trio

from depot import api, credentials
from depot.api import ApiError, call, segment


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    upstreams = commands.add_parser("upstreams", help="registries an org mirrors through edges")
    actions = upstreams.add_subparsers(dest="upstreams_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="register an upstream registry")
    add.add_argument("--org", required=True, metavar="ORG")
    add.add_argument("name", metavar="NAME", help="the registry's host, e.g. ghcr.io")
    add.add_argument("url", metavar="URL", help="e.g. https://ghcr.io")
    add.add_argument("--username", metavar="USER", help="a user at the upstream")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the upstream password from stdin"
    )
    _connection_flags(add)
    add.set_defaults(run=cmd_add)

    listing = actions.add_parser("list", help="an org's upstream registries")
    listing.add_argument("--org", required=True, metavar="ORG")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    _connection_flags(listing)
    listing.set_defaults(run=cmd_list)

    remove = actions.add_parser("remove", help="stop mirroring an upstream registry")
    remove.add_argument("--org", required=True, metavar="ORG")
    remove.add_argument("name", metavar="NAME")
    _connection_flags(remove)
    remove.set_defaults(run=cmd_remove)


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="URL", help=f"default: ${credentials.REGISTRY_ENV}")
    parser.add_argument("--token", metavar="TOKEN", help=f"default: ${credentials.TOKEN_ENV}")


def _run(args: argparse.Namespace, body: Callable[[httpx.AsyncClient], Awaitable[int]]) -> int:
    creds = credentials.resolve(args.registry, args.token)

    async def run() -> int:
        async with api.open_client(creds.registry, creds.token) as client:
            return await body(client)

    return trio.run(run)


def _path(org: str, name: str | None = None) -> str:
    path = f"/api/v1/orgs/{segment(org)}/upstreams"
    return path if name is None else f"{path}/{segment(name)}"


def cmd_add(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    password = ""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ApiError("--password-stdin: no password on stdin")
    if bool(args.username) != bool(password):
        raise ApiError("give --username and --password-stdin together, or neither")
    document: dict[str, Any] = {"name": args.name, "url": args.url}
    if args.username:
        document.update(username=args.username, password=password)

    async def body(client: httpx.AsyncClient) -> int:
        added = await call(
            client,
            "POST",
            _path(args.org),
            f"adding upstream {args.name} to org {args.org}",
            expect=(201,),
            json_body=document,
        )
        print(f"added upstream {added.get('name', args.name)} ({added.get('url')})", file=out)
        return 0

    return _run(args, body)


def cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def body(client: httpx.AsyncClient) -> int:
        document = await call(
            client, "GET", _path(args.org), f"listing the upstreams of org {args.org}"
        )
        upstreams = document.get("upstreams") if isinstance(document, dict) else None
        if not isinstance(upstreams, list):
            raise ApiError("listing upstreams: the answer has no upstreams list")
        if args.json:
            print(json.dumps({"upstreams": upstreams}, indent=2), file=out)
            return 0
        rows = [["NAME", "URL", "USERNAME", "PASSWORD"]]
        for upstream in upstreams:
            if not isinstance(upstream, dict):
                continue
            rows.append(
                [
                    str(upstream.get("name", "")),
                    str(upstream.get("url", "")),
                    str(upstream.get("username") or "-"),
                    "set" if upstream.get("has_password") else "-",
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("  ".join(cells).rstrip(), file=out)
        return 0

    return _run(args, body)


def cmd_remove(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def body(client: httpx.AsyncClient) -> int:
        await call(
            client,
            "DELETE",
            _path(args.org, args.name),
            f"removing upstream {args.name} from org {args.org}",
            expect=(204,),
        )
        print(f"removed upstream {args.name}", file=out)
        return 0

    return _run(args, body)
