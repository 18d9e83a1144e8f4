"""The edge against hostile clients and a failing origin, with real servers on 127.0.0.1:0:
failed logins limited per client end to end, media types never shared across orgs, a circuit
breaker on a hung origin, logins answered from memory while origin is down, bounded
pass-through, and client bytes that used to be 500s.

Clients are told apart by the loopback address they connect from (127.0.0.2, 127.0.0.3...):
the edge connects to origin from 127.0.0.1, the one proxy origin trusts.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from config.settings import OriginSettings
from core import mediatypes
from tests.integration.edges import (
    EdgeFactory,
    RunningEdge,
    edge_client,
    metric,
    metrics,
    start_edge,
)
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import (
    Blob,
    assert_error,
    guarded,
    new_image,
    push_blob,
    push_manifest,
    random_blob,
    sha256_digest,
)
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import (
    OwnTenancyStore,
    Tenants,
    basic,
    bearer,
    exchange,
    start_tenants,
)
from tests.processes import origin_process

TIMEOUT = 30
#: A hang guard for answers that must come promptly (never a timing assertion).
PROMPT = 10


def client_from(url: str, source: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client of ``url`` connecting from loopback address ``source``."""
    return httpx.AsyncClient(
        base_url=url,
        trust_env=False,
        timeout=TIMEOUT,
        headers={"Accept-Encoding": "identity", **(headers or {})},
        transport=httpx.AsyncHTTPTransport(local_address=source),
    )


# -- failed logins through an edge count against the client, not the edge ---------------------


