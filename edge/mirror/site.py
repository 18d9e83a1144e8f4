"""One mirrored upstream as the edge serves it: its registry client, its pull-through, its
routes.

A site is an operator's mirror (``--mirror docker.io=URL``) or an upstream an org registered
(``/api/v1/orgs/{org}/upstreams``). Either way it has:

- one :class:`~core.client.registry.RegistryClient` for (upstream, credential), on a pool of
  its own whose answers are counted per upstream (:class:`~edge.mirror.metrics.ObservingTransport`);
- a :class:`~edge.pullthrough.PullThrough` over the edge's one cache and its one set of fills
  (blobs and manifests by digest are shared with every other upstream; a digest is filled
  once whoever asks), with tags and repository links in a cache namespace of the site's own;
- the pull side of ``/v2/`` (base, manifests, blobs, tag lists), and a 405 ``UNSUPPORTED``
  saying so for anything else (a push to a mirror name).

Routes are chosen per request (:mod:`edge.mirror.routing`): :meth:`MirrorSite.routes_for`
puts them behind a gate that knows the repository the request names at the upstream and the
:class:`~core.auth.access.Mirror` resource the edge's gate decides on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx
import trio
from quart import request

from config.settings import EdgeSettings
from core.auth.access import Mirror
from core.auth.request import Authorization, RequestView
from core.client.credentials import ANONYMOUS, Credentials, CredentialsProvider, StaticCredentials
from core.client.http import DEFAULT_MAX_CONNECTIONS, open_http_client
from core.client.registry import RegistryClient
from core.endpoints import TagsEndpoint
from core.errors import Unavailable
from core.pagination import next_link, parse_page
from core.reference import RepositoryName
from core.upstream_names import upstream_repository
from core.web.response import RegistryResponse as Response
from core.web.v2 import Call, V2Routes
from edge.app import PullHandlers
from edge.cache.store import EdgeCache
from edge.fill import Fills
from edge.metrics import EdgeMetrics
from edge.mirror.metrics import MirrorMetrics, ObservingTransport
from edge.mirror.upstream import MirrorUpstream
from edge.pullthrough import PullThrough

log = logging.getLogger("depot.edge.mirror")


class MirrorAuthority(Protocol):
    """Decides mirror requests (:meth:`edge.auth.EdgeGate.authorize_mirror`)."""

    async def authorize_mirror(
        self, view: RequestView, resource: Mirror, repository: RepositoryName | None
    ) -> Authorization: ...


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """What a site is made from (settings or an org's registration)."""

    label: str  # in logs and metrics: ``docker.io``; an org's: ``acme/ghcr.io``
    name: str  # how clients name it: ``docker.io``
    url: str
    credentials: Credentials | None
    resource: Mirror
    namespace: str  # of its tags and links in the cache
    docker_hub: bool  # one-component names are ``library/<name>``


@dataclass(frozen=True, slots=True)
class _Unrouted:
    """The gate of a site's route template: always replaced per request."""

    async def authorize(self, view: RequestView) -> Authorization:
        raise AssertionError("a mirror's routes are used through routes_for()")


@dataclass(frozen=True, slots=True)
class _RequestGate:
    authority: MirrorAuthority
    resource: Mirror
    repository: RepositoryName | None

    async def authorize(self, view: RequestView) -> Authorization:
        return await self.authority.authorize_mirror(view, self.resource, self.repository)


class MirrorSite:
    def __init__(
        self,
        spec: SiteSpec,
        http: httpx.AsyncClient,
        upstream: MirrorUpstream,
        pullthrough: PullThrough,
        metrics: EdgeMetrics,
        mirror_metrics: MirrorMetrics,
        deadline_seconds: float,
    ) -> None:
        self.spec = spec
        self.upstream = upstream
        self.pullthrough = pullthrough
        self._http = http
        self._deadline = deadline_seconds
        stale = mirror_metrics.stale_serves.labels(spec.label)
        handlers = PullHandlers(
            pullthrough,
            metrics,
            stale_warning=f'299 - "Response is stale: {spec.label} unavailable"',
            on_stale=stale.inc,
        )
        unsupported = (
            f"{spec.name} is mirrored here for pulls only (manifests, blobs, tag lists): "
            f"push to {spec.name} itself"
        )
        self._routes = handlers.routes(_Unrouted(), fallback=None, unsupported=unsupported)
        self._routes.on(TagsEndpoint, ("GET",), self.tags)

    def routes_for(self, authority: MirrorAuthority, path: str | None) -> V2Routes:
        """The site's routes for one request naming ``path`` at the upstream (None: no
        repository, e.g. ``/v2/``); NameInvalid when ``path`` is no repository name."""
        repository = None
        if path is not None:
            repository = upstream_repository(path, docker_hub=self.spec.docker_hub)
        return self._routes.with_gate(_RequestGate(authority, self.spec.resource, repository))

    async def tags(self, call: Call[TagsEndpoint]) -> Response:
        """The upstream's tag list, asked each time (not cached), paged here."""
        page = parse_page(request.args)
        try:
            with trio.fail_after(self._deadline):
                found = await self.upstream.list_tags(call.repository)
        except trio.TooSlowError as exc:
            raise Unavailable(f"{self.spec.label} did not answer in time") from exc
        listed = sorted(str(tag) for tag in found)
        after = [tag for tag in listed if page.last is None or tag > page.last]
        document = {"name": call.endpoint.name.value, "tags": after[: page.n]}
        response = Response(json.dumps(document), content_type="application/json")
        link = next_link(request.path, page, after)
        if link:
            response.headers["Link"] = link
        return response

    async def aclose(self) -> None:
        await self._http.aclose()


def open_site(
    spec: SiteSpec,
    *,
    settings: EdgeSettings,
    cache: EdgeCache,
    fills: Fills,
    metrics: EdgeMetrics,
    mirror_metrics: MirrorMetrics,
    clock: Callable[[], float],
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> MirrorSite:
    """A site with a connection pool of its own: ``aclose()`` it when done."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    network = httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False)
    transport = ObservingTransport(network, mirror_metrics, spec.label)
    http = open_http_client(spec.url, auth_header=None, transport=transport)
    provider: CredentialsProvider = ANONYMOUS
    if spec.credentials is not None:
        provider = StaticCredentials(spec.credentials)
    client = RegistryClient(http, provider)
    upstream = MirrorUpstream(
        spec.label, client, mirror_metrics, has_credentials=spec.credentials is not None
    )
    pullthrough = PullThrough(
        settings,
        cache.namespaced(spec.namespace),
        fills,
        upstream,
        metrics,
        clock,
        name=spec.label,
        upstream_retry_after=True,
    )
    return MirrorSite(
        spec,
        http,
        upstream,
        pullthrough,
        metrics,
        mirror_metrics,
        settings.upstream_deadline_seconds,
    )
