"""What the edges of one region tell each other through Redis.

Keys (all under ``depot:region:<region>:``):

- ``edge:<id>`` → the URL peers reach that edge at; expires unless its heartbeat renews it,
  so a dead edge drops out of the region by itself.
- ``edges`` → the set of edge ids that ever joined (members whose ``edge:`` key expired are
  skipped, and pruned by the next heartbeat).
- ``fill:<digest>`` → the id of the edge fetching that digest from upstream right now: set if
  absent with an expiry, renewed by its owner while the fill runs, released by its owner only
  (both by a compare-and-act script, so a lock that expired and was taken over is never
  touched by the old owner).
- ``held:<id>`` → a sorted set of the digests that edge holds (score: when it got them),
  capped at :data:`HELD_MAX` newest, expiring with the edge.

Redis is an optimisation, never a dependency: every call here fails soft. When Redis is down
(or answers garbage) the directory says "no coordination" — callers fetch from their own
upstream as a lone edge would — logs it once, and :attr:`healthy` turns false until a
heartbeat gets through again (coredis reconnects by itself).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from coredis.tokens import PureToken

from core.digest import Digest

log = logging.getLogger("depot.edge.region")

T = TypeVar("T")

#: The newest digests an edge advertises (an edge may hold far more; these are the ones
#: likeliest to be asked for again).
HELD_MAX = 100_000

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
#: The live edges (other than ARGV[2]) whose held set has ARGV[1]: id, url pairs.
_HOLDERS = """
local found = {}
for _, id in ipairs(redis.call('smembers', KEYS[1])) do
  if id ~= ARGV[2] then
    local url = redis.call('get', KEYS[2] .. id)
    if url and redis.call('zscore', KEYS[3] .. id, ARGV[1]) then
      table.insert(found, id)
      table.insert(found, url)
    end
  end
end
return found
"""


class RegionDirectory:
    def __init__(
        self,
        redis: Any,
        *,
        region: str,
        edge_id: str,
        url: str,
        lock_seconds: float = 5.0,
        heartbeat_seconds: float = 1.0,
    ) -> None:
        """``redis``: an entered ``coredis.Redis`` with ``decode_responses=True``."""
        self._redis = redis
        self.region = region
        self.edge_id = edge_id
        self.url = url
        self._prefix = f"depot:region:{region}:"
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self.lock_seconds = lock_seconds
        self._heartbeat = heartbeat_seconds
        self.healthy = False
        self.failures = 0  # Redis calls that failed (for metrics)

    # -- keys ----------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    # -- fills ---------------------------------------------------------------------------

    async def claim(self, digest: Digest) -> str | None:
        """Take the region's fill lock for ``digest``: None when this edge now holds it (or
        Redis is down: fetch as a lone edge would), else the id of the edge holding it."""
        key = self._key("fill", str(digest))
        for _ in range(3):  # the holder may release between our SET and our GET
            taken = await self._call(
                lambda: self._redis.set(key, self.edge_id, condition=_nx(), px=self._lock_ms),
                None,
            )
            if taken is None or taken:
                return None
            holder = await self._call(lambda: self._redis.get(key), None)
            if holder is None:
                continue
            return None if holder == self.edge_id else str(holder)
        return None

    async def renew(self, digest: Digest) -> bool:
        """Extend this edge's lock on ``digest``; False when it is no longer this edge's."""
        key = self._key("fill", str(digest))
        renewed = await self._call(
            lambda: self._redis.eval(_RENEW, keys=[key], args=[self.edge_id, self._lock_ms]), 0
        )
        return bool(renewed)

    async def release(self, digest: Digest) -> None:
        key = self._key("fill", str(digest))
        await self._call(lambda: self._redis.eval(_RELEASE, keys=[key], args=[self.edge_id]), 0)

    async def holder(self, digest: Digest) -> str | None:
        value = await self._call(lambda: self._redis.get(self._key("fill", str(digest))), None)
        return None if value is None else str(value)

    # -- peers ---------------------------------------------------------------------------

    async def address(self, edge_id: str) -> str | None:
        """The URL of a live edge of the region, None when it is gone."""
        value = await self._call(lambda: self._redis.get(self._key("edge", edge_id)), None)
        return None if value is None else str(value)

    async def holders(self, digest: Digest) -> list[tuple[str, str]]:
        """Live edges of the region (not this one) advertising ``digest``: (id, url)."""
        found: Any = await self._call(
            lambda: self._redis.eval(
                _HOLDERS,
                keys=[self._key("edges"), self._key("edge", ""), self._key("held", "")],
                args=[str(digest), self.edge_id],
            ),
            [],
        )
        if not isinstance(found, list) or len(found) % 2:
            return []
        return [(str(found[i]), str(found[i + 1])) for i in range(0, len(found), 2)]

    async def advertise(self, digest: Digest) -> None:
        """Tell the region this edge holds ``digest`` (after it verified and cached it)."""
        key = self._key("held", self.edge_id)
        await self._call(lambda: self._redis.zadd(key, {str(digest): time.time()}), 0)
        await self._call(lambda: self._redis.zremrangebyrank(key, 0, -(HELD_MAX + 1)), 0)

    # -- membership ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the region and keep this edge's entry alive (the heartbeat); leave on exit."""
        task_status.started()
        try:
            while True:
                await self.beat()
                await trio.sleep(self._heartbeat)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._call(lambda: self._redis.delete([self._key("edge", self.edge_id)]), 0)

    async def beat(self) -> None:
        """One heartbeat: refresh this edge's address and its held set's expiry."""
        ttl = max(1, math.ceil(self._heartbeat * 3))
        ok = await self._call(
            lambda: self._redis.set(self._key("edge", self.edge_id), self.url, ex=ttl), None
        )
        if ok is None:
            return
        await self._call(lambda: self._redis.sadd(self._key("edges"), [self.edge_id]), 0)
        await self._call(lambda: self._redis.expire(self._key("held", self.edge_id), ttl * 60), 0)

    # -- failing soft --------------------------------------------------------------------

    async def _call(self, command: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Run one Redis command; on any failure answer ``fallback`` (no coordination)."""
        try:
            with trio.fail_after(2):
                result = await command()
        except BaseException as exc:  # coredis raises ExceptionGroups of connection errors
            if not _a_redis_failure(exc):
                raise
            self.failures += 1
            if self.healthy:
                log.warning("Redis unavailable, edges coordinate no fills meanwhile: %r", exc)
            self.healthy = False
            return fallback
        if not self.healthy:
            log.info("Redis reachable: region %s coordination on", self.region)
        self.healthy = True
        return result


def _nx() -> Any:
    return PureToken.NX


def _a_redis_failure(exc: BaseException) -> bool:
    """An error of Redis (or of reaching it), not a cancellation or an interpreter exit."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: not isinstance(e, Exception)) is None
    return isinstance(exc, Exception)
