"""Tiered edges: an edge whose upstream is another edge (a regional shield), not origin.

origin ← proxy (counts requests) ← shield edge ← leaf edge ← client. A pull through the leaf
is authorised the same way (bearer tokens from origin's issuer, verified at each tier), filled
once through the shield however many leaves ask, and served stale by the leaf when both tiers
above it are gone.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.integration.edges import (
    EdgeFactory,
    edge_client,
    fetch,
    metric,
    metrics,
    start_edge,
    upstream_gets,
)
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import new_image, push_manifest
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic, bearer_for

TIMEOUT = 60


async def test_a_pull_through_a_shield_fetches_from_origin_once(
    nursery: trio.Nursery,
    tmp_path: Path,
    tenants: Tenants,
    proxy: OriginProxy,
    edges: EdgeFactory,
) -> None:
    image = new_image(layers=2)
    with trio.fail_after(TIMEOUT):
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        shield = await edges("shield")
        leaves = [
            await start_edge(
                nursery,
                tenants,
                tmp_path / f"leaf{i}",
                upstream=shield.url,
                graceful_timeout_seconds=2,
            )
            for i in range(2)
        ]
        for leaf in leaves:
            async with edge_client(leaf.url) as http:
                # Unauthenticated: the leaf's own challenge, naming the leaf's /token.
                refused = await http.get("/v2/acme/app/manifests/v1")
                assert refused.status_code == 401
                assert leaf.url.removeprefix("http://") in refused.headers["WWW-Authenticate"]
                # A pull token, exchanged through both tiers, reads the image.
                http.headers.update(
                    await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
                )
                got = await http.get("/v2/acme/app/manifests/v1")
                assert got.status_code == 200, got.text
                assert got.content == image.payload
                for blob in image.blobs:
                    fetched = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
                    assert (fetched.status, fetched.digest) == (200, blob.digest)
                # Another org's repository stays closed through the tiers.
                other = await http.get("/v2/globex/app/manifests/v1")
                assert other.status_code in (401, 403, 404), other.text
        # Two leaves, one shield: origin sent each blob once.
        for blob in image.blobs:
            assert upstream_gets(proxy, blob.digest) == 1, blob.digest

        # Origin gone: the leaf still serves what the tiers cached.
        await proxy.disconnect()
        async with edge_client(leaves[0].url) as http:
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            for blob in image.blobs:
                fetched = await fetch(http, f"/v2/acme/app/blobs/{blob.digest}")
                assert (fetched.status, fetched.digest) == (200, blob.digest)


async def test_feed_long_polls_through_a_shield_never_open_its_circuit(
    tmp_path: Path, tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    """An edge below a shield follows origin's feed through it: long polls that origin answers
    only after their wait, longer than the shield's upstream deadline. They are answered (the
    deadline is stretched by the wait) and do not count as origin failures: before, three of
    them opened the shield's circuit and every pull through it was refused with 503."""
    image = new_image()
    with trio.fail_after(TIMEOUT):
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
        shield = await edges("shield", upstream_deadline_seconds=0.5)
        edge_token = (tmp_path / "shield" / "edge.token").read_text()
        async with edge_client(shield.url, basic(edge_token)) as http:
            head = await http.get("/api/v1/events", params={"wait": "0"})
            assert head.status_code == 200, head.text
            after = str(head.json()["last"])
            answers: list[int] = []

            async def poll() -> None:
                got = await http.get("/api/v1/events", params={"after": after, "wait": "1.5"})
                answers.append(got.status_code)

            async with trio.open_nursery() as polls:
                for _ in range(4):
                    polls.start_soon(poll)
            assert answers == [200] * 4  # each waited its 1.5 s at origin, past the deadline
            assert metric(await metrics(http), "depot_edge_origin_circuit_open") == 0
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.status_code == 200, got.text


async def test_an_edge_below_a_shield_hears_of_a_change_once_the_shield_acted(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    """A tag moved at origin while the shield's own follower is behind: the leaf must not
    drop its tag and re-ask the shield before the shield dropped its copy (it would cache
    the old digest again, for its whole freshness window). The shield passes feed answers on
    once it has acted on them."""
    first, second = new_image(), new_image()
    path = "/v2/acme/app/manifests/v1"
    with trio.fail_after(TIMEOUT):
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", first, "v1")
            shield = await edges("shield", events=True, events_wait_seconds=0.3)
            leaf = await edges(
                "leaf",
                upstream=shield.url,
                events=True,
                events_wait_seconds=5,
                tag_freshness_seconds=3600,
            )
            async with edge_client(leaf.url, basic(tenants.acme_pull)) as http:

                async def digest() -> str:
                    got = await http.get(path)
                    assert got.status_code == 200, got.text
                    return got.headers["Docker-Content-Digest"]

                assert await digest() == first.digest  # cached at the leaf and the shield

                # The shield's own polls (no X-Forwarded-For: not passed through for an edge
                # below) wait at the proxy: the shield falls behind origin's log.
                def shield_follows(method: str, path: str, headers: list[tuple[str, str]]) -> bool:
                    forwarded = any(k.lower() == "x-forwarded-for" for k, _ in headers)
                    return path == "/api/v1/events" and not forwarded

                proxy.hold_when = shield_follows
                await proxy.wait_for(lambda p: p.waiting >= 1)
                position = metric(await metrics(http), "depot_edge_events_position")
                await push_manifest(origin, "acme/app", second, "v1")  # the tag moves
                # While the shield is behind, the leaf keeps being asked (and, had it heard
                # of the move already, it would have asked the shield again by now).
                with trio.move_on_after(2):
                    while metric(await metrics(http), "depot_edge_events_position") == position:
                        await digest()
                        await trio.sleep(0.05)
                proxy.hold_when = None
                proxy.release()  # the shield catches up
                with trio.fail_after(10):
                    while await digest() != second.digest:  # noqa: ASYNC110
                        await trio.sleep(0.05)


async def test_a_manifest_deleted_at_origin_stops_being_served_through_a_shield(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    image = new_image()
    path = f"/v2/acme/app/manifests/{image.digest}"
    with trio.fail_after(TIMEOUT):
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", image, "v1")
            shield = await edges("shield", events=True, events_wait_seconds=2)
            leaf = await edges("leaf", upstream=shield.url, events=True, events_wait_seconds=2)
            async with (
                edge_client(leaf.url, basic(tenants.acme_pull)) as at_leaf,
                edge_client(shield.url, basic(tenants.acme_pull)) as at_shield,
            ):
                assert (await at_leaf.get(path)).status_code == 200
                assert (await at_shield.get(path)).status_code == 200
                deleted = await origin.delete(path)
                assert deleted.status_code == 202, deleted.text
                with trio.fail_after(10):
                    while (await at_leaf.get(path)).status_code != 404:
                        await at_shield.get(path)
                        await trio.sleep(0.005)
                assert (await at_shield.get(path)).status_code == 404
