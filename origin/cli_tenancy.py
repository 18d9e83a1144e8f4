"""``depot-registry org|project|user|token|trust``: tenancy administration on the origin's
database.

Works on the database the origin serves from (``registry.db`` in the data directory, or
``database_url`` from the config file or ``DEPOT_ORIGIN_DATABASE_URL``), with settings loaded
exactly as ``depot-registry origin serve`` loads them; a running origin sees changes at once.

A token's secret is printed once, by the command that creates it, and nowhere else. Failures
print one line to stderr: a refusal (bad input, an unknown or taken name) exits 2, a database
failure (unreachable, locked past the busy timeout, full) exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from config.settings import OriginSettings
from config.units import parse_duration
from core.auth.principal import ALL_ACTIONS
from core.errors import BackendError, InputError, UnknownObject
from origin.auth.issuer_url import check_issuer
from origin.auth.records import TokenRecord, TrustRecord
from origin.auth.store import TenancyStore
from origin.auth.token_format import KINDS, parse_token
from origin.server import REGISTRY_FILE, open_database

COMPONENTS = frozenset({"org", "project", "user", "token", "trust"})
_PROG = "depot-registry"

Command = Callable[[TenancyStore, argparse.Namespace, float], Awaitable[None]]


class _Refused(UnknownObject):
    """The command cannot do what was asked (an unknown org, nothing to revoke)."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the tenancy commands on the top-level subparsers of ``depot-registry``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="the origin's data directory")
    common.add_argument("--config", type=Path, help="TOML settings file")
    common.add_argument("--json", action="store_true", help="print JSON")

    def command(group: Any, name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help)
        parser.set_defaults(tenancy_handler=handler)
        return parser

    org = commands.add_parser("org", help="organizations").add_subparsers(
        dest="command", required=True
    )
    org_create = command(org, "create", _org_create, "create an org and its first org token")
    org_create.add_argument("name", help="the org's slug: a-z, 0-9 and '-'; never changes")
    org_create.add_argument(
        "--init",
        action="store_true",
        help="create the registry's database in --data-dir if it holds none yet "
        "(otherwise a data dir without one is refused: a typo would make a second registry)",
    )
    command(org, "list", _org_list, "list orgs")

    project = commands.add_parser("project", help="projects").add_subparsers(
        dest="command", required=True
    )
    project_create = command(project, "create", _project_create, "create a project")
    project_create.add_argument("--org", required=True, help="org slug")
    project_create.add_argument("name")
    project_list = command(project, "list", _project_list, "list an org's projects")
    project_list.add_argument("--org", required=True, help="org slug")

    user = commands.add_parser("user", help="users").add_subparsers(dest="command", required=True)
    user_create = command(user, "create", _user_create, "create a user")
    user_create.add_argument("name")
    user_create.add_argument(
        "--org", action="append", default=[], help="make the user a member (repeatable)"
    )

    token = commands.add_parser("token", help="long-lived tokens").add_subparsers(
        dest="command", required=True
    )
    token_create = command(token, "create", _token_create, "create a token (printed once)")
    token_create.add_argument(
        "--kind",
        required=True,
        choices=sorted(KINDS),
        help="org: push and pull in --org; pull: read-only in --org or --project; project: "
        "one --project's repository; user: the orgs --user is a member of; edge: an edge's "
        "credential at origin",
    )
    token_create.add_argument("--org", help="org slug (org and pull tokens)")
    token_create.add_argument("--project", help="project id (project and pull tokens)")
    token_create.add_argument("--user", help="user name (user tokens)")
    token_create.add_argument("--expires", help="lifetime, e.g. 30d or 12h (default: never)")
    token_create.add_argument("--description", default="")
    token_list = command(token, "list", _token_list, "list tokens (never their secrets)")
    token_list.add_argument("--org", help="org slug; without it, user and edge tokens")
    token_list.add_argument("--all", action="store_true", help="include revoked tokens")
    token_revoke = command(token, "revoke", _token_revoke, "revoke a token")
    token_revoke.add_argument("token_id", help="the token's id (or the token itself)")

    trust = commands.add_parser(
        "trust", help="OIDC trust relationships: CI jobs log in with their ID tokens"
    ).add_subparsers(dest="command", required=True)
    trust_create = command(
        trust,
        "create",
        _trust_create,
        "trust ID tokens of an issuer whose claims match, to act in an org (or one project)",
    )
    trust_create.add_argument("--org", required=True, help="org slug")
    trust_create.add_argument(
        "--issuer",
        required=True,
        help="the ID tokens' iss, e.g. https://token.actions.githubusercontent.com",
    )
    trust_create.add_argument(
        "--audience", required=True, help="the aud the ID tokens must carry, e.g. depot-registry"
    )
    trust_create.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="CLAIM=VALUE",
        required=True,
        help="a claim the ID token must have with exactly this value (repeatable; all must "
        "match), e.g. repository=acme/app",
    )
    trust_create.add_argument(
        "--action",
        action="append",
        choices=sorted(ALL_ACTIONS),
        default=[],
        required=True,
        help="what a matching job may do (repeatable)",
    )
    trust_create.add_argument("--project", help="project id: only that project's repository")
    trust_create.add_argument("--description", default="")
    trust_list = command(trust, "list", _trust_list, "list an org's trust relationships")
    trust_list.add_argument("--org", required=True, help="org slug")
    trust_list.add_argument("--all", action="store_true", help="include deleted ones")
    trust_delete = command(trust, "delete", _trust_delete, "delete (revoke) a trust relationship")
    trust_delete.add_argument("--org", required=True, help="org slug")
    trust_delete.add_argument("trust_id", help="the id 'trust list' shows (trust_...)")


