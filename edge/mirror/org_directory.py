"""What the edge knows of orgs, for routing: whether a name's first part is an org of this
system, and the upstreams that org registered (each served as a site of its own).

Both come from one origin call per org (:meth:`edge.origin_control.OriginControl.org_upstreams`,
made with the edge's own credential), kept for ``org_upstreams_refresh_seconds`` and then
asked again, one request per org at a time. When origin cannot be asked, the last answer is
used however old it is (stale-if-error): an org never stops being one (slugs are never
reused), and an upstream config a few minutes late is better than no pulls; origin is asked
again a few seconds later. With no answer at all the request gets ``Unavailable``.

An org's upstream is served by a site of its own per (org, name, URL, username, password):
one registry client per credential. Its cache namespace carries the org, the name and the
URL and username: what a repository holds (tags, and which digests a caller may read through
it) is only ever what that org fetched from that registry, and content fetched with its
credentials never answers another org or an anonymous caller. A changed registration gets a
new site; the old one is closed when the edge stops (a request may still be using it).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from core.auth.access import Mirror
from core.client.credentials import Credentials
from core.errors import Unavailable
from core.upstream_names import check_upstream_url, is_docker_hub, is_upstream_name
from edge.mirror.site import MirrorSite, SiteSpec
from edge.origin_control import RegisteredUpstream

log = logging.getLogger("depot.edge.mirror")

DIRECTORY_SIZE = 10_000
#: After origin failed to answer for an org, its last answer is used this long.
RETRY_SECONDS = 5.0


class UpstreamSource(Protocol):
    """Origin's answers (:class:`edge.origin_control.OriginControl` has them)."""

    async def org_upstreams(self, org: str) -> list[RegisteredUpstream] | None: ...


@dataclass
class OrgEntry:
    exists: bool
    sites: Mapping[str, MirrorSite]
    fetched_at: float  # trio time
    fingerprints: Mapping[str, str] = field(default_factory=dict)


class OrgDirectory:
    def __init__(
        self,
        source: UpstreamSource,
        make_site: Callable[[SiteSpec], MirrorSite],
        *,
        refresh_seconds: float,
        size: int = DIRECTORY_SIZE,
    ) -> None:
        self._source = source
        self._make_site = make_site
        self._refresh = refresh_seconds
        self._size = size
        self._entries: OrderedDict[str, OrgEntry] = OrderedDict()
        self._locks: dict[str, trio.Lock] = {}
        self._retired: list[MirrorSite] = []

    async def is_org(self, slug: str) -> bool:
        return (await self.lookup(slug)).exists

    async def site(self, slug: str, name: str) -> MirrorSite | None:
        """The site of upstream ``name`` of org ``slug``; None when it registered none."""
        return (await self.lookup(slug)).sites.get(name)

    async def lookup(self, slug: str) -> OrgEntry:
        entry = self._fresh(slug)
        if entry is not None:
            return entry
        lock = self._locks.setdefault(slug, trio.Lock())
        try:
            async with lock:  # one origin request per org; the others find its answer
                entry = self._fresh(slug)
                if entry is not None:
                    return entry
                return await self._fetch(slug)
        finally:
            if not lock.statistics().tasks_waiting and not lock.locked():
                self._locks.pop(slug, None)

    def forget(self, slug: str | None = None) -> None:
        """Ask origin again on the next lookup of ``slug`` (None: of every org): its
        upstreams changed (origin's event feed). Sites whose upstream is unchanged are kept."""
        for key in [slug] if slug is not None else list(self._entries):
            entry = self._entries.get(key)
            if entry is not None:
                entry.fetched_at = -math.inf

    def _fresh(self, slug: str) -> OrgEntry | None:
        entry = self._entries.get(slug)
        if entry is None or trio.current_time() - entry.fetched_at >= self._refresh:
            return None
        self._entries.move_to_end(slug)
        return entry

    async def _fetch(self, slug: str) -> OrgEntry:
        old = self._entries.get(slug)
        try:
            registered = await self._source.org_upstreams(slug)
        except Unavailable as exc:
            if old is None:
                raise
            log.warning("cannot refresh org %s from origin, using what is known: %s", slug, exc)
            # Asked again in a few seconds, not by every request meanwhile.
            old.fetched_at = trio.current_time() - self._refresh + min(RETRY_SECONDS, self._refresh)
            return old
        entry = self._entry(slug, registered, old)
        self._entries[slug] = entry
        self._entries.move_to_end(slug)
        while len(self._entries) > self._size:
            _, evicted = self._entries.popitem(last=False)
            self._retired.extend(evicted.sites.values())
        return entry

    def _entry(
        self, slug: str, registered: list[RegisteredUpstream] | None, old: OrgEntry | None
    ) -> OrgEntry:
        now = trio.current_time()
        if registered is None:
            if old is not None:
                self._retired.extend(old.sites.values())
            return OrgEntry(False, {}, now)
        sites: dict[str, MirrorSite] = {}
        fingerprints: dict[str, str] = {}
        for upstream in registered:
            spec = _spec(slug, upstream)
            if spec is None or spec.name in sites:
                log.warning("org %s: upstream %r is unusable here: skipped", slug, upstream.name)
                continue
            fingerprint = _fingerprint(upstream)
            kept = None
            if old is not None and old.fingerprints.get(spec.name) == fingerprint:
                kept = old.sites.get(spec.name)
            sites[spec.name] = kept if kept is not None else self._make_site(spec)
            fingerprints[spec.name] = fingerprint
        if old is not None:
            self._retired.extend(s for s in old.sites.values() if s not in sites.values())
        return OrgEntry(True, sites, now, fingerprints)

    async def aclose(self) -> None:
        sites = [*self._retired, *(s for e in self._entries.values() for s in e.sites.values())]
        self._entries.clear()
        self._retired.clear()
        for site in sites:
            await site.aclose()


def _spec(slug: str, upstream: RegisteredUpstream) -> SiteSpec | None:
    if not is_upstream_name(upstream.name):
        return None
    try:
        url = check_upstream_url(upstream.url)
    except ValueError:
        return None
    credentials = None
    if upstream.username or upstream.password:
        credentials = Credentials(upstream.username, upstream.password)
    place = hashlib.sha256(f"{url}\n{upstream.username}".encode()).hexdigest()[:16]
    return SiteSpec(
        label=f"{slug}/{upstream.name}",
        name=upstream.name,
        url=url,
        credentials=credentials,
        resource=Mirror(upstream.name, slug),
        namespace=f"org:{slug}:{upstream.name}:{place}",
        docker_hub=is_docker_hub(upstream.name, url),
    )


def _fingerprint(upstream: RegisteredUpstream) -> str:
    """What makes a site: a changed password gets a new client (never kept in clear here)."""
    text = "\n".join((upstream.url, upstream.username, upstream.password))
    return hashlib.sha256(text.encode()).hexdigest()
