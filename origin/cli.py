"""``depot-registry``: the operator CLI."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from config.loader import ConfigError, load
from config.settings import OriginSettings
from core.cli import main as cli_main
from core.errors import BackendError, InputError
from core.exceptiongroups import single_exception
from core.web.serving import bind_socket, bound_url, is_loopback, serve_until_signal
from core.web.tls import add_tls_flags, server_tls_context
from origin import cli_gc, cli_tenancy
from origin.server import housekeeping, open_registry, serve

ENV_PREFIX = "DEPOT_ORIGIN_"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``origin serve``, the tenancy commands (org, project, user, token) and ``gc``."""
    origin = commands.add_parser("origin", help="the authoritative registry")
    origin.set_defaults(handler=_run_origin)
    origin_commands = origin.add_subparsers(dest="command", required=True, metavar="{serve}")

    serve_cmd = origin_commands.add_parser("serve", help="serve the OCI Distribution API")
    serve_cmd.add_argument("--listen", help="HOST:PORT (port 0 picks a free port)")
    serve_cmd.add_argument("--data-dir", type=Path, help="where blobs and metadata live")
    serve_cmd.add_argument("--config", type=Path, help="TOML settings file")
    serve_cmd.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve_cmd.add_argument(
        "--storage-url", help="where blobs live: file://DIR or s3://BUCKET?endpoint=...&region=..."
    )
    serve_cmd.add_argument(
        "--redis-url", help="redis://HOST:PORT/DB: rate limits shared by every origin using it"
    )
    serve_cmd.add_argument(
        "--no-auth",
        action="store_true",
        help="anonymous push and pull, for local experiments; loopback addresses only",
    )
    serve_cmd.add_argument(
        "--base-domain",
        help="e.g. registry.example: ORG_ID.registry.example addresses that org's repositories",
    )
    add_tls_flags(serve_cmd)

    # Internal (started by `serve --workers N`): no help, so it is not listed.
    worker = origin_commands.add_parser("worker")
    worker.add_argument("--fd", type=int, required=True)
    worker.add_argument("--data-dir", type=Path)
    worker.add_argument("--config", type=Path)
    worker.add_argument("--storage-url")
    worker.add_argument("--redis-url")
    worker.add_argument("--no-auth", action="store_true")
    worker.add_argument("--base-domain")
    add_tls_flags(worker)
    cli_tenancy.add_commands(commands)
    for name in cli_tenancy.COMPONENTS:
        commands.choices[name].set_defaults(
            handler=partial(cli_tenancy.run, load_settings=_settings)
        )
    cli_gc.add_command(commands)
    commands.choices["gc"].set_defaults(handler=partial(cli_gc.run, load_settings=_settings))


def _settings(args: argparse.Namespace) -> OriginSettings:
    overrides: dict[str, Any] = {
        "listen": getattr(args, "listen", None),
        "data_dir": args.data_dir,
        "workers": getattr(args, "workers", None),
        "storage_url": getattr(args, "storage_url", None),
        "redis_url": getattr(args, "redis_url", None),
        "auth": False if getattr(args, "no_auth", False) else None,
        "base_domain": getattr(args, "base_domain", None),
        "tls_cert_file": getattr(args, "tls_cert", None),
        "tls_key_file": getattr(args, "tls_key", None),
    }
    return load(
        OriginSettings,
        file=args.config,
        environ=os.environ,
        prefix=ENV_PREFIX,
        overrides=overrides,
    )


def _announce(url: str) -> None:
    print(f"depot-registry origin listening on {url}", flush=True)


def _serve_until_signal(
    settings: OriginSettings, sock: socket.socket, *, clean_at_start: bool, announce: bool
) -> None:
    url = bound_url(sock, tls=settings.tls_cert_file is not None)
    trio.run(
        partial(
            serve_until_signal,
            partial(serve, settings, sock, clean_at_start=clean_at_start),
            announce=partial(_announce, url) if announce else None,
        )
    )


def _serve_many(settings: OriginSettings, sock: socket.socket, args: argparse.Namespace) -> int:
    async def clean() -> None:
        async with open_registry(settings) as registry:
            await housekeeping(registry, settings)

    trio.run(clean)  # before any worker starts, so no in-flight upload is swept
    command = [sys.executable, "-m", "origin.cli", "origin", "worker", "--fd", str(sock.fileno())]
    command += ["--data-dir", str(settings.data_dir)]
    if args.config:
        command += ["--config", str(args.config)]
    if getattr(args, "storage_url", None):
        command += ["--storage-url", args.storage_url]
    if getattr(args, "redis_url", None):
        command += ["--redis-url", args.redis_url]
    if not settings.auth:
        command += ["--no-auth"]
    if getattr(args, "base_domain", None):
        command += ["--base-domain", args.base_domain]
    if getattr(args, "tls_cert", None):
        command += ["--tls-cert", str(args.tls_cert)]
    if getattr(args, "tls_key", None):
        command += ["--tls-key", str(args.tls_key)]
    children = [
        subprocess.Popen(command, pass_fds=[sock.fileno()]) for _ in range(settings.workers)
    ]
    _announce(bound_url(sock, tls=settings.tls_cert_file is not None))
    received: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _frame: received.append(s))
    try:
        while not received and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes = [child.wait() for child in children]
    return 0 if received and all(code == 0 for code in codes) else 1


def main(argv: list[str] | None = None) -> int:
    """The origin's commands alone (``python -m origin.cli``, used to start workers)."""
    return cli_main(argv, registrars=[register])


def _run_origin(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"depot-registry: {exc}", file=sys.stderr)
        return 2
    try:
        with single_exception():
            return _serve(settings, args)
    except InputError as exc:  # e.g. a database_url that names no usable database
        print(f"depot-registry: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:  # the database or storage failed at start
        print(f"depot-registry: cannot start: {exc}", file=sys.stderr)
        return 1


def _serve(settings: OriginSettings, args: argparse.Namespace) -> int:
    if args.command == "worker":
        sock = socket.socket(fileno=args.fd)
        _serve_until_signal(settings, sock, clean_at_start=False, announce=False)
        return 0
    try:
        server_tls_context(settings.tls_cert_file, settings.tls_key_file)  # fail before binding
    except ConfigError as exc:
        print(f"depot-registry: {exc}", file=sys.stderr)
        return 2
    if not settings.auth and not is_loopback(settings.listen):
        print(
            f"depot-registry: --no-auth refuses to listen on {settings.listen}: "
            "only loopback addresses (127.0.0.0/8, ::1, localhost) may serve without auth",
            file=sys.stderr,
        )
        return 2
    try:
        sock = bind_socket(settings.listen)
    except (OSError, ValueError) as exc:
        print(f"depot-registry: cannot listen on {settings.listen}: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return _serve_many(settings, sock, args)
    _serve_until_signal(settings, sock, clean_at_start=True, announce=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
