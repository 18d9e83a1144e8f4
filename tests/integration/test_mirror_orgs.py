"""An org's own upstream: registered at origin with the org's credentials for a private
registry (CNCF Distribution with a token service that lets only its ``bot`` user pull),
served by the edge as ``EDGE/<org>/ghcr.io/...`` (or ``<org>.BASE/ghcr.io/...``) to that
org's callers only. Another org, an anonymous caller, another org's registration of the same
registry without credentials, origin's names and an anonymous operator's mirror: none of
them get anything of it, by name or by digest, even once it is cached. The password never
appears in a log line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.edges import edge_client, start_edge
from tests.integration.mirrors import BOT, Upstream, running_upstream
from tests.integration.oci import assert_error, guarded, new_image
from tests.integration.tenants import BASE_DOMAIN, Tenants, basic, bearer_for, start_tenants

TIMEOUT = 60


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    # The upstreams here are on 127.0.0.1: allowed for this origin only.
    running = await start_tenants(
        nursery, tmp_path / "origin", upstreams_allow_private_addresses=True
    )
    yield running
    running.origin.shutdown.set()
    running.store.close()


async def register(tenants: Tenants, org_token: str, org: str, document: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=tenants.url, trust_env=False) as http:
        response = await http.post(
            f"/api/v1/orgs/{org}/upstreams", json=document, headers=basic(org_token)
        )
        assert response.status_code == 201, response.text


async def test_an_orgs_upstream_serves_that_org_only(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        running_upstream(nursery, tmp_path, "ghcr.io", public=False) as private,
        running_upstream(nursery, tmp_path, "docker.io") as hub,
    ):
        await run_isolation(nursery, tmp_path, tenants, private, hub)
    assert BOT.password not in caplog.text


async def run_isolation(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, private: Upstream, hub: Upstream
) -> None:
    with trio.fail_after(TIMEOUT):
        secret = new_image(layers=2)
        await private.push("owner/secret", secret, "1")
        await register(
            tenants,
            tenants.acme,
            "acme",
            {
                "name": "ghcr.io",
                "url": private.url,
                "username": BOT.username,
                "password": BOT.password,
            },
        )
        # The other org registers the same registry, without credentials.
        await register(tenants, tenants.other, "other", {"name": "ghcr.io", "url": private.url})
        edge = await start_edge(
            nursery,
            tenants,
            tmp_path / "edge",
            mirrors=(hub.mirror("anonymous"),),
            org_upstreams_refresh_seconds=0,  # see registrations at once
        )
        layer = secret.blobs[1]
        names = "/v2/acme/ghcr.io/owner/secret"
        async with edge_client(edge.url, basic(tenants.acme_pull)) as acme:
            guarded(acme)
            got = await acme.get(f"{names}/manifests/1")
            assert got.status_code == 200 and got.content == secret.payload
            for blob in secret.blobs:
                assert (await acme.get(f"{names}/blobs/{blob.digest}")).content == blob.data
            host = {"Host": f"acme.{BASE_DOMAIN}"}
            got = await acme.get("/v2/ghcr.io/owner/secret/manifests/1", headers=host)
            assert got.content == secret.payload
            scope = "repository:acme/ghcr.io/owner/secret:pull"
            token = await bearer_for(acme, tenants.acme_project, scope)
            got = await acme.get(f"{names}/blobs/{layer.digest}", headers=token)
            assert got.content == layer.data
            assert private.gets(layer.digest) == 1
            fetched = len(private.proxy.requests)

        async with edge_client(edge.url) as stranger:
            guarded(stranger)
            # Another org, by acme's names: refused, nothing fetched.
            other = basic(tenants.other)
            for path in (f"{names}/manifests/1", f"{names}/blobs/{layer.digest}"):
                assert_error(await stranger.get(path, headers=other), 403, "DENIED")
                assert_error(await stranger.get(path), 401, "UNAUTHORIZED")
            token = await bearer_for(
                stranger, tenants.other, "repository:acme/ghcr.io/owner/secret:pull"
            )
            refused = await stranger.get(f"{names}/blobs/{layer.digest}", headers=token)
            assert_error(refused, 401, "UNAUTHORIZED")
            assert len(private.proxy.requests) == fetched

            # Its own registration of the same registry has no credentials: the upstream
            # refuses it, and the edge's cache does not answer for acme's.
            mine = "/v2/other/ghcr.io/owner/secret"
            assert_error(
                await stranger.get(f"{mine}/manifests/1", headers=other), 404, "NAME_UNKNOWN"
            )
            for path in (f"{mine}/blobs/{layer.digest}", f"{mine}/manifests/{secret.digest}"):
                response = await stranger.get(path, headers=other)
                assert response.status_code == 404, (path, response.text)
            assert private.gets(layer.digest) == 1
            assert len(private.proxy.requests) > fetched  # asked, with other's (no) credentials
            # Nor do origin's names, nor the anonymous operator's mirror.
            for path, headers in [
                (f"/v2/other/app/blobs/{layer.digest}", other),
                (f"/v2/acme/app/blobs/{layer.digest}", other),
                (f"/v2/docker.io/owner/secret/blobs/{layer.digest}", {}),
                (f"/v2/docker.io/owner/secret/manifests/{secret.digest}", {}),
                (f"/v2/owner/secret/blobs/{layer.digest}?ns=docker.io", {}),
            ]:
                response = await stranger.get(path, headers=headers)
                assert response.status_code in (401, 403, 404), (path, response.status_code)
                assert layer.data not in response.content

        # Unregistered: the name is an org repository again (origin's: none there).
        async with httpx.AsyncClient(base_url=tenants.url, trust_env=False) as http:
            removed = await http.delete(
                "/api/v1/orgs/acme/upstreams/ghcr.io", headers=basic(tenants.acme)
            )
            assert removed.status_code == 204
        async with edge_client(edge.url, basic(tenants.acme_pull)) as acme:
            response = await acme.get(f"{names}/manifests/1")
            assert response.status_code == 404, response.text
