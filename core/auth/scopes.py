"""Docker token-protocol scopes (``type:name:actions``) and the access each request needs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.auth.principal import DELETE, PULL, PUSH
from core.endpoints import Kind
from core.errors import NameInvalid
from core.reference import parse_repository_name

_TYPE = re.compile(r"([a-z0-9]+(?:[._-][a-z0-9]+)*)(?:\([a-z0-9]+(?:[._-][a-z0-9]+)*\))?")
# Repository names, optionally with a registry host[:port] prefix; "catalog" for `registry`.
_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,512}")
_ACTION = re.compile(r"[a-z]+|\*")


@dataclass(frozen=True, slots=True)
class Access:
    """One resource and the actions on it, e.g. ``repository:acme/app:pull,push``."""

    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


CATALOG = Access("registry", "catalog", frozenset({"*"}))


def _parse_one(scope: str) -> Access | None:
    first, last = scope.find(":"), scope.rfind(":")
    if first == -1 or first == last:
        return None
    type_match = _TYPE.fullmatch(scope[:first])
    name = scope[first + 1 : last]
    actions = frozenset(a for a in scope[last + 1 :].split(",") if a)
    if type_match is None or not _NAME.fullmatch(name) or not actions:
        return None
    if not all(_ACTION.fullmatch(action) for action in actions):
        return None
    return Access(type_match.group(1), name, actions)


def parse_scopes(values: Iterable[str]) -> list[Access]:
    """Parse ``scope`` parameters; each value may hold several space-separated scopes.

    The name may contain ':' (``repository:localhost:5000/a:pull``): the type ends at the first
    ':' and the actions start after the last. A resource class (``repository(plugin)``) is
    dropped. Malformed scopes are ignored; this never raises. Duplicates are kept (see
    :func:`merge`).
    """
    accesses: list[Access] = []
    for value in values:
        for scope in value.split():
            access = _parse_one(scope)
            if access is not None:
                accesses.append(access)
    return accesses


def merge(accesses: Iterable[Access]) -> list[Access]:
    """Union the actions of accesses to the same (type, name), in first-seen order."""
    merged: dict[tuple[str, str], frozenset[str]] = {}
    for access in accesses:
        key = (access.type, access.name)
        merged[key] = merged.get(key, frozenset()) | access.actions
    return [Access(type_, name, actions) for (type_, name), actions in merged.items()]


def required_access(
    method: str, kind: Kind, name: str | None, query: Mapping[str, str]
) -> list[Access]:
    """The access a request needs (client-visible names; the caller resolves them).

    ``/v2/`` needs only authentication (``[]``); the catalog needs ``registry:catalog:*``.
    GET/HEAD need pull, DELETE needs delete, and any other method needs pull and push (what
    Docker asks for when pushing). A cross-repository mount (POST ``?mount=&from=``)
    additionally needs pull on the source; a ``from`` that is not a repository name adds
    nothing (the upload then proceeds as a plain one).
    """
    if kind is Kind.BASE:
        return []
    if kind is Kind.CATALOG:
        return [CATALOG]
    if name is None:
        raise ValueError(f"{kind} endpoint without a repository name")
    verb = method.upper()
    if verb in ("GET", "HEAD"):
        actions = frozenset({PULL})
    elif verb == "DELETE":
        actions = frozenset({DELETE})
    else:  # POST/PUT/PATCH on uploads and manifests; anything else is at least as strict
        actions = frozenset({PULL, PUSH})
    needed = [Access("repository", name, actions)]
    if verb == "POST" and kind is Kind.UPLOADS and query.get("mount") and query.get("from"):
        try:
            source = parse_repository_name(query["from"])
        except NameInvalid:
            return needed
        needed.append(Access("repository", source.value, frozenset({PULL})))
    return merge(needed)
