"""Who is asking: the identity a credential (a registry token, an OIDC trust relationship, a
signed bearer token) stands for, and the most it may do."""

from __future__ import annotations

from dataclasses import dataclass

PULL, PUSH, DELETE = "pull", "push", "delete"
ALL_ACTIONS = frozenset({PULL, PUSH, DELETE})


@dataclass(frozen=True, slots=True)
class Principal:
    #: "user" | "org" | "project" | "pull" | "trust" | "edge" | "anonymous"
    kind: str
    #: Stable id of the credential (token id, trust relationship id) — never a secret.
    subject: str
    #: Org slugs it may act in (empty: none; an edge reads every org).
    orgs: frozenset[str]
    #: When set, only the project's repository ``<org>/<project>`` is reachable.
    project: str | None
    #: The most it may do anywhere it reaches.
    actions: frozenset[str]
    #: When the credential stops being valid (POSIX seconds; None: never). A bearer token
    #: issued on its strength expires no later.
    expires_at: float | None = None


ANONYMOUS = Principal("anonymous", "anonymous", frozenset(), None, frozenset())
