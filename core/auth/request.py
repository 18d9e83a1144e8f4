"""What a gate sees of a ``/v2/`` request, and what it answers: the contract origin's
``Gate`` and the edge's ``EdgeGate`` both implement (same rules, same challenges)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.endpoints import Endpoint
from core.reference import RepositoryName


@dataclass(frozen=True)
class Caller:
    """Who made the request, as far as listing is concerned."""

    orgs: frozenset[str]
    everything: bool = False  # auth disabled: the registry is one open namespace
    #: Bound to one project: of its orgs, it reaches only ``<org>/<project>``.
    project: str | None = None


@dataclass(frozen=True)
class Authorization:
    caller: Caller
    #: External name → internal name, for every repository the request touches.
    names: Mapping[str, RepositoryName] = field(default_factory=dict)
    #: False when the caller may not read the ``from`` repository of a mount: the upload
    #: then proceeds as a plain one (as Distribution does) instead of failing.
    mount_allowed: bool = True


@dataclass(frozen=True)
class RequestView:
    method: str
    host: str
    scheme: str
    authorization: str | None
    endpoint: Endpoint
    query: Mapping[str, str]
    #: The peer's address and the ``X-Forwarded-For`` it sent: which client is asking, for
    #: per-client limits (a gate trusts the header only from proxies it is told to trust).
    remote_addr: str | None = None
    forwarded_for: str | None = None
