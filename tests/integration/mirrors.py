"""Upstream registries for the mirror tests: CNCF Distribution (``docker-registry``) with a
Bearer token service, playing Docker Hub or ghcr.io, behind a fault-injecting proxy.

The edge is pointed at the proxy (:class:`tests.integration.origin_proxy.OriginProxy`: it
counts every request by kind and answers 503/429, refuses, holds or cuts to order); images
are pushed straight to Distribution with the pusher's credentials, so the proxy counts only
what the edge asked. The token service is reached directly (its realm is in Distribution's
challenge) and records every token request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from config.settings import MirrorSettings
from core.client.credentials import Credentials, StaticCredentials
from core.client.registry import RegistryClient
from core.digest import parse_digest
from core.reference import parse_manifest_reference, parse_repository_name
from tests.integration.oci import Manifest
from tests.integration.origin_proxy import OriginProxy
from tests.peers import require_program
from tests.processes import distribution_process
from tests.token_service import TokenService, User

PUSHER = Credentials("pusher", "pusher-secret")
#: A user that may only pull: an org's own account at a private registry.
BOT = Credentials("bot", "bot-secret-password")


@dataclass
class Upstream:
    """A registry playing ``name``; ``url`` is the proxy in front of it."""

    name: str
    direct: str  # http://HOST:PORT of Distribution itself
    proxy: OriginProxy
    tokens: TokenService
    log: Path

    @property
    def url(self) -> str:
        return self.proxy.url

    def mirror(self, access: str = "authenticated", **fields: object) -> MirrorSettings:
        return MirrorSettings(name=self.name, url=self.url, access=access, **fields)  # type: ignore[arg-type]

    async def push(self, repository: str, manifest: Manifest, tag: str | None = None) -> None:
        """Push ``manifest`` (its blobs and children first) straight to Distribution."""
        async with RegistryClient.open(self.direct, StaticCredentials(PUSHER)) as client:
            await _push(client, repository, manifest, tag)

    def gets(self, digest: str) -> int:
        """Blob GETs of ``digest`` that reached the upstream, any repository."""
        return sum(
            1
            for method, path in self.proxy.requests
            if method == "GET" and path.endswith(f"/blobs/{digest}")
        )


async def _push(
    client: RegistryClient, repository: str, manifest: Manifest, tag: str | None
) -> None:
    name = parse_repository_name(repository)
    for child in manifest.children:
        await _push(client, repository, child, None)
    for blob in manifest.blobs:
        await client.upload_blob(name, parse_digest(blob.digest), blob.size, blob.source)
    reference = parse_manifest_reference(tag or manifest.digest)
    await client.put_manifest(name, reference, manifest.payload, manifest.media_type)


@asynccontextmanager
async def running_upstream(
    nursery: trio.Nursery, tmp: Path, name: str, *, public: bool = True
) -> AsyncIterator[Upstream]:
    """Distribution + token service + proxy. ``public``: anonymous clients may pull (Docker
    Hub); otherwise only ``BOT`` and ``PUSHER`` may."""
    program = require_program("docker-registry")
    directory = tmp / name
    directory.mkdir(parents=True)
    users = {
        PUSHER.username: User(PUSHER.password, frozenset({"pull", "push"})),
        BOT.username: User(BOT.password, frozenset({"pull"})),
    }
    service = TokenService(
        directory, users, anonymous_actions=frozenset({"pull"}) if public else frozenset()
    )
    await service.start(nursery)
    try:
        auth = service.distribution_auth()
        async with distribution_process(directory, program, auth) as (host, log):
            proxy = OriginProxy(f"http://{host}")
            await proxy.start(nursery)
            try:
                yield Upstream(name, f"http://{host}", proxy, service, log)
            finally:
                with trio.CancelScope(shield=True):
                    await proxy.stop()
    finally:
        service.stop()