@pytest.fixture
async def trusting(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    """Tenants whose origin trusts 127.0.0.1 (the edge) to name its clients."""
    running = await start_tenants(nursery, tmp_path / "origin", trusted_proxies="127.0.0.1")
    yield running
    running.origin.shutdown.set()
    running.store.close()


async def test_one_clients_failed_logins_lock_out_no_other_client(
    nursery: trio.Nursery, trusting: Tenants, tmp_path: Path
) -> None:
    tenants = trusting
    wrong = "dpo_" + "w" * 40
    with trio.fail_after(TIMEOUT):
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            image, public = new_image(), new_image()
            await push_manifest(origin, "acme/app", image, "v1")
            await push_manifest(origin, "acme/public", public, "v1")
        await tenants.store.set_public(tenants.acme_id, "acme/public", True)
        edge = await start_edge(nursery, tenants, tmp_path / "edge")
        async with client_from(edge.url, "127.0.0.2") as guesser:
            # Ten wrong logins: Basic on /v2 (the edge exchanges it at origin), then /token.
            pull = await guesser.get("/v2/acme/app/manifests/v1", headers=basic(wrong))
            assert pull.status_code == 401
            for _ in range(9):
                assert (await exchange(guesser, wrong)).status_code == 401
            limited = await exchange(guesser, tenants.acme)  # origin limits this client now
            assert limited.status_code == 429
        async with client_from(edge.url, "127.0.0.3") as other:
            pull = await other.get("/v2/acme/app/manifests/v1", headers=basic(tenants.acme))
            assert pull.status_code == 200 and pull.content == image.payload
            login = await exchange(other, tenants.acme, "repository:acme/app:pull")
            assert login.status_code == 200, login.text
            anonymous = await other.get("/v2/acme/public/manifests/v1")
            assert anonymous.status_code == 200 and anonymous.content == public.payload
            # The guesser's wrong token is refused from the edge's memory for the guesser
            # only: another client presenting it is asked about at origin (and refused).
            assert (
                await other.get("/v2/acme/app/tags/list", headers=basic(wrong))
            ).status_code == 401
        await edge.stop()


# -- media types: per repository, never whoever fetched first ---------------------------------


def bare_manifest(config: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """An image manifest without ``mediaType`` (valid as OCI and as Docker schema 2, as the
    push's Content-Type says) and the blobs it needs."""
    layer = random_blob(300)
    config_blob_ = Blob(config, mediatypes.OCI_EMPTY)
    document = {
        "schemaVersion": 2,
        "config": config_blob_.descriptor(),
        "layers": [layer.descriptor()],
    }
    return json.dumps(document).encode(), [
        (config_blob_.digest, config),
        (layer.digest, layer.data),
    ]


async def test_one_org_cannot_change_the_media_type_another_is_served(
    tenants: Tenants, edges: EdgeFactory
) -> None:
    payload, needed = bare_manifest(b"{}")
    digest = sha256_digest(payload)
    with trio.fail_after(TIMEOUT):
        for repo, token, media_type in (
            ("acme/app", tenants.acme, mediatypes.OCI_MANIFEST),
            ("other/app", tenants.other, mediatypes.DOCKER_MANIFEST),
        ):
            async with edge_client(tenants.url, basic(token)) as origin:
                for _, data in needed:
                    await push_blob(origin, repo, Blob(data))
                pushed = await origin.put(
                    f"/v2/{repo}/manifests/v1",
                    content=payload,
                    headers={"Content-Type": media_type},
                )
                assert pushed.status_code == 201, pushed.text
        edge = await edges()
        # Org other pulls the shared bytes through the edge first (by digest and by tag)...
        async with edge_client(edge.url, basic(tenants.other)) as other:
            for reference in (digest, "v1"):
                got = await other.get(f"/v2/other/app/manifests/{reference}")
                assert got.headers["Content-Type"] == mediatypes.DOCKER_MANIFEST
        # ...and acme is still served the type it pushed.
        async with edge_client(edge.url, basic(tenants.acme)) as acme:
            for reference in (digest, "v1", digest):
                got = await acme.get(f"/v2/acme/app/manifests/{reference}")
                assert got.status_code == 200 and got.content == payload
                assert got.headers["Content-Type"] == mediatypes.OCI_MANIFEST, reference
        async with edge_client(edge.url, basic(tenants.other)) as other:
            got = await other.get(f"/v2/other/app/manifests/{digest}")
            assert got.headers["Content-Type"] == mediatypes.DOCKER_MANIFEST


# -- a hung origin: the circuit opens, stale tags are served at once --------------------------


async def test_a_hung_origin_opens_the_circuit_and_stale_tags_are_served_at_once(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT * 2):
        edge = await edges(tag_freshness_seconds=0, upstream_deadline_seconds=1)
        images = [new_image() for _ in range(4)]
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            for n, image in enumerate(images):
                await push_manifest(origin, "acme/app", image, f"v{n}")
        async with edge_client(edge.url, basic(tenants.acme)) as http:
            for n in range(4):  # warm: every tag cached, all stale from now on
                assert (await http.get(f"/v2/acme/app/manifests/v{n}")).status_code == 200
            proxy.hold = frozenset({"manifest"})  # origin hangs: nothing answers
            asked = proxy.count("HEAD", "manifest")
            # The first pulls wait the deadline, then are served stale (3 failures open it).
            for n in range(3):
                got = await http.get(f"/v2/acme/app/manifests/v{n}")
                assert got.status_code == 200 and got.headers["Warning"].startswith("299 ")
            assert proxy.count("HEAD", "manifest") == asked + 3
            # Open: stale tags are answered without asking origin (well within a deadline:
            # a request that waited would be held by the proxy past PROMPT's guard of 20).
            with trio.fail_after(PROMPT):
                for _ in range(5):
                    for n in range(4):
                        got = await http.get(f"/v2/acme/app/manifests/v{n}")
                        assert got.status_code == 200, got.text
                        assert got.headers["Warning"].startswith("299 ")
                        assert got.content == images[n].payload
            assert proxy.count("HEAD", "manifest") <= asked + 4  # at most one probe went
            assert metric(await metrics(http), "depot_edge_origin_circuit_open") == 1
            tags = await http.get("/v2/acme/app/tags/list")  # a pass-through read: at once
            assert_error(tags, 503, "UNAVAILABLE")
            assert int(tags.headers["Retry-After"]) >= 1
            # Origin answers again: a background probe closes the circuit, pulls are fresh.
            proxy.heal()
            for _ in range(100):
                got = await http.get("/v2/acme/app/manifests/v0")
                if "Warning" not in got.headers:
                    break
                await trio.sleep(0.1)  # the circuit's interval passing: the thing tested
            assert got.status_code == 200 and "Warning" not in got.headers
            assert (await http.get("/v2/acme/app/tags/list")).status_code == 200


# -- logins while origin is down -----------------------------------------------------------


async def test_logins_are_answered_from_memory_while_origin_is_killed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    scope = "repository:acme/app:pull"
    data = tmp_path / "origin-data"
    with trio.fail_after(TIMEOUT * 2):
        async with origin_process(data, tmp_path / "origin.log") as origin:
            store = OwnTenancyStore.open(OriginSettings(data_dir=data).resolved_database_url)
            try:
                now = time.time()
                acme = await store.create_org("acme", now)
                _, org_token = await store.create_token("org", org_id=acme.id, now=now)
                _, pull_token = await store.create_token("pull", org_id=acme.id, now=now)
                _, edge_token = await store.create_token("edge", now=now)
            finally:
                store.close()
            image = new_image()
            async with edge_client(origin.url, basic(org_token)) as pusher:
                await push_manifest(pusher, "acme/app", image, "v1")
            edge = await start_edge(
                nursery,
                None,
                tmp_path / "edge",
                token=edge_token,
                upstream=origin.url,
                tag_freshness_seconds=0,
                upstream_deadline_seconds=1,
                graceful_timeout_seconds=2,
            )
            # A first node logs in and pulls: the edge caches the image, remembers the login.
            async with edge_client(edge.url) as first:
                login = await exchange(first, pull_token, scope)
                assert login.status_code == 200
                first.headers.update(bearer(login.json()["token"]))
                assert (await first.get("/v2/acme/app/manifests/v1")).status_code == 200
                for blob in image.blobs:
                    got = await first.get(f"/v2/acme/app/blobs/{blob.digest}")
                    assert got.status_code == 200
            await origin.kill()  # SIGKILL: origin is gone

            # A second node with the same credential, not logged in yet, pulls the image.
            async with guarded_edge_client(edge) as second:
                with trio.fail_after(PROMPT):
                    remembered = await exchange(second, pull_token, scope)
                assert remembered.status_code == 200
                assert remembered.json()["token"] == login.json()["token"]
                assert 0 < remembered.json()["expires_in"] <= login.json()["expires_in"]
                second.headers.update(bearer(remembered.json()["token"]))
                got = await second.get("/v2/acme/app/manifests/v1")
                assert got.status_code == 200 and got.content == image.payload
                for blob in image.blobs:
                    got = await second.get(f"/v2/acme/app/blobs/{blob.digest}")
                    assert got.status_code == 200 and got.content == blob.data
            # A login the edge never saw: 503 with Retry-After, not a hang.
            async with edge_client(edge.url) as third:
                with trio.fail_after(PROMPT):
                    unknown = await exchange(third, org_token, scope)
                assert_error(unknown, 503, "UNAVAILABLE")
                assert int(unknown.headers["Retry-After"]) >= 1
                with trio.fail_after(PROMPT):
                    pull = await third.get("/v2/acme/app/manifests/v1", headers=basic(org_token))
                assert_error(pull, 503, "UNAVAILABLE")
                assert int(pull.headers["Retry-After"]) >= 1
            await edge.stop()


def guarded_edge_client(edge: RunningEdge) -> httpx.AsyncClient:
    return guarded(edge_client(edge.url))


# -- the pass-through: bounded, and client bytes are forwarded, not 500s ----------------------


async def stalled_upload(
    url: str, source: str, authorization: str | None = None
) -> trio.SocketStream:
    """Open an upload whose body never comes: the request head only, on a raw socket."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port), local_address=source)
    head = (
        f"POST /v2/acme/app/blobs/uploads/?digest=sha256:{'0' * 64} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nContent-Length: 100000\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + "Content-Type: application/octet-stream\r\n\r\n"
    )
    await stream.send_all(head.encode())
    return stream


async def test_stalled_uploads_starve_neither_logins_nor_reads(
    tenants: Tenants, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges(passthrough_writes_max=8, passthrough_per_client_max=3)
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", new_image(), "v1")
        stalled: list[trio.SocketStream] = []
        try:
            # One client opens 3 uploads and never sends a body; its 4th is refused at once.
            for _ in range(3):
                stalled.append(await stalled_upload(edge.url, "127.0.0.2"))
            async with client_from(edge.url, "127.0.0.2") as greedy:
                with trio.fail_after(PROMPT):
                    refused = await greedy.post(
                        "/v2/acme/app/blobs/uploads/", content=b"x", headers=basic(tenants.acme)
                    )
                assert_error(refused, 429, "TOOMANYREQUESTS")
                assert int(refused.headers["Retry-After"]) >= 1
            # Other clients fill every write slot the edge has...
            for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
                for _ in range(2 if source == "127.0.0.5" else 3):
                    stalled.append(await stalled_upload(edge.url, source))
            # ...and reads and logins still answer at once, for anyone.
            async with client_from(edge.url, "127.0.0.6") as fresh:
                with trio.fail_after(PROMPT):
                    login = await exchange(fresh, tenants.acme, "repository:acme/app:pull")
                    assert login.status_code == 200
                    fresh.headers.update(bearer(login.json()["token"]))
                    tags = await fresh.get("/v2/acme/app/tags/list")
                    assert tags.status_code == 200 and tags.json()["tags"] == ["v1"]
                    pulled = await fresh.get("/v2/acme/app/manifests/v1")
                    assert pulled.status_code == 200
                    # Writes are full: a push waits briefly for a slot, then 429, not a hang.
                    busy = await fresh.post("/v2/acme/app/blobs/uploads/", content=b"x")
                    assert_error(busy, 429, "TOOMANYREQUESTS")
        finally:
            for stream in stalled:
                await stream.aclose()
        # The stalled clients gone, their slots come back.
        async with client_from(edge.url, "127.0.0.2", basic(tenants.acme)) as back:
            with trio.fail_after(PROMPT):
                while True:
                    started = await back.post("/v2/acme/app/blobs/uploads/")
                    if started.status_code == 202:
                        break
                    assert started.status_code == 429
                    await trio.sleep(0.05)  # the edge noticing the hang-ups: the thing tested


async def test_client_bytes_the_pass_through_used_to_fail_on(
    tenants: Tenants, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        async with guarded(edge_client(edge.url, basic(tenants.acme))) as http:
            started = await http.post("/v2/acme/app/blobs/uploads/")
            assert started.status_code == 202
            location = started.headers["Location"]
            # A header value with bytes over 127 (hypercorn hands them over as latin-1).
            odd = await http.get(location, headers={"X-Note": b"caf\xe9 \xff"})
            assert odd.status_code == 204, odd.text
            # %00 in a passed-through path (an upload id): origin's answer, a 404.
            nul = await http.patch("/v2/acme/app/blobs/uploads/abc%00def", content=b"x")
            assert_error(nul, 404, "BLOB_UPLOAD_UNKNOWN")
            # Thousands of digits in a chunk's Content-Range: a length the body does not have.
            huge = await http.patch(
                location, content=b"x", headers={"Content-Range": "0-" + "5" * 5000}
            )
            assert_error(huge, 400, "SIZE_INVALID")
            arabic = await http.patch(
                location, content=b"x", headers={"Content-Range": "\u0660-\u0661".encode()}
            )
            assert arabic.status_code in (400, 416), arabic.text
