"""``depot-registry``: the operator CLI, assembled from the components that are installed.

Each component (origin, edge) registers its commands through the
``depot_registry.commands`` entry-point group, so this module imports neither — and origin
and edge never import each other. A registrar adds subparsers and sets ``handler`` (a
function of the parsed arguments returning the exit code) on each command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, entry_points, version

GROUP = "depot_registry.commands"

DESCRIPTION = """\
Operate a depot registry: serve the origin (the authoritative OCI registry) and edges (caching
nodes in front of it), and manage what lives in it: organizations, projects, users, tokens,
OIDC trust relationships, garbage collection. Operator commands work on the origin's data
directory (--data-dir; ./data/origin under ./scripts/run) or its database_url."""

EPILOG = """\
'depot-registry COMMAND --help' shows a command's options. Users push and pull with any OCI
client (docker, podman, skopeo, containerd) and save builds with the 'depot' CLI."""

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser(registrars: list[Registrar] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depot-registry",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"depot-registry {package_version()}"
    )
    commands = parser.add_subparsers(dest="component", required=True)
    if registrars is None:
        registrars = [entry.load() for entry in entry_points(group=GROUP)]
    for register in registrars:
        register(commands)
    return parser


def package_version() -> str:
    try:
        return version("depot-registry")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: list[str] | None = None, registrars: list[Registrar] | None = None) -> int:
    args = build_parser(registrars).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
