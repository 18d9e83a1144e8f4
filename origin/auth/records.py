"""Rows of the tenancy store as immutable records. None of them carries a secret."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OrgRecord:
    id: str
    slug: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    id: str
    org_id: str
    org_slug: str
    name: str
    created_at: float

    @property
    def repository(self) -> str:
        """The project's internal repository name."""
        return f"{self.org_slug}/{self.id}"


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str  # safe to show and log: the secret is not derivable from it
    kind: str  # "user" | "org" | "project" | "pull" | "edge"
    org_id: str | None
    project_id: str | None
    user_id: str | None
    description: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class TrustRecord:
    id: str
    org_id: str
    org_slug: str
    issuer: str
    audience: str
    #: Claim name → the exact string value it must have; every one must match.
    conditions: Mapping[str, str]
    actions: frozenset[str]
    project_id: str | None
    description: str
    created_at: float
    revoked_at: float | None
