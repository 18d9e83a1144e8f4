"""What the edge does about each event of origin's feed (``origin/metadata/events.py``
names the kinds), and about losing track of the feed.

- ``tag.moved`` / ``tag.deleted``: drop the cached tag (the next pull asks origin).
- ``manifest.deleted``, and ``blob.deleted`` with a repository: the repository may no longer
  be served that digest from the cache (its link is dropped; the next request asks origin,
  which answers 404). ``blob.deleted`` without one (collected from the content store): the
  cached bytes are deleted too.
- ``token.revoked`` / ``token.expired``: grants issued for the token are refused
  (:class:`~edge.events.revocations.Revocations`), cached exchanges and remembered
  ``/token`` answers for it forgotten.
- ``repository.visibility``: cached access decisions for the repository are dropped
  (exchanged grants, remembered ``/token`` answers) and, once private, access that came only
  from its being public is dropped from every grant presented.
- ``build.expired`` / ``build.deleted``: the build's tags dropped and its manifests no
  longer served from the cache to its repository.
- ``org.upstreams``: the org's registered upstreams are asked for again.

:meth:`EventActions.revalidate_all` is for a follower that lost track (first start, or
origin's 410): every tag becomes stale, every repository link is forgotten (each is
confirmed with origin again on its next use), every cached exchange and remembered
``/token`` answer is dropped. The freshness windows stay the backstop for anything missed.

Only origin's namespace of the cache is touched (mirrors' tags and links are their own).
An event whose fields do not parse is skipped with a warning: origin wrote it, and one bad
event must not stop the follower.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from core.digest import Digest, parse_digest
from core.errors import RegistryError
from core.reference import RepositoryName, Tag, parse_repository_name, parse_tag
from edge.auth import EdgeGate
from edge.cache.store import EdgeCache
from edge.token_memory import TokenMemory

log = logging.getLogger("depot.edge.events")


class Orgs(Protocol):
    def forget(self, slug: str | None = None) -> None: ...


class EventActions:
    def __init__(
        self,
        cache: EdgeCache,
        gate: EdgeGate,
        memory: TokenMemory,
        orgs: Orgs | None,
        clock: Callable[[], float],
    ) -> None:
        self._cache = cache
        self._gate = gate
        self._memory = memory
        self._orgs = orgs
        self._clock = clock

    async def apply(self, event: dict[str, Any]) -> bool:
        """Act on one event; False when it was skipped (unknown kind, malformed)."""
        kind = event.get("kind")
        try:
            match kind:
                case "tag.moved" | "tag.deleted":
                    tag = _tag(event.get("tag"))
                    await self._cache.forget_tag(_repository(event), tag, self._clock())
                case "manifest.deleted":
                    await self._cache.drop_links(_repository(event), [_digest(event)])
                case "blob.deleted":
                    if event.get("repository") is None:
                        await self._cache.drop_blob(_digest(event))
                    else:
                        await self._cache.drop_links(_repository(event), [_digest(event)])
                case "token.revoked" | "token.expired":
                    self._revoke(_text(event.get("token")))
                case "repository.visibility":
                    self._visibility(_repository(event), event.get("public") is True)
                case "build.expired" | "build.deleted":
                    await self._build(event)
                case "org.upstreams":
                    if self._orgs is not None:
                        self._orgs.forget(_text(event.get("org")))
                case _:
                    log.debug("ignoring an event of unknown kind %r", kind)
                    return False
        except (_Malformed, RegistryError) as exc:
            log.warning("skipping malformed event %r (%s): %s", event.get("seq"), kind, exc)
            return False
        return True

    def _revoke(self, parent: str) -> None:
        self._gate.revocations.revoke(parent, self._clock())
        self._gate.forget_parent(parent)
        self._memory.forget_parent(parent)

    def _visibility(self, repository: RepositoryName, public: bool) -> None:
        name = repository.value
        if public:
            self._gate.revocations.made_public(name)
        else:
            self._gate.revocations.made_private(name, self._clock())
        self._gate.forget_repository(name)
        self._memory.forget_repository(name)

    async def _build(self, event: dict[str, Any]) -> None:
        repository = _repository(event)
        tags, manifests = event.get("tags"), event.get("manifests")
        for tag in tags if isinstance(tags, list) else []:
            await self._cache.forget_tag(repository, _tag(tag), self._clock())
        digests = [_parse_digest(d) for d in (manifests if isinstance(manifests, list) else [])]
        await self._cache.drop_links(repository, digests)

    async def revalidate_all(self) -> None:
        """Distrust everything held (see the module's docstring)."""
        stale = await self._cache.stale_tags()
        links = await self._cache.drop_all_links()
        self._gate.forget_all()
        self._memory.clear()
        if self._orgs is not None:
            self._orgs.forget()
        log.warning(
            "revalidating everything from origin: %d tags made stale, %d links dropped",
            stale,
            links,
        )


class _Malformed(Exception):
    pass


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Malformed("a field is missing")
    return value


def _repository(event: dict[str, Any]) -> RepositoryName:
    return parse_repository_name(_text(event.get("repository")))


def _tag(value: object) -> Tag:
    return parse_tag(_text(value))


def _digest(event: dict[str, Any]) -> Digest:
    return _parse_digest(event.get("digest"))


def _parse_digest(value: object) -> Digest:
    return parse_digest(_text(value))
