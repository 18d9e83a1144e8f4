"""Edges follow origin's event feed: a change committed at origin is acted on at the edge at
once, long before any freshness window (set to an hour here, so only the feed can explain
what the edge does). Each test measures, in a bounded loop, the time from origin's answer to
the change (its commit came before) to the edge's first changed answer, and prints it; no
time is asserted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from origin.auth.token_format import parse_token
from origin.metadata.events import EventLog
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
from tests.integration.oci import assert_error, new_image, push_manifest
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic, bearer_for, exchange, start_tenants

TIMEOUT = 60
#: A change not acted on within this long fails the test (the freshness windows are 1 h).
ACT_WITHIN_SECONDS = 10.0
HOUR = 3600.0
LATENCIES: dict[str, list[float]] = {}


async def _edge(
    nursery: trio.Nursery, tenants: Tenants, directory: Path, **overrides: object
) -> RunningEdge:
    settings: dict[str, object] = {
        "tag_freshness_seconds": HOUR,
        "graceful_timeout_seconds": 1,
        "events_wait_seconds": 20,
    }
    settings.update(overrides)
    return await start_edge(nursery, tenants, directory, **settings)


async def acted_within(what: str, check: Callable[[], Awaitable[bool]]) -> float:
    """Poll ``check`` until it holds (bounded); the seconds it took, printed and kept."""
    began = time.perf_counter()
    with trio.fail_after(ACT_WITHIN_SECONDS):
        while not await check():  # noqa: ASYNC110 (the edge's answers are what is watched)
            await trio.sleep(0.002)
    took = time.perf_counter() - began
    LATENCIES.setdefault(what, []).append(took)
    print(f"edge acted on {what}: {took * 1000:.1f} ms")
    return took


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"
        f" over {len(values)}"
    )


async def _digest_at(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> str | None:
    response = await http.get(path, headers=headers)
    if response.status_code != 200:
        return None
    return response.headers["Docker-Content-Digest"]


async def test_tag_moves_and_deletions_act_at_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(nursery, tmp_path / "origin")
        edge = await _edge(nursery, tenants, tmp_path / "edge")
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as origin,
            edge_client(edge.url) as http,
        ):
            pull = await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            tag_path = "/v2/acme/app/manifests/v1"
            current = new_image()
            await push_manifest(origin, "acme/app", current, "v1")
            assert await _digest_at(http, tag_path, pull) == current.digest  # cached, fresh 1 h
            moves: list[float] = []
            for _ in range(6):
                image = new_image()
                await push_manifest(origin, "acme/app", image, "v1")

                async def moved(image_digest: str = image.digest) -> bool:
                    return await _digest_at(http, tag_path, pull) == image_digest

                moves.append(await acted_within("tag moved", moved))
                current = image
            print("tag moved:", summary(moves))

            # The manifest deleted at origin (and its tag with it): the edge stops serving it
            # by digest and by tag, although both are cached.
            by_digest = f"/v2/acme/app/manifests/{current.digest}"
            assert await _digest_at(http, by_digest, pull) == current.digest
            deleted = await origin.delete(by_digest)
            assert deleted.status_code == 202, deleted.text

            async def manifest_gone() -> bool:
                answer = await http.get(by_digest, headers=pull)
                return answer.status_code == 404

            await acted_within("manifest deleted", manifest_gone)
            assert_error(await http.get(by_digest, headers=pull), 404, "MANIFEST_UNKNOWN")
            assert_error(await http.get(tag_path, headers=pull), 404, "MANIFEST_UNKNOWN")

            # A blob unlinked from the repository at origin: no longer served by digest.
            layer = current.blobs[-1]
            blob_path = f"/v2/acme/app/blobs/{layer.digest}"
            assert (await http.get(blob_path, headers=pull)).status_code == 200
            unlinked = await origin.delete(blob_path)
            assert unlinked.status_code == 202, unlinked.text

            async def blob_gone() -> bool:
                return (await http.get(blob_path, headers=pull)).status_code == 404

            await acted_within("blob deleted", blob_gone)
            scrape = await metrics(http)
            assert metric(scrape, "depot_edge_events_applied") >= 9
            print(f"lag reported by the edge: {metric(scrape, 'depot_edge_events_lag_seconds')}")
        await edge.stop()
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_revoked_token_and_private_repository_act_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(nursery, tmp_path / "origin")
        edge = await _edge(nursery, tenants, tmp_path / "edge")
        parsed = parse_token(tenants.acme_pull)
        assert parsed is not None
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as origin,
            edge_client(edge.url) as http,
        ):
            await push_manifest(origin, "acme/app", new_image(), "v1")
            path = "/v2/acme/app/manifests/v1"
            # A bearer token from the edge's /token, and the same token as Basic (exchanged
            # once at origin, then decided from the edge's cache).
            pull = await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            assert (await http.get(path, headers=pull)).status_code == 200
            assert (await http.get(path, headers=basic(tenants.acme_pull))).status_code == 200
            revoked = await origin.delete(f"/api/v1/orgs/acme/tokens/{parsed[1]}")
            assert revoked.status_code == 204

            async def refused() -> bool:
                answer = await http.get(path, headers=pull)
                return answer.status_code == 401

            await acted_within("token revoked", refused)
            answer = await http.get(path, headers=pull)
            assert_error(answer, 401, "UNAUTHORIZED")
            assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
            basic_answer = await http.get(path, headers=basic(tenants.acme_pull))
            assert_error(basic_answer, 401, "UNAUTHORIZED")
            # ... and at origin, at once, with the same bearer token.
            async with edge_client(tenants.url) as at_origin:
                assert_error(await at_origin.get(path, headers=pull), 401, "UNAUTHORIZED")

            # A public repository made private: anonymous pulls through the edge stop.
            visibility = "/api/v1/orgs/acme/repositories/app/visibility"
            assert (await origin.put(visibility, json={"public": True})).status_code in (200, 204)
            anonymous = await bearer_for(http, None, "repository:acme/app:pull")
            assert (await http.get(path, headers=anonymous)).status_code == 200
            assert (await http.get(path)).status_code == 200  # no credentials at all
            assert (await origin.put(visibility, json={"public": False})).status_code in (200, 204)

            async def private() -> bool:
                answers = [
                    await http.get(path, headers=anonymous),
                    await http.get(path),
                ]
                return all(a.status_code == 401 for a in answers)

            await acted_within("repository made private", private)
            # The org's own token still pulls it.
            member = await bearer_for(http, tenants.acme, "repository:acme/app:pull")
            assert (await http.get(path, headers=member)).status_code == 200
        await edge.stop()
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_restarted_edge_catches_up_and_a_lost_one_revalidates(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(nursery, tmp_path / "origin")
        edge = await _edge(nursery, tenants, tmp_path / "edge")
        async with edge_client(tenants.url, basic(tenants.acme)) as origin:
            first, second, third = new_image(), new_image(), new_image()
            await push_manifest(origin, "acme/app", first, "v1")
            await push_manifest(origin, "acme/app", first, "v2")
            async with edge_client(edge.url) as http:
                pull = basic(tenants.acme_pull)
                assert await _digest_at(http, "/v2/acme/app/manifests/v1", pull) == first.digest
                assert await _digest_at(http, "/v2/acme/app/manifests/v2", pull) == first.digest
                position = metric(await metrics(http), "depot_edge_events_position")
            await edge.stop()

            # While the edge is down: the tag moves, a token is revoked.
            await push_manifest(origin, "acme/app", second, "v1")
            parsed = parse_token(tenants.acme_project)
            assert parsed is not None
            await tenants.store.revoke_token(parsed[1], time.time())

            edge = await _edge(nursery, tenants, tmp_path / "edge")
            async with edge_client(edge.url) as http:

                async def caught_up() -> bool:
                    return (
                        await _digest_at(http, "/v2/acme/app/manifests/v1", pull) == second.digest
                    )

                await acted_within("missed tag move after a restart", caught_up)
                project = basic(tenants.acme_project)
                assert_error(
                    await http.get("/v2/acme/app/manifests/v1", headers=project),
                    401,
                    "UNAUTHORIZED",
                )
                scrape = await metrics(http)
                # Resumed from its saved position: nothing was revalidated wholesale.
                assert metric(scrape, "depot_edge_events_revalidations") == 0
                assert metric(scrape, "depot_edge_events_position") > position
            await edge.stop()

            # Down again while origin's log moves past its retention: the edge's position is
            # gone (410), so it revalidates everything it holds (v2 moved meanwhile).
            await push_manifest(origin, "acme/app", third, "v2")
            pruned = await _prune_all(tenants)
            assert pruned > 0
            edge = await _edge(nursery, tenants, tmp_path / "edge")
            async with edge_client(edge.url) as http:
                scrape = await metrics(http)
                assert metric(scrape, "depot_edge_events_revalidations") == 1
                # v2's move was pruned before the edge could hear of it: the tag was made
                # stale by the revalidation, so the edge asks origin and answers the new one.
                assert await _digest_at(http, "/v2/acme/app/manifests/v2", pull) == third.digest
            await edge.stop()
        tenants.origin.shutdown.set()
        tenants.store.close()


async def _prune_all(tenants: Tenants) -> int:
    """Prune origin's whole log, as retention would after a long outage of the edge."""
    return await EventLog(tenants.store.database).prune(older_than=time.time() + 1, keep_at_most=0)


