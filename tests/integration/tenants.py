"""An auth-enabled origin with two orgs and their tokens, for the tenancy and auth tests."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from origin.auth.store import TenancyStore
from origin.metadata.database import Database
from tests.integration.conftest import RunningOrigin, start_origin

BASE_DOMAIN = "registry.example"


class OwnTenancyStore(TenancyStore):
    """A tenancy store on a database of its own, as an administrator's process would open
    it beside the origin; ``close()`` closes that database."""

    @classmethod
    def open(cls, url: str) -> OwnTenancyStore:
        return cls(Database.open(url))

    def close(self) -> None:
        self.database.close()


@dataclass
class Tenants:
    origin: RunningOrigin
    store: OwnTenancyStore
    acme_id: str
    other_id: str
    project: str  # a project of acme
    acme: str  # org token of acme
    other: str  # org token of other
    acme_pull: str
    acme_project: str  # project token for ``project``

    @property
    def url(self) -> str:
        return self.origin.url


async def start_tenants(
    nursery: trio.Nursery,
    data_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
    **overrides: object,
) -> Tenants:
    origin = await start_origin(
        nursery, data_dir, clock=clock, auth=True, base_domain=BASE_DOMAIN, **overrides
    )
    store = OwnTenancyStore.open(origin.settings.resolved_database_url)
    now = clock()
    acme = await store.create_org("acme", now)
    other = await store.create_org("other", now)
    project = await store.create_project(acme.id, "web", now)
    _, acme_token = await store.create_token("org", org_id=acme.id, now=now)
    _, other_token = await store.create_token("org", org_id=other.id, now=now)
    _, pull_token = await store.create_token("pull", org_id=acme.id, now=now)
    _, project_token = await store.create_token(
        "project", org_id=acme.id, project_id=project.id, now=now
    )
    return Tenants(
        origin,
        store,
        acme.id,
        other.id,
        project.id,
        acme_token,
        other_token,
        pull_token,
        project_token,
    )


def basic(token: str) -> dict[str, str]:
    raw = base64.b64encode(f"x-token:{token}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def exchange(
    client: httpx.AsyncClient, token: str | None, *scopes: str, host: str | None = None
) -> httpx.Response:
    headers = basic(token) if token else {}
    if host:
        headers["Host"] = host
    params = [("service", "depot-registry"), *(("scope", s) for s in scopes)]
    return await client.get("/token", params=params, headers=headers)


async def bearer_for(
    client: httpx.AsyncClient, token: str | None, *scopes: str, host: str | None = None
) -> dict[str, str]:
    response = await exchange(client, token, *scopes, host=host)
    assert response.status_code == 200, response.text
    return bearer(response.json()["token"])


def claims_of(jwt: str) -> dict[str, object]:
    payload = jwt.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
