"""Which upstream answers a ``/v2/`` request: the origin, an operator's mirror, or an org's.

Every way clients reach a mirror, in the order they are told apart:

1. an explicit name, or a podman/CRI-O ``registries.conf`` mirror whose location carries the
   upstream as a path prefix: ``EDGE/docker.io/library/alpine`` → mirror ``docker.io``,
   ``library/alpine`` (an upstream's name has a dot, an org's never does);
2. an org's upstream: ``EDGE/acme/ghcr.io/owner/image`` (on an org subdomain:
   ``acme.BASE/ghcr.io/owner/image``) → org ``acme``'s upstream ``ghcr.io``, ``owner/image``,
   when acme registered one of that name (else it is an org repository like any other);
3. containerd's ``hosts.toml``: requests carry ``?ns=docker.io`` (the registry the image
   reference names) → that mirror, the name as is. An ``ns`` this edge does not mirror is its
   own host or origin's, as before mirrors existed: the origin;
4. Docker Engine's ``registry-mirrors`` sends Docker Hub names with no ``ns``: a name whose
   first part is not an org of this system goes to the default mirror (``docker.io`` when
   mirrored). An org subdomain's names, and one-part names (legacy project ids), are
   origin's.

Docker Hub's ``library/`` rule applies at that mirror (``docker.io/alpine`` is
``library/alpine``). ``/v2/`` with a mirror's ``ns`` is that mirror's; without, origin's; the
catalog is always origin's.

Everything else is origin's, exactly as before: with no mirror configured and no org
upstream named, routing asks origin nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.auth.request import RequestView
from core.endpoints import Kind
from core.tenancy import is_org_slug, org_from_host
from core.upstream_names import is_upstream_name
from core.web.v2 import V2Routes
from edge.mirror.org_directory import OrgDirectory
from edge.mirror.site import MirrorAuthority, MirrorSite


class Router:
    def __init__(
        self,
        origin: V2Routes,
        authority: MirrorAuthority,
        mirrors: Mapping[str, MirrorSite],
        orgs: OrgDirectory,
        *,
        default: str | None,
        base_domain: str = "",
    ) -> None:
        self._origin = origin
        self._authority = authority
        self._mirrors = dict(mirrors)
        self._orgs = orgs
        self._default = self._mirrors[default] if default is not None else None
        self._base_domain = base_domain or None

    async def choose(self, view: RequestView) -> V2Routes:
        """The routes for ``view`` (a :data:`core.web.v2.Chooser`)."""
        ns = (view.query.get("ns") or "").strip().lower()
        by_ns = self._mirrors.get(ns) if ns else None
        name = view.endpoint.name
        if name is None:  # /v2/ is the mirror's with its ns; the catalog is origin's
            base = view.endpoint.kind is Kind.BASE
            return self._routes(by_ns, None) if by_ns is not None and base else self._origin
        first, _, rest = name.value.partition("/")
        explicit = self._mirrors.get(first)
        if explicit is not None and rest:
            return self._routes(explicit, rest)
        host_org = org_from_host(view.host, self._base_domain)
        if host_org is not None:  # acme.BASE/ghcr.io/owner/image
            org, upstream, path = host_org, first, rest
        else:  # acme/ghcr.io/owner/image
            org, (upstream, _, path) = first, rest.partition("/")
        if path and is_upstream_name(upstream) and is_org_slug(org):
            site = await self._orgs.site(org, upstream)
            if site is not None:
                return self._routes(site, path)
        if by_ns is not None:
            return self._routes(by_ns, name.value)
        if ns or self._default is None or host_org is not None or not rest:
            return self._origin
        if is_org_slug(first) and await self._orgs.is_org(first):
            return self._origin
        return self._routes(self._default, name.value)

    def _routes(self, site: MirrorSite, path: str | None) -> V2Routes:
        return site.routes_for(self._authority, path)