def run(
    args: argparse.Namespace, load_settings: Callable[[argparse.Namespace], OriginSettings]
) -> int:
    """Run a parsed tenancy command; the exit status."""
    try:
        settings = load_settings(args)
        if not getattr(args, "init", False):
            require_registry(settings)
        database = open_database(settings)
    except InputError as exc:  # settings included (ConfigError)
        return _fail(exc, 2)
    except (BackendError, OSError) as exc:
        return _fail(exc, 1)
    try:
        args.settings = settings  # what a command needs of them (trust create: OIDC policy)
        trio.run(args.tenancy_handler, TenancyStore(database), args, time.time())
    except InputError as exc:
        return _fail(exc, 2)
    except BackendError as exc:
        return _fail(exc, 1)
    finally:
        database.close()
    return 0


def require_registry(settings: OriginSettings) -> None:
    """Refuse a data directory that holds no registry database (with a ``database_url`` the
    database is elsewhere: nothing to check here). Without this, a mistyped ``--data-dir``
    silently made a new, empty registry whose tokens the running one refuses."""
    if settings.database_url or (settings.data_dir / REGISTRY_FILE).exists():
        return
    raise InputError(
        f"no registry in {settings.data_dir} ({REGISTRY_FILE} not found): give the data "
        "directory the origin serves (./scripts/run uses ./data/origin), or create a new "
        "registry there with 'org create --init'"
    )


def _fail(exc: BaseException, status: int) -> int:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"{_PROG}: {message}", file=sys.stderr)
    return status


def _print(args: argparse.Namespace, document: Any, text: str) -> None:
    if args.json:
        print(json.dumps(document), flush=True)
    elif text:
        print(text, flush=True)


async def _org_id(store: TenancyStore, slug: str) -> str:
    org = await store.org_by_slug(slug)
    if org is None:
        raise _Refused(f"no organization {slug!r}")
    return org.id


# -- commands ---------------------------------------------------------------------------------


