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
from importlib.metadata import entry_points

GROUP = "depot_registry.commands"

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser(registrars: list[Registrar] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depot-registry", description=__doc__)
    commands = parser.add_subparsers(dest="component", required=True)
    if registrars is None:
        registrars = [entry.load() for entry in entry_points(group=GROUP)]
    for register in registrars:
        register(commands)
    return parser


def main(argv: list[str] | None = None, registrars: list[Registrar] | None = None) -> int:
    args = build_parser(registrars).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
