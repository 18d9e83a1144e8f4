"""Listings: tags, the catalog and referrers, each following ``Link`` pages (``n``/``last``).

A page is a JSON document of at most :data:`MAX_PAGE_BYTES`; entries that are not valid tags,
repository names or descriptors are skipped (a registry's odd entry must not hide the rest).
A registry that links in a circle, or past :data:`MAX_PAGES`, is ``Unavailable``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from core import mediatypes
from core.client.auth import CATALOG_SCOPE, pull_scope
from core.client.exchange import Exchange
from core.digest import Digest, parse_digest
from core.errors import DigestInvalid, NameInvalid, NameUnknown, NotFound, Unavailable
from core.reference import RepositoryName, Tag, is_tag, parse_repository_name

log = logging.getLogger("depot.client")

#: One page of a tag list, the catalog or a referrers index.
MAX_PAGE_BYTES = 4 * 1024 * 1024
#: Pages followed through ``Link`` before giving up.
MAX_PAGES = 10_000
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;[^,]*\brel="?next"?', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Referrer:
    digest: Digest
    media_type: str
    size: int
    artifact_type: str | None
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Referrers:
    manifests: tuple[Referrer, ...]
    filters_applied: frozenset[str]  # from ``OCI-Filters-Applied`` (e.g. "artifactType")


async def tags(x: Exchange, repository: RepositoryName, page_size: int | None) -> list[Tag]:
    found: list[Tag] = []
    url = f"/v2/{repository}/tags/list"
    async for document in _pages(x, url, pull_scope(repository), page_size, NameUnknown):
        found.extend(Tag(t) for t in _strings(document.get("tags")) if is_tag(t))
    return found


async def catalog(x: Exchange, page_size: int | None) -> list[RepositoryName]:
    names: list[RepositoryName] = []
    async for document in _pages(x, "/v2/_catalog", CATALOG_SCOPE, page_size, NotFound):
        names.extend(_names(_strings(document.get("repositories"))))
    return names


async def referrers(
    x: Exchange, repository: RepositoryName, subject: Digest, artifact_type: str | None
) -> Referrers | None:
    """None when the registry has no referrers API: a 404 that is not ``NAME_UNKNOWN``, or an
    answer that is not an index."""
    url = f"/v2/{repository}/referrers/{subject}"
    params = {"artifactType": artifact_type} if artifact_type else None
    found: list[Referrer] = []
    filters: frozenset[str] = frozenset()
    for _ in range(MAX_PAGES):
        response, body = await x.exchange(
            "GET",
            url,
            scope=pull_scope(repository),
            params=params,
            headers={"Accept": mediatypes.OCI_INDEX},
            limit=MAX_PAGE_BYTES,
        )
        if response.status_code == 404:
            error = x.error(response, body, NotFound)
            if isinstance(error, NameUnknown):
                raise error
            return None
        if response.status_code != 200:
            raise x.error(response, body, NotFound)
        document = _json_object(body, x.host, "referrers")
        if not isinstance(document.get("manifests"), list):
            return None
        found.extend(_referrers(document["manifests"]))
        applied = response.headers.get("OCI-Filters-Applied", "")
        filters |= frozenset(f.strip() for f in applied.split(",") if f.strip())
        following = next_link(response.headers.get("Link"))
        if following is None:
            return Referrers(tuple(found), filters)
        url, params = following, None
    raise Unavailable(f"{x.host} linked more than {MAX_PAGES} pages")


def next_link(header: str | None) -> str | None:
    """The target of an RFC 5988 ``Link: <...>; rel="next"``."""
    match = _LINK_NEXT.search(header or "")
    return match.group(1) if match else None


async def _pages(
    x: Exchange,
    url: str,
    scope: str,
    page_size: int | None,
    not_found: type[NameUnknown | NotFound],
) -> AsyncIterator[dict[str, Any]]:
    params = {"n": str(page_size)} if page_size is not None else None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        response, body = await x.exchange(
            "GET", url, scope=scope, params=params, limit=MAX_PAGE_BYTES
        )
        if response.status_code != 200:
            raise x.error(response, body, not_found)
        yield _json_object(body, x.host, url)
        following = next_link(response.headers.get("Link"))
        if following is None:
            return
        if following in seen:
            raise Unavailable(f"{x.host} linked back to a page it already sent")
        seen.add(following)
        url, params = following, None
    raise Unavailable(f"{x.host} linked more than {MAX_PAGES} pages")


def _json_object(body: bytes, host: str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise Unavailable(f"{host} sent malformed JSON", detail={"what": what}) from exc
    if not isinstance(document, dict):
        raise Unavailable(f"{host} sent JSON that is not an object", detail={"what": what})
    return document


def _strings(value: Any) -> Iterator[str]:
    """The strings of a JSON list (``null``, as Distribution sends for no tags, is none)."""
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, str))


def _names(values: Iterator[str]) -> Iterator[RepositoryName]:
    for value in values:
        try:
            yield parse_repository_name(value)
        except NameInvalid:
            log.warning("skipping an invalid repository name in a catalog: %r", value[:100])


def _referrers(entries: list[Any]) -> Iterator[Referrer]:
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            digest = parse_digest(str(entry.get("digest", "")))
        except DigestInvalid:
            continue
        size, media_type = entry.get("size"), entry.get("mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(media_type, str):
            continue
        artifact_type = entry.get("artifactType")
        annotations = entry.get("annotations")
        yield Referrer(
            digest,
            media_type,
            size,
            artifact_type if isinstance(artifact_type, str) else None,
            {k: v for k, v in annotations.items() if isinstance(v, str)}
            if isinstance(annotations, dict)
            else {},
        )