async def _org_create(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    org = await store.create_org(args.name, now)
    _, token = await store.create_token(
        "org", org_id=org.id, description="created with the organization", now=now
    )
    text = (
        f"created organization {org.slug} ({org.id})\n"
        f"organization token (shown only now; store it safely):\n{token}"
    )
    _print(args, {"org_id": org.id, "name": org.slug, "token": token}, text)


async def _org_list(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    orgs = await store.list_orgs()
    document = [{"org_id": o.id, "name": o.slug, "created_at": o.created_at} for o in orgs]
    _print(args, document, "\n".join(f"{o.slug}\t{o.id}\t{_time(o.created_at)}" for o in orgs))


async def _project_create(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    project = await store.create_project(await _org_id(store, args.org), args.name, now)
    document = {
        "project_id": project.id,
        "org": project.org_slug,
        "name": project.name,
        "repository": project.repository,
    }
    _print(args, document, project.id)


async def _project_list(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    projects = await store.list_projects(await _org_id(store, args.org))
    document = [{"project_id": p.id, "name": p.name, "repository": p.repository} for p in projects]
    _print(args, document, "\n".join(f"{p.id}\t{p.name}\t{p.repository}" for p in projects))


async def _user_create(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    org_ids = [await _org_id(store, slug) for slug in args.org]  # all known before creating
    user = await store.create_user(args.name, now)
    for org_id in org_ids:
        await store.add_member(user.id, org_id)
    document = {"user_id": user.id, "name": user.name, "orgs": args.org}
    _print(args, document, f"created user {user.name} ({user.id})")


async def _token_create(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    expires_at = None
    if args.expires is not None:
        try:
            lifetime = parse_duration(args.expires)
        except ValueError as exc:
            raise InputError(f"--expires: {exc}") from exc
        if lifetime <= 0:
            raise InputError(f"--expires must be a positive duration, not {args.expires!r}")
        expires_at = now + lifetime
    user_id = None
    if args.user is not None:
        user = await store.user_by_name(args.user)
        if user is None:
            raise _Refused(f"no user {args.user!r}")
        user_id = user.id
    record, token = await store.create_token(
        args.kind,
        org_id=None if args.org is None else await _org_id(store, args.org),
        project_id=args.project,
        user_id=user_id,
        description=args.description,
        expires_at=expires_at,
        now=now,
    )
    document = {
        "token_id": record.token_id,
        "kind": record.kind,
        "token": token,
        "expires_at": record.expires_at,
    }
    expiry = "never expires" if expires_at is None else f"expires {_time(expires_at)}"
    text = f"{record.kind} token {record.token_id} ({expiry}), shown only now:\n{token}"
    _print(args, document, text)


async def _token_list(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    org_id = None if args.org is None else await _org_id(store, args.org)
    records = await store.list_tokens(org_id, include_revoked=args.all)
    users = await store.users_by_id(r.user_id for r in records if r.user_id is not None)
    names = {user_id: user.name for user_id, user in users.items()}
    org = {org_id: args.org} if org_id is not None else {}
    _print(
        args,
        [_token_document(r, names) for r in records],
        "\n".join(_token_line(r, names, org) for r in records),
    )


async def _token_revoke(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    parsed = parse_token(args.token_id)
    token_id = args.token_id if parsed is None else parsed[1]  # never echo a pasted secret
    if not await store.revoke_token(token_id, now):
        raise _Refused(f"no unrevoked token with id {token_id[:40]!r}")
    _print(args, {"token_id": token_id, "revoked_at": now}, f"revoked token {token_id}")


async def _trust_create(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    settings: OriginSettings = args.settings
    try:
        check_issuer(args.issuer, allow_insecure_loopback=settings.oidc_allow_insecure_loopback)
    except ValueError as exc:
        raise InputError(f"--issuer: {exc}") from exc
    conditions: dict[str, str] = {}
    for condition in args.condition:
        claim, sep, value = condition.partition("=")
        if not sep or not claim:
            raise InputError(f"--condition must be CLAIM=VALUE, not {condition!r}")
        conditions[claim] = value
    trust = await store.create_trust(
        await _org_id(store, args.org),
        issuer=args.issuer,
        audience=args.audience,
        conditions=conditions,
        actions=args.action,
        project_id=args.project,
        description=args.description,
        now=now,
    )
    _print(args, _trust_document(trust), f"created trust relationship {trust.id}")


async def _trust_list(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    trusts = await store.list_trusts(await _org_id(store, args.org), include_revoked=args.all)
    _print(args, [_trust_document(t) for t in trusts], "\n".join(map(_trust_line, trusts)))


async def _trust_delete(store: TenancyStore, args: argparse.Namespace, now: float) -> None:
    org_id = await _org_id(store, args.org)
    known = await store.list_trusts(org_id)
    if not any(t.id == args.trust_id for t in known) or not await store.revoke_trust(
        args.trust_id, now
    ):
        raise _Refused(f"no trust relationship {args.trust_id[:40]!r} in {args.org}")
    _print(args, {"id": args.trust_id, "revoked_at": now}, f"deleted trust {args.trust_id}")


# -- formatting -------------------------------------------------------------------------------


def _trust_document(trust: TrustRecord) -> dict[str, Any]:
    return {
        "id": trust.id,
        "org_id": trust.org_id,
        "issuer": trust.issuer,
        "audience": trust.audience,
        "conditions": dict(trust.conditions),
        "actions": sorted(trust.actions),
        "project_id": trust.project_id,
        "description": trust.description,
        "created_at": trust.created_at,
        "revoked_at": trust.revoked_at,
    }


def _trust_line(trust: TrustRecord) -> str:
    conditions = ",".join(f"{k}={v}" for k, v in sorted(trust.conditions.items()))
    state = "deleted " + _time(trust.revoked_at) if trust.revoked_at else "active"
    return "\t".join(
        [
            trust.id,
            trust.issuer,
            f"aud={trust.audience}",
            conditions,
            ",".join(sorted(trust.actions)),
            trust.project_id or "whole org",
            state,
            trust.description,
        ]
    )


def _time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token_document(record: TokenRecord, user_names: dict[str, str]) -> dict[str, Any]:
    return {
        "token_id": record.token_id,
        "kind": record.kind,
        "org_id": record.org_id,
        "project_id": record.project_id,
        "user_id": record.user_id,
        "user": user_names.get(record.user_id) if record.user_id else None,
        "description": record.description,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
        "last_used_at": record.last_used_at,
    }


def _token_line(record: TokenRecord, user_names: dict[str, str], org_slugs: dict[str, str]) -> str:
    """One tab-separated line; the scope by name (project id, user name, org slug)."""
    if record.project_id:
        scope = f"project {record.project_id}"
    elif record.user_id:
        scope = f"user {user_names.get(record.user_id, record.user_id)}"
    elif record.org_id:
        scope = f"org {org_slugs.get(record.org_id, record.org_id)}"
    else:
        scope = "-"
    state = "revoked " + _time(record.revoked_at) if record.revoked_at else "active"
    return "\t".join(
        [
            record.token_id,
            record.kind,
            scope,
            state,
            f"expires {_time(record.expires_at)}",
            f"last used {_time(record.last_used_at)}",
            record.description,
        ]
    )
