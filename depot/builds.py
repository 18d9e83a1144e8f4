"""A project's builds as ``depot`` finds and shows them.

A build is named by its id, by one of its save-tags (the newest live build carrying it), or
in the legacy form ``<project-id>:<build-id>`` (which names the project too). Resolution goes
through the management API: ``GET …/builds/{id}`` first, then the listing for a save-tag.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from core.errors import InputError
from depot import api
from depot.humanize import human_age, human_expiry, human_size

#: How many builds the listing that resolves a save-tag reads (the API's maximum page).
SAVE_TAG_SCAN = 1000
#: How many builds the error for a missing build id lists.
SUGGESTED = 10
_BUILD_ID = re.compile(r"[a-z0-9]{12}")


class BuildNotFound(InputError):
    """No live build of the project answers to the reference."""


@dataclass(frozen=True, slots=True)
class ResolvedBuild:
    project: str
    document: dict[str, Any]  # the API's build document
    tag: str  # what the user named it by: the build id or the save-tag

    @property
    def id(self) -> str:
        return str(self.document["id"])


def split_reference(text: str, project: str | None) -> tuple[str | None, str]:
    """(project, build id or save-tag) of a reference; ``<project-id>:<build-id>`` names the
    project, which must then agree with ``project`` when both are given."""
    head, sep, tail = text.partition(":")
    if not sep:
        return project, text
    if not head or not tail:
        raise InputError(f"not a build reference: {text!r} (expected BUILD, TAG or PROJECT:BUILD)")
    if project is not None and project != head:
        raise InputError(f"{text!r} names project {head}, but the project given is {project}")
    return head, tail


def is_expired(build: dict[str, Any]) -> bool:
    return build.get("state") == "expired"


async def resolve(client: httpx.AsyncClient, project: str, reference: str) -> ResolvedBuild:
    """The build ``reference`` (build id or save-tag) names in ``project``."""
    if _BUILD_ID.fullmatch(reference):
        found = await api.get_build(client, project, reference)
        if found is not None:
            return _usable(ResolvedBuild(project, found, reference))
    builds = await api.list_builds(client, project, SAVE_TAG_SCAN)
    tagged = [b for b in builds if reference in (b.get("save_tags") or [])]
    live = [b for b in tagged if not is_expired(b)]
    if live:
        return _usable(ResolvedBuild(project, live[0], reference))
    if tagged:
        newest = tagged[0]
        when = human_expiry(newest.get("expires_at"), time.time())
        raise BuildNotFound(
            f"every build of project {project} tagged {reference!r} has expired "
            f"(the newest: {newest.get('id')}, {when})"
        )
    raise BuildNotFound(
        f"project {project} has no build with id or save-tag {reference!r}\n"
        + describe_choices(builds)
    )


def _usable(found: ResolvedBuild) -> ResolvedBuild:
    state = found.document.get("state")
    if state == "expired":
        raise BuildNotFound(f"build {found.id} of project {found.project} has expired")
    if state == "pending" or not found.document.get("digest"):
        raise BuildNotFound(
            f"build {found.id} of project {found.project} has no image yet (its save has not "
            "finished, or failed)"
        )
    return found


def row(build: dict[str, Any], now: float) -> list[str]:
    """id, save-tags, platforms, size, age, expiry: one line of a listing or the picker."""
    return [
        str(build.get("id", "")),
        ",".join(str(t) for t in build.get("save_tags") or []) or "-",
        ",".join(str(p) for p in build.get("platforms") or []) or "-",
        human_size(build.get("size")),
        human_age(build.get("created_at"), now),
        human_expiry(build.get("expires_at"), now),
    ]


ROW_HEADER = ["BUILD ID", "SAVE-TAGS", "PLATFORMS", "SIZE", "AGE", "EXPIRES"]


def table(rows: list[list[str]]) -> list[str]:
    """Rows as left-aligned columns (the first row is the header)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def describe_choices(builds: list[dict[str, Any]], now: float | None = None) -> str:
    """The newest builds as a table, and how to name one: for errors without a terminal."""
    moment = time.time() if now is None else now
    live = [b for b in builds if not is_expired(b) and b.get("digest")]
    if not live:
        return "The project has no build to pull: save one with depot save."
    lines = table([ROW_HEADER, *(row(b, moment) for b in live[:SUGGESTED])])
    more = f" (newest {SUGGESTED} of {len(live)})" if len(live) > SUGGESTED else ""
    return "\n".join(
        [
            f"Builds{more}:",
            *(f"  {line}" for line in lines),
            "Pass one: depot pull BUILD_ID (or a save-tag, or PROJECT_ID:BUILD_ID).",
        ]
    )
