"""``depot-registry edge serve`` and ``depot-registry edge cache stats|purge``.

``edge serve --mirror docker.io=https://registry-1.docker.io --mirror-access docker.io=anonymous``
mirrors an upstream registry beside the origin (repeatable; see edge/mirror/config.py); the
TOML file's ``[[mirrors]]`` tables say the same, credentials included.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import diskcache.core
import trio

from config.loader import ConfigError, load
from config.settings import EdgeSettings
from core.cli import main as cli_main
from core.client.trust import verifying_context
from core.web.serving import bind_socket, bound_url, serve_until_signal
from core.web.tls import add_tls_flags, server_tls_context
from edge.cache.spool import remove_stale_spools
from edge.cache.store import EdgeCache
from edge.mirror.config import site_specs, with_flags
from edge.server import read_upstream_token, serve

ENV_PREFIX = "DEPOT_EDGE_"

log = logging.getLogger("depot.edge.cli")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    edge = commands.add_parser("edge", help="a cache-filling edge node in front of the origin")
    edge_commands = edge.add_subparsers(dest="command", required=True, metavar="{serve,cache}")

    serve_cmd = edge_commands.add_parser("serve", help="serve pulls from cache, fill from origin")
    _add_serve_flags(serve_cmd)
    serve_cmd.add_argument(
        "--workers", type=int, help="worker processes sharing the socket and cache (default 1)"
    )
    serve_cmd.set_defaults(handler=_run_serve)

    # Internal (started by `serve --workers N`): no help, so it is not listed.
    worker = edge_commands.add_parser("worker")
    _add_serve_flags(worker)
    worker.add_argument("--fd", type=int, required=True)
    worker.set_defaults(handler=_run_serve)

    cache = edge_commands.add_parser("cache", help="inspect or empty an edge's cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    for name, handler, text in (
        ("stats", _run_stats, "size, entries, hits, misses, evictions"),
        ("purge", _run_purge, "delete every cached object"),
    ):
        sub = cache_commands.add_parser(name, help=text)
        sub.add_argument("--cache-dir", type=Path, required=True)
        sub.add_argument("--json", action="store_true")
        sub.set_defaults(handler=handler)


def _add_serve_flags(serve_cmd: argparse.ArgumentParser) -> None:
    serve_cmd.add_argument("--listen", help="HOST:PORT (port 0 picks a free port)")
    serve_cmd.add_argument("--upstream", help="the origin's URL")
    serve_cmd.add_argument("--cache-dir", type=Path)
    serve_cmd.add_argument("--cache-size", help="e.g. 50GiB")
    serve_cmd.add_argument("--upstream-token-file", type=Path, help="file with a dpe_ token")
    serve_cmd.add_argument("--base-domain", help="e.g. registry.example for org subdomains")
    serve_cmd.add_argument(
        "--insecure-registry",
        action="append",
        dest="insecure_registries",
        metavar="HOST[:PORT]",
        help="a push relay target spoken to over plain HTTP (loopback ones always are)",
    )
    serve_cmd.add_argument("--relay-max-jobs", type=int, help="relay jobs running at once")
    serve_cmd.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="mirror an upstream registry, e.g. docker.io=https://registry-1.docker.io",
    )
    serve_cmd.add_argument(
        "--mirror-access",
        action="append",
        default=[],
        metavar="NAME=MODE",
        help="authenticated (default: tokens of this system's orgs) or anonymous (anyone)",
    )
    serve_cmd.add_argument("--redis-url", help="Redis shared by the region's edges")
    serve_cmd.add_argument("--region", help="this edge's region (with --redis-url)")
    serve_cmd.add_argument("--advertise-url", help="the URL the region's other edges use")
    serve_cmd.add_argument("--config", type=Path, help="TOML settings file")
    add_tls_flags(serve_cmd)
    serve_cmd.add_argument(
        "--upstream-ca",
        type=Path,
        metavar="FILE",
        help="CA bundle (PEM) origin's certificate must chain to, for an https --upstream "
        "(default: the system's trust store)",
    )


def _settings(args: argparse.Namespace) -> EdgeSettings:
    overrides: dict[str, Any] = {
        "listen": args.listen,
        "upstream": args.upstream,
        "cache_dir": args.cache_dir,
        "cache_size_bytes": args.cache_size,
        "upstream_token_file": args.upstream_token_file,
        "base_domain": args.base_domain,
        "insecure_registries": ",".join(args.insecure_registries or []) or None,
        "relay_max_jobs": args.relay_max_jobs,
        "redis_url": args.redis_url,
        "region": args.region,
        "advertise_url": args.advertise_url,
        "tls_cert_file": args.tls_cert,
        "tls_key_file": args.tls_key,
        "upstream_ca_file": args.upstream_ca,
        "workers": getattr(args, "workers", None),
    }
    settings = load(
        EdgeSettings, file=args.config, environ=os.environ, prefix=ENV_PREFIX, overrides=overrides
    )
    return with_flags(settings, args.mirror, args.mirror_access)


def _run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    try:
        settings = _settings(args)
        if not settings.upstream:
            raise ConfigError("--upstream is required (the origin's URL)")
        read_upstream_token(settings)
        site_specs(settings)  # mirrors checked (and their password files read) before binding
        server_tls_context(settings.tls_cert_file, settings.tls_key_file)
        verifying_context(settings.upstream_ca_file)
        if args.command == "worker":
            sock = socket.socket(fileno=args.fd)
        else:
            sock = bind_socket(settings.listen)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"depot-registry: {exc}", file=sys.stderr)
        return 2
    url = bound_url(sock, tls=settings.tls_cert_file is not None)

    def announce() -> None:
        print(f"depot-registry edge listening on {url}", flush=True)

    if args.command == "worker":
        trio.run(partial(serve_until_signal, partial(serve, settings, sock, recover=False)))
        return 0
    if settings.workers > 1:
        return _serve_many(settings, sock, args, announce)
    trio.run(partial(serve_until_signal, partial(serve, settings, sock), announce=announce))
    return 0


def _serve_many(
    settings: EdgeSettings,
    sock: socket.socket,
    args: argparse.Namespace,
    announce: Callable[[], None],
) -> int:
    """The parent of ``edge serve --workers N``: recovers the cache once (a worker's recovery
    would delete a sibling's files in flight), then starts and watches N workers on its
    socket, as ``origin serve --workers N`` does; a worker killed by a signal is replaced."""
    EdgeCache.open(settings.cache_dir, settings.cache_size_bytes).close()
    spool_dir = settings.cache_dir / "spool"
    command = [sys.executable, "-m", "edge.cli", "edge", "worker", "--fd", str(sock.fileno())]
    command += _flags(args)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, pass_fds=[sock.fileno()])

    children = [start() for _ in range(settings.workers)]
    announce()
    received: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _frame: received.append(s))
    failed = False
    try:
        while not received and not failed:
            for index, child in enumerate(children):
                code = child.poll()
                if code is None:
                    continue
                if code >= 0:  # the worker chose to exit (an error it logged): so does the edge
                    failed = True
                    break
                # Killed by a signal (the OOM killer, an operator): its siblings go on, its
                # fills are taken over by them (the kernel released its locks); replace it.
                log.warning("edge worker %d killed by signal %d: replaced", child.pid, -code)
                remove_stale_spools(spool_dir)  # its spools (live fills' are locked, kept)
                children[index] = start()
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes = [child.wait() for child in children]
    return 0 if received and all(code == 0 for code in codes) else 1


def _flags(args: argparse.Namespace) -> list[str]:
    """``serve``'s flags as given (all but --listen and --workers), for the workers."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_serve_flags(parser)
    flags: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest == "listen" or value is None or value is False or value == []:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            flags.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                flags += [flag, str(item)]
        else:
            flags += [flag, str(value)]
    return flags


def main(argv: list[str] | None = None) -> int:
    """The edge's commands alone (``python -m edge.cli``, used to start workers)."""
    return cli_main(argv, registrars=[register])


def _holds_cache(directory: Path) -> bool:
    """Whether an edge has used ``directory`` as its cache (its index file exists)."""
    index: str = diskcache.core.DBNAME
    return (directory / "cache" / index).is_file()


def _refuse_no_cache(directory: Path) -> int:
    """A mistyped --cache-dir must not become an empty cache that reports zeros."""
    print(
        f"depot-registry: no edge cache in {directory} (give the directory an edge serves "
        "with --cache-dir)",
        file=sys.stderr,
    )
    return 2


def _run_stats(args: argparse.Namespace) -> int:
    if not _holds_cache(args.cache_dir):
        return _refuse_no_cache(args.cache_dir)
    cache = EdgeCache.open(args.cache_dir, recover=False)
    try:
        stats = trio.run(cache.stats)
    finally:
        cache.close()
    if args.json:
        print(json.dumps(asdict(stats)))
    else:
        for key, value in asdict(stats).items():
            print(f"{key}\t{value}")
    return 0


def _run_purge(args: argparse.Namespace) -> int:
    if not _holds_cache(args.cache_dir):
        return _refuse_no_cache(args.cache_dir)
    cache = EdgeCache.open(args.cache_dir, recover=False)
    try:
        removed = trio.run(cache.purge)
    finally:
        cache.close()
    print(json.dumps({"removed": removed}) if args.json else f"removed {removed} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
