"""The registries the client contract suite runs against, each with auth on:

- ``origin``: our origin in-process on 127.0.0.1:0 (orgs and tokens as in the tenancy tests);
  clients follow its Bearer challenge to ``/token`` with ``x-token`` credentials;
- ``edge``: our edge in front of that origin (pulls served by the edge, the rest passed on);
- ``distribution-basic``: CNCF Distribution with htpasswd Basic auth (every user may push);
- ``distribution-token``: CNCF Distribution with Bearer tokens from
  :class:`tests.token_service.TokenService` (a pusher and a pull-only user).

``docker-registry`` missing skips the Distribution targets locally and fails them on CI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import trio

from core.client.credentials import Credentials, StaticCredentials, x_token_credentials
from core.client.http import open_http_client
from core.client.registry import RegistryClient
from core.reference import RepositoryName, parse_repository_name
from tests.integration.edges import start_edge
from tests.integration.oci import guarded
from tests.integration.tenants import start_tenants
from tests.peers import require_program
from tests.processes import distribution_process
from tests.token_service import TokenService, User

TARGETS = ["origin", "edge", "distribution-basic", "distribution-token"]
#: htpasswd hashes at bcrypt's lowest cost: Distribution checks one on every request.
BCRYPT_ROUNDS = 4


@dataclass
class Target:
    kind: str
    url: str
    namespace: str  # repositories are "<namespace>/<name>"
    pusher: Credentials
    puller: Credentials | None  # may pull, not push (None: the registry cannot say so)
    tokens: bool  # Bearer tokens (counted at the token service's /token)
    referrers: bool  # has the referrers API (and answers OCI-Subject)
    ours: bool  # our server: any 5xx is a bug
    tag_pages: bool = True  # honours ``n`` on tag lists (Distribution 2.8 sends them all)
    token_service: TokenService | None = None

    def repo(self, name: str) -> RepositoryName:
        return parse_repository_name(f"{self.namespace}/{name}")

    @asynccontextmanager
    async def client(
        self,
        credentials: Credentials | None = None,
        *,
        url: str | None = None,
        sent: list[httpx.Request] | None = None,
    ) -> AsyncIterator[RegistryClient]:
        """A client with ``credentials`` (the pusher's by default) on its own pool; every
        request it sends is appended to ``sent``."""
        http = open_http_client(url or self.url, auth_header=None)
        if self.ours:
            guarded(http)
        if sent is not None:

            async def record(request: httpx.Request) -> None:
                sent.append(request)

            http.event_hooks["request"] = [record]
        async with http:
            yield RegistryClient(http, StaticCredentials(credentials or self.pusher))


def token_requests(sent: list[httpx.Request]) -> list[httpx.Request]:
    return [request for request in sent if request.url.path == "/token"]


@asynccontextmanager
async def running_target(kind: str, nursery: trio.Nursery, tmp: Path) -> AsyncIterator[Target]:
    if kind in ("origin", "edge"):
        tenants = await start_tenants(nursery, tmp / "origin")
        try:
            url = tenants.url
            if kind == "edge":
                url = (await start_edge(nursery, tenants, tmp / "edge")).url
            yield Target(
                kind,
                url,
                "acme",
                x_token_credentials(tenants.acme).value,
                x_token_credentials(tenants.acme_pull).value,
                tokens=True,
                referrers=True,
                ours=True,
            )
        finally:
            tenants.origin.shutdown.set()
            tenants.store.close()
        return
    program = require_program("docker-registry")
    if kind == "distribution-basic":
        hashed = bcrypt.hashpw(b"pusher-secret", bcrypt.gensalt(rounds=BCRYPT_ROUNDS))
        htpasswd = tmp / "htpasswd"
        htpasswd.write_bytes(b"pusher:" + hashed + b"\n")
        auth = f"auth:\n  htpasswd:\n    realm: contract-registry\n    path: {htpasswd}\n"
        async with distribution_process(tmp, program, auth) as (host, _):
            yield Target(
                kind,
                f"http://{host}",
                "contract",
                Credentials("pusher", "pusher-secret"),
                None,
                tokens=False,
                referrers=False,
                ours=False,
                tag_pages=False,
            )
        return
    assert kind == "distribution-token", kind
    service = TokenService(
        tmp,
        {
            "pusher": User("pusher-secret", frozenset({"pull", "push"})),
            "puller": User("puller-secret", frozenset({"pull"})),
        },
    )
    await service.start(nursery)
    try:
        async with distribution_process(tmp, program, service.distribution_auth()) as (host, _):
            yield Target(
                kind,
                f"http://{host}",
                "contract",
                Credentials("pusher", "pusher-secret"),
                Credentials("puller", "puller-secret"),
                tokens=True,
                referrers=False,
                ours=False,
                tag_pages=False,
                token_service=service,
            )
    finally:
        service.stop()
