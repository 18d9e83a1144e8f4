"""The edge's disk cache: blobs, manifests, tags and repository links in one diskcache.

Layout under the edge's cache directory (one filesystem)::

    cache/     diskcache (SQLite index + value files); nothing else may live here, because
               ``check(fix=True)`` at start deletes every file the index does not know
    spool/     fills in progress: ``<digest-hex>.<random>.spool`` (see edge/cache/spool.py)
    counters/  a second diskcache holding hits, misses and evictions (never culled)
    meta/      tag entries and repository links: small, read on every request, so in a
               diskcache whose reads write nothing (least-recently-STORED eviction; the
               blob cache's LRU turns every read into a write transaction)

Values arrive typed (``RepositoryName``, ``Digest``, ``Tag``): nothing here parses a request's
text again. Keys: ``blob:<digest>`` (a file, adopted by rename, tagged with its size),
``manifest:<digest>`` (the payload), ``tag:<repository>:<tag>`` (JSON text),
``link:<repository>@<digest>``, ``mediatype:<repository>@<digest>``. Repository names and
tags hold no ``:`` or ``@``, so keys cannot collide.

A manifest's media type is not a property of its bytes alone: the same bytes, pushed without
a ``mediaType`` field, are an OCI manifest in one org and a Docker one in another (origin
keeps the type each push declared). So the type served is the payload's own ``mediaType``
when it has one, else the one recorded for the repository asking — never whichever
repository fetched the bytes first (that let one org change what another was served).

Namespaces: blobs and manifests are content-addressed, the same bytes whoever fetched them,
so every upstream shares them (and the LRU). Tags and repository links say what a NAME
holds and who may read a digest through it, so they belong to one upstream:
:meth:`EdgeCache.namespaced` gives a view whose tag and link keys carry the namespace
(``tag:<namespace>|<repository>:<tag>``, ``link:<namespace>|<repository>@<digest>``; names
hold no ``|``). The origin's entries have no namespace, so its keys are as they always were,
and origin's ``acme/app`` links never authorise a mirror's ``acme/app`` nor the reverse.

Eviction is ours: diskcache's automatic culling is off (``cull_limit=0``; its batch cull can
evict the value just stored) and :meth:`EdgeCache.adopt_blob` evicts least-recently-used
entries one at a time, never the blob just adopted, until the volume fits (reading diskcache's
private index: see :mod:`edge.cache.diskcache_private`). Every blocking call runs in a worker
thread under the cache's own limiter. diskcache is thread- and process-safe, so
``stats``/``purge`` work from another process while an edge runs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import diskcache
import trio

from core import mediatypes
from core.digest import Digest, parse_digest
from core.errors import DigestInvalid
from core.reference import RepositoryName, Tag
from edge.cache.disk import Adopt, AdoptingDisk
from edge.cache.diskcache_private import lru_victim
from edge.cache.hot import Lru
from edge.cache.spool import remove_stale_spools

log = logging.getLogger("depot.edge.cache")

T = TypeVar("T")

#: Threads this cache may occupy at once (SQLite serialises writers anyway).
THREADS = 8
META_SIZE_LIMIT = 256 << 20
#: Manifests kept in memory as well (the rest are read from disk).
HOT_MANIFEST_BYTES = 32 << 20
#: Tag entries kept in memory, answered from there only while fresh (see fresh_tag).
HOT_TAGS = 16384

_BLOB, _MANIFEST, _TAG, _LINK = "blob:", "manifest:", "tag:", "link:"
_MEDIA_TYPE = "mediatype:"
#: How long what origin's event feed dropped is guarded against a request that asked origin
#: before the change and stores its answer after (a fill or revalidation in flight is bounded
#: by the upstream deadline, far below this).
TOMBSTONE_SECONDS = 60.0
_MAX_TOMBSTONES = 100_000
_SPOOL_SUFFIX = ".spool"


@dataclass(frozen=True, slots=True)
class CachedBlob:
    """A cached blob, opened: reading ``file`` keeps working if the entry is evicted."""

    size: int
    file: BinaryIO

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True, slots=True)
class TagEntry:
    digest: Digest
    media_type: str
    fetched_at: float  # POSIX seconds: when the upstream last confirmed it


@dataclass(frozen=True, slots=True)
class CacheStats:
    volume_bytes: int
    size_limit: int
    entries: int
    blobs: int
    evictions: int
    hits: int  # blob lookups only
    misses: int


class EdgeCache:
    """The edge's cache; open it with :meth:`open`. Safe to share between trio tasks."""

    def __init__(
        self,
        cache: diskcache.Cache,
        counters: diskcache.Cache,
        meta: diskcache.Cache,
        spool_dir: Path,
        size_limit: int,
        max_blob_bytes: int,
    ) -> None:
        self._cache = cache
        self._counters = counters
        self._meta = meta
        self.spool_dir = spool_dir
        self.size_limit = size_limit
        self.max_blob_bytes = max_blob_bytes
        self._limiter = trio.CapacityLimiter(THREADS)
        # digest -> (the payload's own mediaType or None, payload)
        self._hot_manifests: Lru[Digest, tuple[str | None, bytes]] = Lru(
            8192, HOT_MANIFEST_BYTES, weigh=lambda entry: len(entry[1])
        )
        self._hot_links: Lru[str, bool] = Lru(262144, None)
        self._hot_media_types: Lru[str, str] = Lru(65536, None)
        # tag key -> entry. Every method that drops tag entries must drop them here too
        # (drop_tag, purge; or call forget_hot_tags).
        self._hot_tags: Lru[str, TagEntry] = Lru(HOT_TAGS, None)
        self.namespace = ""  # of tags and links; "" for the origin's
        # meta key → (what the event said: the edge's POSIX time for tags, or None for
        # links; trio time it was set), shared by the namespaced views (keys differ).
        self._tombstones: dict[str, tuple[float | None, float]] = {}

    def namespaced(self, namespace: str) -> EdgeCache:
        """A view of this cache whose tags and repository links live in ``namespace`` (one
        per upstream); blobs, manifests, counters, limiter and memory are shared. The view
        owns nothing: close the cache it came from."""
        if not namespace or "|" in namespace:
            raise ValueError(f"invalid cache namespace {namespace!r}")
        view = copy.copy(self)
        view.namespace = namespace
        return view

    @classmethod
    def open(
        cls,
        directory: Path,
        size_limit: int | None = None,
        *,
        max_blob_bytes: int | None = None,
        recover: bool = True,
    ) -> EdgeCache:
        """Open (creating) the cache under ``directory``; blocking, call it at start.

        ``size_limit`` None keeps the limit recorded by the last open (for tools attaching to
        an edge's cache). Blobs over ``max_blob_bytes`` (default half the limit) are served
        but never cached. ``recover`` deletes spools left by a killed process (a live fill's
        spool is locked and kept) and runs diskcache's ``check(fix=True)``, which also
        deletes files the index does not know (a value whose ``set`` was killed mid-way).
        """
        cache_dir, spool_dir = directory / "cache", directory / "spool"
        spool_dir.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {"eviction_policy": "least-recently-used", "cull_limit": 0}
        if size_limit is not None:
            settings["size_limit"] = size_limit
        cache = diskcache.Cache(str(cache_dir), disk=AdoptingDisk, **settings)
        counters = diskcache.Cache(str(directory / "counters"), cull_limit=0)
        meta = diskcache.Cache(
            str(directory / "meta"),
            eviction_policy="least-recently-stored",
            size_limit=META_SIZE_LIMIT,
        )
        if recover:
            removed = remove_stale_spools(spool_dir)
            with warnings.catch_warnings():
                warnings.simplefilter("always")  # recorded by check(), even under -W error
                problems = cache.check(fix=True, retry=True)
            if removed or problems:
                log.warning(
                    "cache recovery: %d stale spools deleted, %d fixes", removed, len(problems)
                )
                for problem in problems:
                    log.info("cache recovery: %s", problem.message)
        limit = int(cache.size_limit)
        return cls(cache, counters, meta, spool_dir, limit, max_blob_bytes or limit // 2)

    def close(self) -> None:
        self._cache.close()
        self._counters.close()
        self._meta.close()

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(function, *args), limiter=self._limiter)

    # --- blobs ----------------------------------------------------------------------------

    def spool_path(self, digest: Digest) -> Path:
        """A fresh spool file name for one fill of ``digest``."""
        return self.spool_dir / f"{digest.encoded}.{secrets.token_hex(8)}{_SPOOL_SUFFIX}"

    async def open_blob(self, digest: Digest) -> CachedBlob | None:
        """Open a cached blob (a use: it becomes most recently used), or None on a miss."""
        return await self._run(self._open_blob, digest, True)

    async def blob_size(self, digest: Digest) -> int | None:
        blob = await self._run(self._open_blob, digest, False)
        if blob is None:
            return None
        blob.close()
        return blob.size

    def _open_blob(self, digest: Digest, count: bool) -> CachedBlob | None:
        key = _blob_key(digest)
        file, expected = self._cache.get(key, read=True, tag=True, retry=True)
        blob = None
        if file is not None:
            size = os.fstat(file.fileno()).st_size
            if size == expected:
                blob = CachedBlob(size, cast(BinaryIO, file))
            else:
                # A file cut short by a crash; check(fix=True) "fixes" the recorded size.
                file.close()
                self._cache.delete(key, retry=True)
        if count:
            self._counters.incr("hits" if blob is not None else "misses", retry=True)
        return blob

    async def adopt_blob(self, digest: Digest, spool_path: Path, size: int) -> bool:
        """Move a verified spool file into the cache; False (file left alone) when refused.

        Refused: a blob over ``max_blob_bytes``. Then the least recently used entries are
        evicted, one at a time and never this blob, until the volume is within the limit.
        """
        if size > self.max_blob_bytes:
            return False
        await self._run(self._adopt, _blob_key(digest), spool_path, size)
        return True

    def _adopt(self, key: str, spool_path: Path, size: int) -> None:
        actual = os.stat(spool_path).st_size
        if actual != size:
            raise ValueError(f"spool holds {actual} bytes, expected {size}")
        self._cache.set(key, Adopt(spool_path, size), tag=size, retry=True)
        self._cull(keep=key)

    def _cull(self, keep: str) -> int:
        evicted = 0
        while self._cache.volume() > self.size_limit:
            with self._cache.transact(retry=True):
                victim = lru_victim(self._cache, keep)
                if victim is None:
                    break
                if self._cache.delete(victim, retry=True):
                    evicted += 1
        if evicted:
            self._counters.incr("evictions", evicted, retry=True)
        return evicted

    # --- manifests, tags, links -----------------------------------------------------------

    async def get_manifest(
        self, repository: RepositoryName, digest: Digest
    ) -> tuple[str, bytes] | None:
        """The manifest as ``repository`` serves it: (media type, payload); None when the
        payload is not cached, or names no media type and none is recorded for
        ``repository`` (then the upstream is asked for this repository's)."""
        hot = self._hot_manifests.get(digest)
        if hot is None:
            payload = await self._run(partial(self._cache.get, _manifest_key(digest), retry=True))
            if payload is None:
                return None
            hot = (declared_media_type(bytes(payload)), bytes(payload))
            self._hot_manifests.put(digest, hot)
        declared, payload = hot
        if declared is not None:
            return declared, payload
        key = self._media_type_key(repository, digest)
        recorded = self._hot_media_types.get(key)
        if recorded is None:
            text = await self._run(partial(self._meta.get, key, retry=True))
            if text is None:
                return None
            recorded = str(text)
            self._hot_media_types.put(key, recorded)
        return recorded, payload

    async def put_manifest(
        self, repository: RepositoryName, digest: Digest, media_type: str, payload: bytes
    ) -> None:
        """Cache a manifest fetched for ``repository``, which serves it as ``media_type``."""
        declared = declared_media_type(payload)
        await self._run(partial(self._cache.set, _manifest_key(digest), payload, retry=True))
        self._hot_manifests.put(digest, (declared, payload))
        if declared is None:
            key = self._media_type_key(repository, digest)
            await self._run(partial(self._meta.set, key, media_type, retry=True))
            self._hot_media_types.put(key, media_type)

    def fresh_tag(
        self, repository: RepositoryName, tag: Tag, now: float, window: float
    ) -> TagEntry | None:
        """The tag's entry from memory if it was confirmed less than ``window`` seconds
        before ``now``: a warm tag is answered without a thread hop or the disk. Anything
        else (older, unknown) is :meth:`get_tag`'s. So a purge by another process reaches
        a running edge's tags within the freshness window."""
        entry = self._hot_tags.get(self._tag_key(repository, tag))
        if entry is None or not 0 <= now - entry.fetched_at < window:
            return None
        return entry

    async def get_tag(self, repository: RepositoryName, tag: Tag) -> TagEntry | None:
        # Read from disk: `edge cache purge` from another process must drop tags there at
        # once (memory answers only fresh entries: fresh_tag).
        key = self._tag_key(repository, tag)
        text = await self._run(partial(self._meta.get, key, retry=True))
        entry = None if text is None else _decode_tag(str(text))
        if entry is None or self._tombstone(key) is not None:
            # Dropped (or dropped by origin's event feed while this read ran: what it read
            # may be the old entry, which memory must not answer as fresh afterwards).
            self._hot_tags.pop(key)
        else:
            self._hot_tags.put(key, entry)
        return entry

    async def put_tag(
        self,
        repository: RepositoryName,
        tag: Tag,
        digest: Digest,
        media_type: str,
        fetched_at: float,
    ) -> None:
        key = self._tag_key(repository, tag)
        dropped = self._tombstone(key)
        if dropped is not None and dropped[0] is not None and fetched_at <= dropped[0]:
            return  # asked before origin's event said it changed: the answer may be older
        fields = {"digest": str(digest), "media_type": media_type, "fetched_at": fetched_at}
        text = json.dumps(fields)
        await self._run(partial(self._meta.set, key, text, retry=True))
        self._hot_tags.put(key, TagEntry(digest, media_type, fetched_at))

    async def drop_tag(self, repository: RepositoryName, tag: Tag) -> None:
        key = self._tag_key(repository, tag)
        self._hot_tags.pop(key)
        await self._run(partial(self._meta.delete, key, retry=True))

    def forget_hot_tags(self) -> None:
        """Drop every tag entry held in memory (the disk still has them)."""
        self._hot_tags.clear()

    async def add_links(self, repository: RepositoryName, digests: Iterable[Digest]) -> None:
        keys = [self._link_key(repository, digest) for digest in digests]
        if self._tombstones:
            # Origin's event feed dropped it a moment ago: a fetch that asked before the
            # deletion must not bring it back (the next request asks origin again).
            keys = [key for key in keys if self._tombstone(key) is None]
        await self._run(self._set_all, keys)
        if self._tombstones:
            # Dropped while this was being written (the drop's delete may have run first).
            buried = [key for key in keys if self._tombstone(key) is not None]
            if buried:
                await self._run(self._delete_all, buried)
                keys = [key for key in keys if key not in buried]
        for key in keys:
            self._hot_links.put(key, True)

    def _set_all(self, keys: list[str]) -> None:
        with self._meta.transact(retry=True):
            for key in keys:
                self._meta.set(key, 1, retry=True)

    async def has_link(self, repository: RepositoryName, digest: Digest) -> bool:
        key = self._link_key(repository, digest)
        if self._hot_links.get(key):
            return True
        found = await self._run(partial(self._meta.get, key, retry=True)) is not None
        if found and self._tombstones and self._tombstone(key) is not None:
            # Dropped while it was being read (origin's event feed): nothing may link it
            # during the tombstone's life, and remembering it here would keep serving it.
            return False
        if found:
            self._hot_links.put(key, True)
        return found

    # --- what origin's event feed says is gone (edge/events/) ------------------------------

    async def forget_tag(self, repository: RepositoryName, tag: Tag, changed_at: float) -> None:
        """Drop a tag origin's event feed says changed at about ``changed_at`` (the edge's
        clock, as for ``fetched_at``): an answer from a revalidation that began before then
        is not stored afterwards (:data:`TOMBSTONE_SECONDS`)."""
        self._bury(self._tag_key(repository, tag), changed_at)
        await self.drop_tag(repository, tag)

    async def drop_links(self, repository: RepositoryName, digests: Iterable[Digest]) -> None:
        """``repository`` may no longer be served ``digests`` from the cache: the next
        request for one asks the upstream again (and a fill that asked before cannot link
        it again for :data:`TOMBSTONE_SECONDS`)."""
        keys = [self._link_key(repository, digest) for digest in digests]
        for key in keys:
            self._bury(key, None)
            self._hot_links.pop(key)
        await self._run(self._delete_all, keys)
        for key in keys:  # a request that read the link meanwhile may have put it back
            self._hot_links.pop(key)

    def _delete_all(self, keys: list[str]) -> None:
        with self._meta.transact(retry=True):
            for key in keys:
                self._meta.delete(key, retry=True)

    async def drop_blob(self, digest: Digest) -> bool:
        """Delete the blob's bytes (open readers go on); whether they were cached."""
        return bool(await self._run(partial(self._cache.delete, _blob_key(digest), retry=True)))

    async def stale_tags(self) -> int:
        """Make every tag of this namespace stale (revalidated on its next request; still
        served stale while the upstream fails); how many."""
        self._hot_tags.clear()  # memory answers only fresh entries: none are now
        changed = await self._run(self._stale_tags)
        self._hot_tags.clear()  # a request that read a tag meanwhile may have put it back
        return changed

    def _stale_tags(self) -> int:
        changed = 0
        for key in list(self._meta.iterkeys()):
            if not self._mine(key, _TAG):
                continue
            text = self._meta.get(key, retry=True)
            entry = None if text is None else _decode_tag(str(text))
            if entry is None or entry.fetched_at == 0:
                continue
            fields = {"digest": str(entry.digest), "media_type": entry.media_type}
            self._meta.set(key, json.dumps({**fields, "fetched_at": 0.0}), retry=True)
            changed += 1
        return changed

    async def drop_all_links(self) -> int:
        """Forget which repository may read which digest, in this namespace: each is
        confirmed with the upstream again on its next request. How many."""
        self._hot_links.clear()  # every namespace's: they are only copies of the disk
        return await self._run(self._drop_all_links)

    def _drop_all_links(self) -> int:
        doomed = [key for key in self._meta.iterkeys() if self._mine(key, _LINK)]
        self._delete_all([str(key) for key in doomed])
        self._hot_links.clear()
        return len(doomed)

    def _bury(self, key: str, changed_at: float | None) -> None:
        now = trio.current_time()
        if len(self._tombstones) >= _MAX_TOMBSTONES:
            for old in [
                k for k, (_, at) in self._tombstones.items() if now - at >= TOMBSTONE_SECONDS
            ]:
                del self._tombstones[old]
        self._tombstones[key] = (changed_at, now)

    def _tombstone(self, key: str) -> tuple[float | None, float] | None:
        found = self._tombstones.get(key)
        if found is not None and trio.current_time() - found[1] >= TOMBSTONE_SECONDS:
            del self._tombstones[key]
            return None
        return found

    def _mine(self, key: object, prefix: str) -> bool:
        """Whether meta ``key`` is a ``prefix`` entry of this namespace."""
        if not isinstance(key, str) or not key.startswith(prefix):
            return False
        rest = key[len(prefix) :]
        if self.namespace:
            return rest.startswith(f"{self.namespace}|")
        return "|" not in rest

    def _tag_key(self, repository: RepositoryName, tag: Tag) -> str:
        return f"{_TAG}{self._scope(repository)}:{tag}"

    def _link_key(self, repository: RepositoryName, digest: Digest) -> str:
        return f"{_LINK}{self._scope(repository)}@{digest}"

    def _media_type_key(self, repository: RepositoryName, digest: Digest) -> str:
        return f"{_MEDIA_TYPE}{self._scope(repository)}@{digest}"

    def _scope(self, repository: RepositoryName) -> str:
        return f"{self.namespace}|{repository}" if self.namespace else repository.value

    # --- management -----------------------------------------------------------------------

    async def stats(self) -> CacheStats:
        return await self._run(self._stats)

    def _stats(self) -> CacheStats:
        blobs = sum(1 for key in self._cache.iterkeys() if str(key).startswith(_BLOB))
        return CacheStats(
            volume_bytes=int(self._cache.volume()),
            size_limit=self.size_limit,
            entries=len(self._cache) + len(self._meta),
            blobs=blobs,
            evictions=int(self._counters.get("evictions", 0, retry=True)),
            hits=int(self._counters.get("hits", 0, retry=True)),
            misses=int(self._counters.get("misses", 0, retry=True)),
        )

    async def purge(self) -> int:
        """Remove every entry (counters are kept); return how many. Open readers go on.
        (From another process, a running edge keeps its in-memory copies of manifests by
        digest and of repository links: both immutable facts.)"""
        self._hot_manifests.clear()
        self._hot_links.clear()
        self._hot_media_types.clear()
        self._hot_tags.clear()
        meta = await self._run(partial(self._meta.clear, retry=True))
        return int(await self._run(partial(self._cache.clear, retry=True))) + int(meta)


def _blob_key(digest: Digest) -> str:
    return f"{_BLOB}{digest}"


def _manifest_key(digest: Digest) -> str:
    return f"{_MANIFEST}{digest}"


def declared_media_type(payload: bytes) -> str | None:
    """The manifest media type a payload names itself (its ``mediaType``), if any."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    declared = document.get("mediaType") if isinstance(document, dict) else None
    return declared if declared in mediatypes.MANIFESTS else None


def _decode_tag(text: str) -> TagEntry | None:
    """A stored tag entry; None (a miss: the upstream is asked) when it is unreadable."""
    try:
        fields = json.loads(text)
        return TagEntry(
            parse_digest(str(fields["digest"])),
            str(fields["media_type"]),
            float(fields["fetched_at"]),
        )
    except (ValueError, KeyError, TypeError, DigestInvalid) as exc:
        log.warning("unreadable tag entry treated as a miss: %s", exc)
        return None
