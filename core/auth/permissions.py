"""What a principal may do to a repository, and which requested scopes a token may carry.

Repositories here are INTERNAL names (``<org>/<path>``); the caller maps client-visible names
with ``resolve`` (see :mod:`core.tenancy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from core.auth.principal import ALL_ACTIONS, PULL, Principal
from core.auth.scopes import CATALOG, Access, merge
from core.tenancy import org_of

_PULL_ONLY = frozenset({PULL})


def _expand(requested: frozenset[str]) -> frozenset[str]:
    wanted = ALL_ACTIONS if "*" in requested else requested
    return wanted & ALL_ACTIONS


def _reaches(principal: Principal, repository: str) -> bool:
    if "/" not in repository:  # not an internal name
        return False
    org = org_of(repository)
    if org not in principal.orgs:
        return False
    return principal.project is None or repository == f"{org}/{principal.project}"


def allowed_actions(
    principal: Principal, repository: str, requested: frozenset[str], *, public: bool
) -> frozenset[str]:
    """The subset of ``requested`` (``*``: every action) ``principal`` may do on ``repository``.

    Edges pull everywhere and never do anything else. Others act only in their orgs (a project
    principal only on ``<org>/<project>``), at most their own actions. Anyone, anonymous
    included, may pull a public repository.
    """
    wanted = _expand(requested)
    if principal.kind == "edge":
        return wanted & _PULL_ONLY
    granted = wanted & principal.actions if _reaches(principal, repository) else frozenset()
    if public:
        granted |= wanted & _PULL_ONLY
    return granted


def grant_accesses(
    principal: Principal,
    requested: Sequence[Access],
    *,
    resolve: Callable[[str], str | None],
    is_public: Callable[[str], bool],
) -> list[Access]:
    """The accesses a token for ``principal`` carries, given the scopes a client asked for.

    Repository names are resolved to internal names (None: unknown, nothing granted) and the
    grants carry the internal name; empty grants are dropped. ``registry:catalog:*`` is granted
    as is to any non-anonymous principal. Other resource types are never granted.
    """
    granted: list[Access] = []
    for access in merge(requested):
        if access.type == "repository":
            internal = resolve(access.name)
            if internal is None:
                continue
            actions = allowed_actions(
                principal, internal, access.actions, public=is_public(internal)
            )
            if actions:
                granted.append(Access("repository", internal, actions))
        elif (
            access.type == CATALOG.type
            and access.name == CATALOG.name
            and "*" in access.actions
            and principal.kind != "anonymous"
        ):
            granted.append(CATALOG)
    return merge(granted)
