"""Origin's event feed (``GET /api/v1/events``) against a real origin: who may read it, what
it says, the long poll, 410 outside the log, and bearer tokens refused with their parent."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import trio

from origin.auth.token_format import parse_token
from tests.integration.edges import edge_client
from tests.integration.oci import assert_error, new_image, push_manifest
from tests.integration.tenants import Tenants, basic, bearer_for, claims_of, start_tenants
from tests.postgres import fresh_schema, require_postgres

TIMEOUT = 30


async def _edge_token(tenants: Tenants) -> str:
    _, token = await tenants.store.create_token("edge", now=time.time())
    return token


async def _events(http: httpx.AsyncClient, after: int, wait: float = 0) -> dict[str, object]:
    response = await http.get("/api/v1/events", params={"after": after, "wait": wait})
    assert response.status_code == 200, response.text
    document: dict[str, object] = response.json()
    return document


async def test_event_feed_access_and_input(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(nursery, tmp_path / "origin")
        edge_token = await _edge_token(tenants)
        async with edge_client(tenants.url) as http:
            # No credential: 401; a tenant's token (org, pull): 403; never the events.
            assert_error(await http.get("/api/v1/events"), 401, "UNAUTHORIZED")
            for token in (tenants.acme, tenants.acme_pull):
                answer = await http.get("/api/v1/events", headers=basic(token))
                assert_error(answer, 403, "DENIED")
            wrong = await http.get("/api/v1/events", headers=basic("dpe_" + "a" * 48))
            assert_error(wrong, 401, "UNAUTHORIZED")
            edge = basic(edge_token)
            for bad in ("x", "-1", "1.5", "99999999999999999999", "", "\u0661"):
                answer = await http.get("/api/v1/events", params={"after": bad}, headers=edge)
                assert_error(answer, 400, "INVALID_REQUEST")
            for bad in ("x", "-1", "61", "nan", "inf"):
                answer = await http.get(
                    "/api/v1/events", params={"after": 0, "wait": bad}, headers=edge
                )
                assert_error(answer, 400, "INVALID_REQUEST")
            # Without ``after``: the head, no events.
            head = await http.get("/api/v1/events", headers=edge)
            assert head.status_code == 200 and head.json()["events"] == []
            last = head.json()["last"]
            # A position the log never had: 410 GONE (the follower revalidates everything).
            gone = await http.get("/api/v1/events", params={"after": last + 1000}, headers=edge)
            entry = assert_error(gone, 410, "GONE")
            assert entry["detail"]["last"] == last
            # Wrong credentials from one address are limited (429); the edge's valid one from
            # the same address is still answered (its feed must not go dark).
            statuses = set()
            for _ in range(12):
                answer = await http.get("/api/v1/events", headers=basic("dpe_" + "b" * 48))
                statuses.add(answer.status_code)
            assert statuses == {401, 429}
            assert (await http.get("/api/v1/events", headers=edge)).status_code == 200
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_changes_are_events_and_the_long_poll_wakes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(nursery, tmp_path / "origin")
        edge_token = await _edge_token(tenants)
        async with (
            edge_client(tenants.url, basic(edge_token)) as feed,
            edge_client(tenants.url, basic(tenants.acme)) as acme,
        ):
            start = (await feed.get("/api/v1/events")).json()["last"]
            first, second = new_image(), new_image()
            await push_manifest(acme, "acme/app", first, "v1")
            # A new tag moved nothing: no event.
            assert (await _events(feed, start))["events"] == []

            # A waiting poll is woken by the commit that moves the tag.
            answers: list[dict[str, object]] = []
            began = trio.Event()

            async def wait_for_event() -> None:
                began.set()
                answers.append(await _events(feed, start, wait=20))

            async with trio.open_nursery() as waiting:
                waiting.start_soon(wait_for_event)
                await began.wait()
                await trio.sleep(0.2)  # the poll is waiting at origin (not asserted)
                moved_at = trio.current_time()
                await push_manifest(acme, "acme/app", second, "v1")
            woke_after = trio.current_time() - moved_at
            print(f"long poll answered {woke_after * 1000:.1f} ms after the push returned")
            (events,) = [answer["events"] for answer in answers]
            assert isinstance(events, list)
            assert [e["kind"] for e in events] == ["tag.moved"]
            assert events[0]["repository"] == "acme/app" and events[0]["tag"] == "v1"
            assert events[0]["digest"] == second.digest
            assert events[0]["previous"] == first.digest

            # Tag deleted, manifest deleted (with the tags on it), visibility changed.
            after = events[0]["seq"]
            deleted = await acme.delete(f"/v2/acme/app/manifests/{second.digest}")
            assert deleted.status_code == 202, deleted.text
            visibility = "/api/v1/orgs/acme/repositories/app/visibility"
            made = await acme.put(visibility, json={"public": True})
            assert made.status_code in (200, 204), made.text
            document = await _events(feed, after)
            kinds = [(e["kind"], e.get("tag") or e.get("digest")) for e in document["events"]]
            assert kinds == [
                ("tag.deleted", "v1"),
                ("manifest.deleted", second.digest),
                ("repository.visibility", None),
            ], kinds
            assert document["events"][-1]["public"] is True
            seqs = [e["seq"] for e in document["events"]]
            assert seqs == sorted(seqs) and document["last"] == seqs[-1]
            # Nothing new: an empty answer after the wait, at the same position.
            idle = await _events(feed, document["last"], wait=0.2)
            assert idle == {"events": [], "last": document["last"]}
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_revoked_token_refuses_its_bearer_tokens_at_origin(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(nursery, tmp_path / "origin")
        edge_token = await _edge_token(tenants)
        parsed = parse_token(tenants.acme_pull)
        assert parsed is not None
        pull_id = parsed[1]
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as acme,
            edge_client(tenants.url) as http,
            edge_client(tenants.url, basic(edge_token)) as feed,
        ):
            await push_manifest(acme, "acme/app", new_image(), "v1")
            start = (await feed.get("/api/v1/events")).json()["last"]
            bearer = await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            assert claims_of(bearer["Authorization"].split()[1])["parent"] == pull_id
            path = "/v2/acme/app/manifests/v1"
            assert (await http.get(path, headers=bearer)).status_code == 200
            revoked = await acme.delete(f"/api/v1/orgs/acme/tokens/{pull_id}")
            assert revoked.status_code == 204, revoked.text
            # The very next request with the still unexpired bearer token is refused.
            refused = await http.get(path, headers=bearer)
            assert_error(refused, 401, "UNAUTHORIZED")
            assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
            # Anonymous bearer tokens name no parent.
            anonymous = await bearer_for(http, None, "repository:acme/app:pull")
            assert "parent" not in claims_of(anonymous["Authorization"].split()[1])
            document = await _events(feed, start)
            assert [(e["kind"], e["token"]) for e in document["events"]] == [
                ("token.revoked", pull_id)
            ]
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_pruned_position_is_gone_and_expiries_are_recorded(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(
            nursery,
            tmp_path / "origin",
            events_retention_count=1,
            events_housekeeping_interval_seconds=0.05,
        )
        edge_token = await _edge_token(tenants)
        org = await tenants.store.org_by_slug("acme")
        assert org is not None
        expiring_id = (
            await tenants.store.create_token(
                "pull", org_id=org.id, expires_at=time.time() + 0.3, now=time.time()
            )
        )[0].token_id
        async with edge_client(tenants.url, basic(edge_token)) as feed:
            # Housekeeping records the expiry (a clock passing changes no row) ...
            expiries: list[object] = []
            while not expiries:
                document = await _events(feed, 0, wait=0.5)
                expiries = [e for e in document["events"] if e["kind"] == "token.expired"]
            assert [e["token"] for e in expiries] == [expiring_id]  # type: ignore[index]
            # ... and prunes the log to one event; revoke two tokens: the first is pruned.
            for token in (tenants.acme_pull, tenants.acme_project):
                parsed = parse_token(token)
                assert parsed is not None
                await tenants.store.revoke_token(parsed[1], time.time())
            while True:
                answer = await feed.get("/api/v1/events", params={"after": 0})
                if answer.status_code == 410:
                    break
                assert answer.status_code == 200, answer.text
                await trio.sleep(0.05)
            assert_error(answer, 410, "GONE")
        tenants.origin.shutdown.set()
        tenants.store.close()


async def test_other_processes_appends_wake_polls_and_shutdown_answers_them(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        tenants = await start_tenants(nursery, tmp_path / "origin")
        edge_token = await _edge_token(tenants)
        parsed = parse_token(tenants.acme_pull)
        assert parsed is not None
        async with edge_client(tenants.url, basic(edge_token)) as feed:
            start = (await feed.get("/api/v1/events")).json()["last"]
            answers: list[dict[str, object]] = []

            async def poll(wait: float) -> None:
                answers.append(await _events(feed, start, wait=wait))

            # The tenancy store's own database is another process as far as origin knows:
            # its commit wakes no signal there; origin's watcher sees the log's head move.
            async with trio.open_nursery() as waiting:
                waiting.start_soon(poll, 20)
                await trio.sleep(0.2)
                revoked_at = trio.current_time()
                await tenants.store.revoke_token(parsed[1], time.time())
            print(
                "poll woken by another process's append after "
                f"{(trio.current_time() - revoked_at) * 1000:.0f} ms"
            )
            events = answers.pop()["events"]
            assert isinstance(events, list) and [e["kind"] for e in events] == ["token.revoked"]

            # Shutting origin down answers a waiting poll now, not after its wait.
            last = (await feed.get("/api/v1/events")).json()["last"]
            async with trio.open_nursery() as waiting:
                waiting.start_soon(lambda: _answer_within(feed, last, answers))
                await trio.sleep(0.2)
                tenants.origin.shutdown.set()
            assert answers == [{"events": [], "last": last}]
        tenants.store.close()


async def _answer_within(
    feed: httpx.AsyncClient, last: int, answers: list[dict[str, object]]
) -> None:
    with trio.fail_after(10):  # the poll asks to wait 50 s
        answers.append(await _events(feed, last, wait=50))


async def test_the_feed_on_postgresql(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The same feed on PostgreSQL: this origin's own commit wakes a poll at once, another
    process's append (the tenancy store's own database) through the head watcher."""
    with fresh_schema(require_postgres()) as url, trio.fail_after(TIMEOUT):
        tenants = await start_tenants(nursery, tmp_path / "origin", database_url=url)
        edge_token = await _edge_token(tenants)
        parsed = parse_token(tenants.acme_pull)
        assert parsed is not None
        async with (
            edge_client(tenants.url, basic(edge_token)) as feed,
            edge_client(tenants.url, basic(tenants.acme)) as acme,
        ):
            start = (await feed.get("/api/v1/events")).json()["last"]
            first, second = new_image(), new_image()
            await push_manifest(acme, "acme/app", first, "v1")
            answers: list[dict[str, object]] = []

            async def poll(after: int) -> None:
                answers.append(await _events(feed, after, wait=20))

            async with trio.open_nursery() as waiting:
                waiting.start_soon(poll, start)
                await trio.sleep(0.2)
                await push_manifest(acme, "acme/app", second, "v1")
            (moved,) = answers.pop()["events"]  # type: ignore[misc]
            assert moved["kind"] == "tag.moved" and moved["digest"] == second.digest
            async with trio.open_nursery() as waiting:
                waiting.start_soon(poll, moved["seq"])
                await trio.sleep(0.2)
                await tenants.store.revoke_token(parsed[1], time.time())
            (revoked,) = answers.pop()["events"]  # type: ignore[misc]
            assert revoked["kind"] == "token.revoked" and revoked["seq"] > moved["seq"]
        tenants.origin.shutdown.set()
        tenants.store.close()
