"""Failed-credential times per client in Redis, shared by every origin using the same Redis.

One sorted set per client (``depot:failures:<client>``), scored by the failure's time: a
failure adds a member and trims the window's older ones, a check trims and counts, each in
one MULTI/EXEC round trip; the key expires with the window, so an idle client costs nothing.

coredis, not redis-py: coredis 6 runs on AnyIO and therefore on trio, while redis-py's
asyncio client fails under trio ("no running event loop"; PITFALLS.md). One client per
process, entered in the process's own main around ``serve()`` (``origin/server.py``), never
inside quart-trio's lifespan (a hard cancel there misnests its nurseries).

Every call is bounded (``REDIS_TIMEOUT_SECONDS``); any failure (Redis down, a timeout, a
connection error arriving as an ExceptionGroup) raises :class:`SharedLimitUnavailable`, on
which :class:`origin.auth.ratelimit.CredentialFailures` falls back to its per-process limit.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import coredis

#: A credential check waits at most this long for Redis before using the per-process limit.
REDIS_TIMEOUT_SECONDS = 0.5
KEY_PREFIX = "depot:failures:"


class SharedLimitUnavailable(Exception):
    """Redis did not answer (in time): use the per-process limit this time."""


class RedisFailureLog:
    def __init__(self, redis: coredis.Redis[bytes], window_seconds: float) -> None:
        self._redis = redis
        self._window = window_seconds
        self._ttl = max(1, int(window_seconds) + 1)

    def _key(self, client: str) -> str:
        return KEY_PREFIX + client

    async def recent(self, client: str, now: float) -> tuple[int, float | None]:
        """Failures of ``client`` within the window, and the oldest one's time."""
        try:
            with trio.fail_after(REDIS_TIMEOUT_SECONDS):
                key = self._key(client)
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zremrangebyscore(key, 0, now - self._window)
                    count = pipe.zcard(key)
                    oldest = pipe.zrange(key, 0, 0, withscores=True)
                found = await count
                first = await oldest
        except Exception as exc:  # coredis errors, OSError, TooSlowError, ExceptionGroups
            raise SharedLimitUnavailable(str(exc) or type(exc).__name__) from exc
        return int(found), (float(first[0].score) if first else None)

    async def record(self, client: str, now: float) -> None:
        try:
            with trio.fail_after(REDIS_TIMEOUT_SECONDS):
                key = self._key(client)
                member = f"{now:.6f}-{secrets.token_hex(4)}"  # two failures at once count twice
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zadd(key, {member: now})
                    pipe.zremrangebyscore(key, 0, now - self._window)
                    pipe.expire(key, self._ttl)
        except Exception as exc:
            raise SharedLimitUnavailable(str(exc) or type(exc).__name__) from exc