async def test_deleted_and_expired_builds_stop_resolving_at_the_edge(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(
            nursery,
            tmp_path / "origin",
            build_ttl_seconds=4,
            events_housekeeping_interval_seconds=0.1,
        )
        edge = await _edge(nursery, tenants, tmp_path / "edge")
        repo = f"acme/{tenants.project}"
        builds = f"/api/v1/projects/{tenants.project}/builds"
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as origin,
            edge_client(edge.url) as http,
        ):
            pull = await bearer_for(http, tenants.acme_pull, f"repository:{repo}:pull")
            saved = []
            for _ in range(2):
                created = await origin.post(builds, json={})
                assert created.status_code == 201, created.text
                image = new_image()
                await push_manifest(origin, repo, image, created.json()["id"])
                saved.append((created.json()["id"], image.digest))
            paths = [
                [f"/v2/{repo}/manifests/{build_id}", f"/v2/{repo}/manifests/{digest}"]
                for build_id, digest in saved
            ]
            for path in (*paths[0], *paths[1]):
                assert (await http.get(path, headers=pull)).status_code == 200  # cached

            async def unresolved(which: list[str]) -> bool:
                answers = [await http.get(path, headers=pull) for path in which]
                return all(answer.status_code == 404 for answer in answers)

            deleted = await origin.delete(f"{builds}/{saved[0][0]}")
            assert deleted.status_code == 204, deleted.text
            await acted_within("build deleted", lambda: unresolved(paths[0]))
            # The other build expires (a clock passing: origin's housekeeping records it).
            with trio.fail_after(ACT_WITHIN_SECONDS):
                while (await http.get(paths[1][0], headers=pull)).status_code == 200:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert await unresolved(paths[1])
            for path in paths[1]:
                assert_error(await http.get(path, headers=pull), 404, "MANIFEST_UNKNOWN")
        await edge.stop()
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_origin_unreachable_the_edge_serves_and_catches_up_when_it_returns(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges(events=True, tag_freshness_seconds=HOUR, events_wait_seconds=0.5)
        path = "/v2/acme/app/manifests/v1"
        first, second = new_image(), new_image()
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as origin,
            edge_client(edge.url) as http,
        ):
            pull = basic(tenants.acme_pull)
            await push_manifest(origin, "acme/app", first, "v1")
            assert await _digest_at(http, path, pull) == first.digest
            proxy.down = True

            async def feed_lost() -> bool:
                return metric(await metrics(http), "depot_edge_events_connected") == 0

            await acted_within("origin lost", feed_lost)
            # Origin moves the tag while the edge cannot hear of it: the edge keeps serving
            # what it holds (its grant and tag are cached).
            await push_manifest(origin, "acme/app", second, "v1")
            assert await _digest_at(http, path, pull) == first.digest
            proxy.heal()

            async def caught_up() -> bool:
                return await _digest_at(http, path, pull) == second.digest

            await acted_within("a change made while origin was unreachable", caught_up)
            assert metric(await metrics(http), "depot_edge_events_revalidations") == 1  # start


async def test_token_memory_forgets_a_revoked_token(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    """While origin is unreachable the edge answers /token from memory, but never for a
    token origin revoked meanwhile."""
    with trio.fail_after(TIMEOUT):
        edge = await edges(events=True)
        parsed = parse_token(tenants.acme_pull)
        assert parsed is not None
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as origin,
            edge_client(edge.url) as http,
        ):
            await push_manifest(origin, "acme/app", new_image(), "v1")
            scope = "repository:acme/app:pull"
            for token in (tenants.acme_pull, tenants.acme):
                await bearer_for(http, token, scope)  # remembered by the edge
            position = metric(await metrics(http), "depot_edge_events_position")
            assert (await origin.delete(f"/api/v1/orgs/acme/tokens/{parsed[1]}")).status_code == 204

            async def heard() -> bool:
                return metric(await metrics(http), "depot_edge_events_position") > position

            await acted_within("token revoked (feed position)", heard)
            proxy.down = True
            # The other token is still answered from memory; the revoked one is not.
            remembered = await exchange(http, tenants.acme, scope)
            assert remembered.status_code == 200, remembered.text
            forgotten = await exchange(http, tenants.acme_pull, scope)
            assert_error(forgotten, 503, "UNAVAILABLE")
