"""Builds, retention and usage as immutable records, and the pure rules around them: build ids,
which TTL applies, which repositories are project repositories, month periods, storage cost.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime

BUILD_ID_LENGTH = 12
_ID_ALPHABET = string.ascii_lowercase + string.digits
_BUILD_ID = re.compile(rf"[a-z0-9]{{{BUILD_ID_LENGTH}}}")
#: A project repository is ``<org slug>/<project id>`` (12 of [a-z0-9], like build ids).
_PROJECT_REPOSITORY = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/[a-z0-9]{12}")
#: A month of storage is billed as this many hours (365 * 24 / 12).
HOURS_PER_MONTH = 730.0
DEFAULT_BUILD_TTL_SECONDS = 7 * 86400.0
#: An index lists at most this many platforms in a build's record.
MAX_PLATFORMS = 64


def new_build_id() -> str:
    """12 of [a-z0-9]: URL-safe, a valid OCI tag, ~62 bits of randomness."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(BUILD_ID_LENGTH))


def is_build_id(text: str) -> bool:
    return _BUILD_ID.fullmatch(text) is not None


def is_project_repository(name: str) -> bool:
    """Whether ``name`` (internal) has the shape of a project repository; only those can hold
    builds, so every other repository skips the build checks on the manifest hot path."""
    return _PROJECT_REPOSITORY.fullmatch(name) is not None


def effective_ttl(default: float, org_ttl: float | None, project_ttl: float | None) -> float:
    """The build TTL that applies: the project's, else the org's, else the default."""
    if project_ttl is not None:
        return project_ttl
    if org_ttl is not None:
        return org_ttl
    return default


def platform_string(platform: object) -> str | None:
    """``os/arch[/variant]`` of an OCI platform object (or an image config), None when it
    names no real platform (buildx attestation manifests say ``unknown/unknown``)."""
    if not isinstance(platform, dict):
        return None
    os_name, arch, variant = (
        platform.get("os"),
        platform.get("architecture"),
        platform.get("variant"),
    )
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    if "unknown" in (os_name, arch):
        return None
    text = f"{os_name}/{arch}"
    if isinstance(variant, str) and variant:
        text += f"/{variant}"
    return text[:100]


def month_of(timestamp: float) -> str:
    """The UTC calendar month ``YYYY-MM`` a POSIX time falls in: usage is recorded per month."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m")


def month_start(timestamp: float) -> float:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def split_by_month(start: float, end: float) -> list[tuple[str, float]]:
    """``[start, end)`` cut at UTC month boundaries: ``(month, seconds)`` pairs, in order."""
    pieces: list[tuple[str, float]] = []
    while start < end:
        moment = datetime.fromtimestamp(start, UTC)
        year, month = (
            (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        )
        boundary = datetime(year, month, 1, tzinfo=UTC).timestamp()
        stop = min(end, boundary)
        pieces.append((month_of(start), stop - start))
        start = stop
    return pieces


def storage_cost(byte_hours: float, price_per_gb_month: float) -> float:
    """US dollars for ``byte_hours`` at ``price_per_gb_month`` (decimal GB, 730-hour month)."""
    return byte_hours / HOURS_PER_MONTH / 1e9 * price_per_gb_month


@dataclass(frozen=True, slots=True)
class BuildRecord:
    id: str
    project_id: str
    org_slug: str
    repository: str  # ``<org slug>/<project id>``
    created_at: float
    expires_at: float
    save_tags: tuple[str, ...]
    #: Set when the image is pushed to ``<project>:<id>`` (None while pending).
    digest: str | None = None
    media_type: str | None = None
    platforms: tuple[str, ...] = ()
    size: int | None = None
    deleted_at: float | None = None

    def live(self, now: float) -> bool:
        return self.deleted_at is None and now < self.expires_at

    def state(self, now: float) -> str:
        if self.deleted_at is not None:
            return "deleted"
        if now >= self.expires_at:
            return "expired"
        return "pending" if self.digest is None else "ready"


@dataclass(frozen=True, slots=True)
class BoundImage:
    """What binding a pushed image to a build records."""

    digest: str
    media_type: str
    platforms: tuple[str, ...]
    size: int  # the manifest(s) and their distinct blobs, each counted once
    manifests: frozenset[str]  # every manifest digest the build reaches (index children)


@dataclass(frozen=True, slots=True)
class Retention:
    """Build TTLs set on an org and on one of its projects (None: not set there)."""

    org_ttl_seconds: float | None
    project_ttl_seconds: float | None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    org_slug: str
    month: str  # ``YYYY-MM`` (UTC)
    byte_hours: float
    accrued_at: float | None  # when byte-hours were last added (None: never)
