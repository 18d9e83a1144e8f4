"""Which project a ``depot`` command is about: ``--project``, else ``$DEPOT_PROJECT_ID``, else
the ``id`` of a ``depot.json`` in the current directory (``{"id": "..."}``, as Depot writes
it). None when none of the three says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from core.errors import InputError

PROJECT_ENV = "DEPOT_PROJECT_ID"
PROJECT_FILE = "depot.json"


class ProjectError(InputError):
    """``depot.json`` exists but names no project."""


def resolve_project(
    flag: str | None,
    environ: Mapping[str, str] | None = None,
    directory: Path | None = None,
) -> str | None:
    if flag:
        return flag
    env = os.environ if environ is None else environ
    if env.get(PROJECT_ENV):
        return env[PROJECT_ENV]
    path = (directory or Path.cwd()) / PROJECT_FILE
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ProjectError(f"{path} is not readable JSON: {exc}") from exc
    found = document.get("id") if isinstance(document, dict) else None
    if not isinstance(found, str) or not found:
        raise ProjectError(f'{path} has no project id (expected {{"id": "..."}})')
    return found
