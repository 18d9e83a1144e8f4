"""Orgs' upstream registries at origin (``/api/v1/orgs/{org}/upstreams``, the edge-only
``/api/v1/edge/orgs/{org}/upstreams``) and ``depot upstreams``: who may do what, bad input,
and the password: stored encrypted, given back to edge credentials only, never logged."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio

from origin.upstreams.schema import org_upstreams
from tests.integration.management import ORGS, TIMEOUT, client_for
from tests.integration.oci import assert_error
from tests.integration.tenants import Tenants, basic, start_tenants
from tests.integration.test_depot_cli import Depot

PASSWORD = "ghp_s3cret-upstream-password"
GHCR = {"name": "ghcr.io", "url": "https://ghcr.io/", "username": "bot", "password": PASSWORD}


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "data")
    yield running
    running.origin.shutdown.set()
    running.store.close()


async def edge_token(tenants: Tenants) -> str:
    _, token = await tenants.store.create_token("edge", now=time.time())
    return token


async def test_an_org_registers_lists_and_removes_upstreams(
    tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = f"{ORGS}/acme/upstreams"
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            added = await http.post(path, json=GHCR)
            assert added.status_code == 201, added.text
            assert added.headers["Cache-Control"] == "no-store"
            document = added.json()
            created = document.pop("created_at")
            assert document == {
                "name": "ghcr.io",
                "url": "https://ghcr.io",
                "username": "bot",
                "has_password": True,
            }
            anonymous = {"name": "quay.io", "url": "https://quay.io"}
            assert (await http.post(path, json=anonymous)).status_code == 201
            assert_error(await http.post(path, json=GHCR), 409, "CONFLICT")
            listed = (await http.get(path)).json()["upstreams"]
            assert [(u["name"], u["has_password"], u["created_at"]) for u in listed] == [
                ("ghcr.io", True, created),
                ("quay.io", False, listed[1]["created_at"]),
            ]
            assert (await http.delete(f"{path}/quay.io")).status_code == 204
            assert_error(await http.delete(f"{path}/quay.io"), 404, "NOT_FOUND")
            assert [u["name"] for u in (await http.get(path)).json()["upstreams"]] == ["ghcr.io"]
        # Read by the org's other tokens, changed by none of them; other orgs see nothing.
        async with client_for(tenants, tenants.acme_pull) as http:
            assert (await http.get(path)).status_code == 200
            assert_error(await http.post(path, json=anonymous), 403, "DENIED")
            assert_error(await http.delete(f"{path}/ghcr.io"), 403, "DENIED")
        async with client_for(tenants, tenants.other) as http:
            for response in (
                await http.get(path),
                await http.post(path, json=anonymous),
                await http.delete(f"{path}/ghcr.io"),
            ):
                assert_error(response, 404, "NOT_FOUND")
    # Stored sealed; never in a log line.
    rows = await tenants.store.database.read(
        lambda conn: conn.execute(sa.select(org_upstreams)).all()
    )
    assert [(row.name, row.username) for row in rows] == [("ghcr.io", "bot")]
    assert rows[0].secret.startswith("v1.") and PASSWORD not in rows[0].secret
    assert PASSWORD not in caplog.text


async def test_only_edges_get_the_credentials(tenants: Tenants) -> None:
    edge = await edge_token(tenants)
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            assert (await http.post(f"{ORGS}/acme/upstreams", json=GHCR)).status_code == 201
            for token in (tenants.acme, tenants.acme_pull, tenants.other):
                response = await http.get("/api/v1/edge/orgs/acme/upstreams", headers=basic(token))
                assert_error(response, 403, "DENIED")
                assert PASSWORD not in response.text
            secrets = await http.get("/api/v1/edge/orgs/acme/upstreams", headers=basic(edge))
            assert secrets.status_code == 200
            assert secrets.headers["Cache-Control"] == "no-store"
            assert secrets.json() == {
                "org": "acme",
                "upstreams": [
                    {
                        "name": "ghcr.io",
                        "url": "https://ghcr.io",
                        "username": "bot",
                        "password": PASSWORD,
                    }
                ],
            }
            empty = await http.get("/api/v1/edge/orgs/other/upstreams", headers=basic(edge))
            assert empty.json() == {"org": "other", "upstreams": []}
            for missing in ("nosuchorg", "Not_A_Slug"):
                response = await http.get(
                    f"/api/v1/edge/orgs/{missing}/upstreams", headers=basic(edge)
                )
                assert_error(response, 404, "NOT_FOUND")
        async with client_for(tenants) as anonymous:
            response = await anonymous.get("/api/v1/edge/orgs/acme/upstreams")
            assert_error(response, 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"name": "ghcr", "url": "https://ghcr.io"}, "with a dot"),
        ({"name": "GHCR.io", "url": "https://ghcr.io"}, "with a dot"),
        ({"name": "ghcr.io", "url": "ghcr.io"}, "http"),
        ({"name": "ghcr.io", "url": "https://ghcr.io/v2/"}, "no path"),
        ({"name": "ghcr.io", "url": "https://u:p@ghcr.io"}, "no credentials"),
        ({"name": "ghcr.io", "url": "https://ghcr.io", "username": "bot"}, "together"),
        ({"name": "ghcr.io", "url": "https://ghcr.io", "password": PASSWORD}, "together"),
        ({"name": "ghcr.io"}, "url"),
        ({"name": "ghcr.io", "url": "http://127.0.0.1:5000"}, "private address"),
        ({"name": "ghcr.io", "url": "http://localhost:5000"}, "private address"),
        ({"name": "ghcr.io", "url": "http://169.254.169.254"}, "private address"),
        ({"name": "ghcr.io", "url": "https://[::1]:443"}, "private address"),
        ({"name": "ghcr.io", "url": "https://ghcr.io", "extra": 1}, "unknown fields"),
    ],
)
async def test_bad_registrations_are_refused(
    tenants: Tenants, document: dict[str, object], message: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(tenants, tenants.acme) as http:
            response = await http.post(f"{ORGS}/acme/upstreams", json=document)
            error = assert_error(response, 400, "INVALID_REQUEST")
            assert message in error["message"], error
            assert PASSWORD not in response.text
            assert (await http.get(f"{ORGS}/acme/upstreams")).json() == {"upstreams": []}


async def test_depot_upstreams_add_list_remove(tenants: Tenants, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    depot = Depot(home, tenants.url, tenants.acme)
    added = await depot.run(
        "upstreams", "add", "--org", "acme", "ghcr.io", "https://ghcr.io",
        "--username", "bot", "--password-stdin", stdin=f"{PASSWORD}\n".encode(),
    )  # fmt: skip
    assert b"added upstream ghcr.io" in added.stdout
    listed = await depot.run("upstreams", "list", "--org", "acme")
    assert listed.stdout.decode().split() == [
        *("NAME", "URL", "USERNAME", "PASSWORD"),
        *("ghcr.io", "https://ghcr.io", "bot", "set"),
    ]
    assert PASSWORD.encode() not in listed.stdout + listed.stderr
    refused = await depot.run(
        "upstreams", "add", "--org", "acme", "ghcr", "https://ghcr.io", check=False
    )
    assert refused.returncode == 1 and b"with a dot" in refused.stderr, refused.stderr
    half = await depot.run(
        "upstreams", "add", "--org", "acme", "quay.io", "https://quay.io", "--username", "x",
        check=False,
    )  # fmt: skip
    assert half.returncode == 1 and b"together" in half.stderr
    await depot.run("upstreams", "remove", "--org", "acme", "ghcr.io")
    as_json = await depot.run("upstreams", "list", "--org", "acme", "--json")
    assert as_json.stdout.decode().split() == ["{", '"upstreams":', "[]", "}"]
