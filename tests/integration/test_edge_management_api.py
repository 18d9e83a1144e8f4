"""The edge in front of origin for everything but ``/v2``: the management API (``/api/v1``)
is forwarded, with the client's credentials, so the one URL a user has serves every
``depot`` command; a path the edge keeps for itself (``/api/v1/relay``) never reaches origin;
and an org created now answers on ``<org id>.<base domain>``, at the edge and at origin, with
Basic and with bearer tokens.
"""

from __future__ import annotations

import time

import trio

from tests.integration.edges import EdgeFactory, edge_client
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import assert_error, guarded, new_image, push_manifest
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import BASE_DOMAIN, Tenants, basic, bearer_for

TIMEOUT = 60
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


async def test_the_edge_forwards_the_management_api(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        async with (
            guarded(edge_client(edge.url, basic(tenants.acme))) as http,
            edge_client(edge.url) as anonymous,
        ):
            orgs = await http.get("/api/v1/orgs")
            assert orgs.status_code == 200, orgs.text
            assert [o["id"] for o in orgs.json()["orgs"]] == [tenants.acme_id]
            assert ("GET", "/api/v1/orgs") in proxy.requests

            # A body goes along (streamed), and the answer comes back as origin gave it.
            created = await http.post(
                f"/api/v1/projects/{tenants.project}/builds", json={"save_tags": ["main"]}
            )
            assert created.status_code == 201, created.text
            build = created.json()
            assert build["save_tags"] == ["main"] and build["project_id"] == tenants.project
            assert created.headers["Location"].endswith(f"/builds/{build['id']}")
            listed = await http.get(f"/api/v1/projects/{tenants.project}/builds?n=5")
            assert [b["id"] for b in listed.json()["builds"]] == [build["id"]]
            deleted = await http.delete(f"/api/v1/projects/{tenants.project}/builds/{build['id']}")
            assert deleted.status_code == 204, deleted.text

            # Origin decides: no credentials, another org's project.
            refused = await anonymous.get("/api/v1/orgs")
            assert refused.status_code == 401
            assert "WWW-Authenticate" in refused.headers
            async with edge_client(edge.url, basic(tenants.other)) as other:
                hidden = await other.get(f"/api/v1/projects/{tenants.project}/builds")
            assert_error(hidden, 404, "NOT_FOUND")

            # The edge's own API space is never forwarded.
            before = len(proxy.requests)
            for path in ("/api/v1/relay", "/api/v1/relay/jobs/x"):
                mine = await http.post(path, json={})
                assert_error(mine, 404, "NOT_FOUND")
            assert not any(p.startswith("/api/v1/relay") for _, p in proxy.requests)
            assert len(proxy.requests) == before


async def test_an_org_created_now_answers_on_its_id_subdomain(
    tenants: Tenants, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        now = time.time()
        org = await tenants.store.create_org("fresh", now)
        _, token = await tenants.store.create_token("org", org_id=org.id, now=now)
        id_host = f"{org.id}.{BASE_DOMAIN}"
        image = new_image()
        async with guarded(edge_client(tenants.url, basic(token))) as origin:
            await push_manifest(origin, "fresh/app", image, "v1")

        for url in (edge.url, tenants.url):
            async with guarded(edge_client(url)) as http:
                for host in (id_host, f"fresh.{BASE_DOMAIN}"):
                    got = await http.get(
                        "/v2/app/manifests/v1",
                        headers={**basic(token), "Host": host, "Accept": MANIFEST_ACCEPT},
                    )
                    assert got.status_code == 200, (url, host, got.text)
                    assert got.headers["Docker-Content-Digest"] == image.digest
                # Docker's flow on the id subdomain: challenge, /token there, bearer pull.
                challenge = await http.get("/v2/app/manifests/v1", headers={"Host": id_host})
                assert challenge.status_code == 401
                assert f'realm="http://{id_host}/token"' in challenge.headers["WWW-Authenticate"]
                headers = await bearer_for(http, token, "repository:app:pull", host=id_host)
                pulled = await http.get(
                    "/v2/app/manifests/v1",
                    headers={**headers, "Host": id_host, "Accept": MANIFEST_ACCEPT},
                )
                assert pulled.status_code == 200, (url, pulled.text)
                # Another org's token reaches nothing there.
                other = await http.get(
                    "/v2/app/manifests/v1",
                    headers={**basic(tenants.acme), "Host": id_host, "Accept": MANIFEST_ACCEPT},
                )
                assert other.status_code in (401, 403, 404), other.text

            async with guarded(edge_client(url, basic(token))) as http:
                found = await http.get(f"/api/v1/orgs/{org.id}")
                assert found.status_code == 200, found.text
                assert found.json()["name"] == "fresh"
