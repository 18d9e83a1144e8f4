"""``depot org list``, ``depot projects list`` and ``depot pull-token``.

An org's id is DNS-label safe (``org`` + 16 of ``[a-z0-9]`` for orgs created now) and works
as the registry subdomain, as its name (slug) does: ``<id>.<base domain>``.

``depot pull-token`` creates a pull token (pull only; bound to the project when there is one)
that expires (default: in an hour), and prints the ``kubectl create secret
docker-registry`` line that makes it a Kubernetes image pull secret. Creating tokens needs an
org (or user) token; the new token's secret is shown once, here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from typing import Any, TextIO

import httpx
import trio

from config.units import parse_duration
from core.errors import InputError
from depot import api, credentials
from depot.builds import table
from depot.humanize import human_time
from depot.project import find_project

DEFAULT_EXPIRES = "1h"
SECRET_NAME = "depot-pull"


def add_parsers(commands: Any, connection_flags: Any) -> None:
    org = commands.add_parser("org", help="organizations").add_subparsers(
        dest="org_command", required=True, metavar="ACTION"
    )
    listing = org.add_parser("list", help="the organizations the token reaches (id, name)")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    connection_flags(listing)
    listing.set_defaults(run=cmd_org_list)

    projects = commands.add_parser("projects", help="projects").add_subparsers(
        dest="projects_command", required=True, metavar="ACTION"
    )
    plist = projects.add_parser("list", help="projects of one org, or of every org reached")
    plist.add_argument("--org", metavar="ORG", help="org name or id (default: every org)")
    plist.add_argument("--json", action="store_true", help="print JSON")
    connection_flags(plist)
    plist.set_defaults(run=cmd_projects_list)

    token = commands.add_parser(
        "pull-token",
        help="a short-lived pull token, and the kubectl line for an image pull secret",
    )
    token.add_argument("--project", metavar="ID", help="default: $DEPOT_PROJECT_ID, depot.json")
    token.add_argument("--org", metavar="ORG", help="an org-wide token (when no project)")
    token.add_argument(
        "--expires",
        default=DEFAULT_EXPIRES,
        metavar="DURATION",
        help=f"lifetime, e.g. 30m, 12h, 7d (default {DEFAULT_EXPIRES})",
    )
    token.add_argument("--secret-name", default=SECRET_NAME, help="the Kubernetes secret's name")
    token.add_argument("--json", action="store_true", help="print JSON")
    connection_flags(token)
    token.set_defaults(run=cmd_pull_token)


def _run(args: argparse.Namespace, body: Any) -> int:
    creds = credentials.resolve(args.registry, args.token)

    async def run() -> int:
        async with api.open_client(creds.registry, creds.token) as client:
            result: int = await body(client, creds)
            return result

    return trio.run(run)


def cmd_org_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def body(client: httpx.AsyncClient, creds: credentials.Credentials) -> int:
        orgs = await api.list_orgs(client)
        if args.json:
            print(json.dumps({"orgs": orgs}, indent=2), file=out)
            return 0
        rows = [["ID", "NAME"], *([str(o.get("id")), str(o.get("name"))] for o in orgs)]
        for line in table(rows):
            print(line, file=out)
        return 0

    return _run(args, body)


def cmd_projects_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def body(client: httpx.AsyncClient, creds: credentials.Credentials) -> int:
        if args.org:
            orgs = [{"id": args.org, "name": args.org}]
        else:
            orgs = await api.list_orgs(client)
        found: list[dict[str, Any]] = []
        for org in orgs:
            for project in await api.list_projects(client, str(org.get("id"))):
                found.append({**project, "org": org.get("name")})
        if args.json:
            print(json.dumps({"projects": found}, indent=2), file=out)
            return 0
        rows = [["ID", "NAME", "ORG"]]
        rows += [[str(p.get("id")), str(p.get("name")), str(p.get("org"))] for p in found]
        for line in table(rows):
            print(line, file=out)
        return 0

    return _run(args, body)


def kubectl_line(secret: str, server: str, token: str) -> str:
    return " ".join(
        [
            "kubectl create secret docker-registry",
            shlex.quote(secret),
            f"--docker-server={shlex.quote(server)}",
            "--docker-username=x-token",
            f"--docker-password={shlex.quote(token)}",
        ]
    )


def cmd_pull_token(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        lifetime = parse_duration(args.expires)
    except ValueError as exc:
        raise InputError(f"--expires: {exc}") from exc
    if lifetime <= 0:
        raise InputError("--expires must be positive")
    project = find_project(args.project) if not args.org else args.project
    if project is None and not args.org:
        raise InputError(
            "no project: pass --project ID (or set DEPOT_PROJECT_ID, or add a depot.json), "
            "or --org ORG for an org-wide pull token"
        )

    async def body(client: httpx.AsyncClient, creds: credentials.Credentials) -> int:
        org = args.org
        if project is not None:
            org = str((await api.get_project(client, project))["org_id"])
        created = await api.create_token(
            client,
            org,
            "pull",
            project=project,
            expires_in_seconds=lifetime,
            description=f"depot pull-token ({project or 'org-wide'})",
        )
        server = creds.registry.partition("://")[2]
        line = kubectl_line(args.secret_name, server, created["token"])
        expires = created.get("expires_at") or time.time() + lifetime
        if args.json:
            document = {
                "token": created["token"],
                "token_id": created.get("token_id"),
                "project_id": project,
                "org_id": created.get("org_id"),
                "expires_at": expires,
                "server": server,
                "username": "x-token",
                "kubectl": line,
            }
            print(json.dumps(document, indent=2), file=out)
            return 0
        scope = f"project {project}" if project else f"org {org}"
        print(
            f"pull token {created.get('token_id')} for {scope}, valid until "
            f"{human_time(expires)}; make it an image pull secret with:",
            file=err,
        )
        print(line, file=out)
        return 0

    return _run(args, body)
