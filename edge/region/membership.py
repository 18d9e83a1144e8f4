"""Joining a region: the Redis client (one per process, entered around serving, never inside
quart-trio's lifespan), this edge's entry in the region's directory and its peers' clients."""

from __future__ import annotations

import logging
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import coredis

from config.settings import EdgeSettings
from edge.region.directory import RegionDirectory
from edge.region.peers import PeerUpstreams

log = logging.getLogger("depot.edge.region")


@dataclass
class Region:
    directory: RegionDirectory
    peers: PeerUpstreams

    def status(self) -> str:
        state = "up" if self.directory.healthy else "DOWN (serving alone)"
        return f"region {self.directory.region}: redis {state}"


@asynccontextmanager
async def open_region(
    settings: EdgeSettings,
    edge_token: str,
    bound_url: str,
    *,
    verify: ssl.SSLContext | bool = True,
) -> AsyncIterator[Region | None]:
    """The region this edge belongs to, or None when it has no Redis (a lone edge).

    coredis because it runs on trio (through AnyIO); redis-py's asyncio client fails under
    trio. Redis down at start is not fatal: the directory fails soft until it is back."""
    if not settings.redis_url:
        yield None
        return
    region = settings.region or "default"
    edge_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    url = settings.advertise_url or bound_url
    redis = coredis.Redis.from_url(settings.redis_url, decode_responses=True)
    async with redis:
        directory = RegionDirectory(
            redis,
            region=region,
            edge_id=edge_id,
            url=url,
            lock_seconds=settings.region_lock_seconds,
        )
        peers = PeerUpstreams(edge_token, edge_id, verify=verify)
        log.info("edge %s joins region %s as %s", edge_id, region, url)
        try:
            yield Region(directory, peers)
        finally:
            await peers.aclose()
