"""Which project a ``depot`` command means, and which build of it.

The project is the first of: the ``--project`` flag, ``$DEPOT_PROJECT_ID``, the ``id`` in a
``depot.json`` in the current directory (``{"id": "<project-id>"}``, as Depot writes it).
A build is named by its id, a save-tag, a digest, or the legacy ``<project-id>:<build-id>``
(which names the project too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from core.errors import InputError

PROJECT_ENV = "DEPOT_PROJECT_ID"
PROJECT_FILE = "depot.json"
_DIGEST_ALGORITHMS = ("sha256:", "sha512:")


class ProjectError(InputError):
    """No project could be found, or the build reference is malformed."""


def find_project(
    flag: str | None, environ: Mapping[str, str] | None = None, directory: Path | None = None
) -> str | None:
    """The project id from the flag, the environment, then ``depot.json``; None when none of
    them names one. A ``depot.json`` that names none is an error, not a silent miss."""
    env = os.environ if environ is None else environ
    if flag:
        return flag
    if env.get(PROJECT_ENV):
        return env[PROJECT_ENV]
    path = (directory or Path.cwd()) / PROJECT_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ProjectError(f"cannot read the project id from {path}: {exc}") from exc
    found = document.get("id") if isinstance(document, dict) else None
    if isinstance(found, str) and found:
        return found
    raise ProjectError(f'{path} has no project id (expected {{"id": "..."}})')


def resolve_project(
    flag: str | None, environ: Mapping[str, str] | None = None, directory: Path | None = None
) -> str:
    """:func:`find_project`, or an error naming the three places a project comes from."""
    found = find_project(flag, environ, directory)
    if found is not None:
        return found
    raise ProjectError(
        f"no project: pass --project ID, set {PROJECT_ENV} or run in a directory with a "
        f"{PROJECT_FILE}"
    )


def split_build_reference(text: str) -> tuple[str | None, str]:
    """(project, reference) of a build reference: ``<project-id>:<build-id>`` names both; a
    build id, save-tag or digest names only the build."""
    value = text.strip()
    if not value:
        raise ProjectError("empty build reference")
    if value.startswith(_DIGEST_ALGORITHMS) or ":" not in value:
        return None, value
    project, _, reference = value.partition(":")
    if not project or not reference:
        raise ProjectError(f"not a build reference: {text!r} (BUILD_ID, TAG or PROJECT:BUILD_ID)")
    return project, reference


def resolve_build(
    reference: str, flag: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """(project, build reference) for ``reference`` and the ``--project`` flag."""
    named, build = split_build_reference(reference)
    if named is not None:
        if flag and flag != named:
            raise ProjectError(f"{reference!r} is in project {named}, not {flag}")
        return named, build
    return resolve_project(flag, environ), build
