"""The edge's relay API (``/api/v1/relay/jobs``) over real HTTP: who may start a job (the edge's
gate, as for a pull of the source), bad input, limits, following and cancelling, and that the
target credentials never come back out (events, errors, logs).

The target here is a TCP listener that accepts and never answers: a job against it runs
until it is cancelled. Copies to real registries are in ``tests/interop/test_relay.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.integration.edges import RunningEdge, edge_client, start_edge
from tests.integration.oci import TIMEOUT, assert_error, new_image, push_manifest
from tests.integration.tenants import Tenants, basic, start_tenants

JOBS = "/api/v1/relay/jobs"
PASSWORD = "target-password-never-shown"


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "origin")
    yield running
    running.origin.shutdown.set()
    running.store.close()


@pytest.fixture
async def silent_target(nursery: trio.Nursery) -> str:
    """HOST:PORT of a listener that accepts connections and never answers."""

    async def hold(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def saved_build(tenants: Tenants) -> str:
    """A build of the project (its id), pushed to origin under the build id."""
    async with httpx.AsyncClient(
        base_url=tenants.url, headers=basic(tenants.acme), trust_env=False, timeout=TIMEOUT
    ) as client:
        created = await client.post(f"/api/v1/projects/{tenants.project}/builds", json={})
        assert created.status_code in (200, 201), created.text
        build_id: str = created.json()["id"]
        await push_manifest(client, tenants.project, new_image(layers=2), build_id)
    return build_id


def job_body(project: str, reference: str, target: str) -> dict[str, Any]:
    return {
        "source": {"repository": project, "reference": reference},
        "targets": [target],
        "credentials": {target.partition("/")[0]: {"username": "u", "password": PASSWORD}},
    }


async def relay_edge(nursery: trio.Nursery, tenants: Tenants, tmp: Path, **kw: Any) -> RunningEdge:
    return await start_edge(nursery, tenants, tmp / "edge", graceful_timeout_seconds=1, **kw)


async def first_events(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async for line in response.aiter_lines():
        if line.strip():
            found.append(json.loads(line))
        if len(found) == count:
            break
    return found


async def test_who_may_start_a_job_and_bad_input(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, silent_target: str
) -> None:
    build_id = await saved_build(tenants)
    edge = await relay_edge(nursery, tenants, tmp_path)
    body = job_body(tenants.project, build_id, f"{silent_target}/team/app:v1")
    with trio.fail_after(TIMEOUT):
        async with edge_client(edge.url) as anonymous:
            refused = await anonymous.post(JOBS, json=body)
            assert_error(refused, 401, "UNAUTHORIZED")
            assert refused.headers["WWW-Authenticate"].startswith("Bearer ")
        async with edge_client(edge.url, basic(tenants.other)) as other_org:
            assert_error(await other_org.post(JOBS, json=body), 403, "DENIED")
        async with edge_client(edge.url, basic(tenants.acme)) as client:
            unknown = job_body(tenants.project, "nosuchbuild1", f"{silent_target}/team/app:v1")
            assert_error(await client.post(JOBS, json=unknown), 404, "MANIFEST_UNKNOWN")
            for bad in (
                b"not json",
                json.dumps({**body, "targets": []}).encode(),
                json.dumps(
                    {**body, "targets": [f"{silent_target}/team/app@sha256:{'0' * 64}"]}
                ).encode(),
                json.dumps({**body, "targets": ["Team/App:v1"]}).encode(),
                json.dumps({**body, "source": {"repository": tenants.project}}).encode(),
                json.dumps({**body, "credentials": {"x": {"username": "u"}}}).encode(),
                json.dumps({**body, "extra": 1}).encode(),
            ):
                answer = await client.post(JOBS, content=bad)
                assert_error(answer, 400, "INVALID_REQUEST")
                assert PASSWORD not in answer.text


async def test_limits_following_and_cancelling(
    nursery: trio.Nursery,
    tmp_path: Path,
    tenants: Tenants,
    silent_target: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    build_id = await saved_build(tenants)
    edge = await relay_edge(
        nursery,
        tenants,
        tmp_path,
        relay_max_jobs=2,
        relay_max_jobs_per_principal=1,
        relay_grace_seconds=60,
    )
    body = job_body(tenants.project, build_id, f"{silent_target}/team/app:v1")
    with trio.fail_after(TIMEOUT):
        async with (
            edge_client(edge.url, basic(tenants.acme)) as acme,
            edge_client(edge.url, basic(tenants.acme_pull)) as puller,
            edge_client(edge.url, basic(tenants.acme_project)) as third,
        ):
            async with acme.stream("POST", JOBS, json=body) as started:
                assert started.status_code == 201
                assert started.headers["Content-Type"] == "application/x-ndjson"
                job_id = started.headers["X-Relay-Job"]
                assert started.headers["Location"] == f"{JOBS}/{job_id}"
                accepted, plan = await first_events(started, 2)
            assert accepted == {
                "seq": 0,
                "event": "accepted",
                "job": job_id,
                "source": f"{tenants.project}:{build_id}",
                "digest": accepted["digest"],
                "targets": [f"{silent_target}/team/app:v1"],
            }
            assert plan["event"] == "plan" and plan["blobs"] == 3, plan

            # One job per credential; the pull token may start its own (pull suffices).
            again = await acme.post(JOBS, json=body)
            assert_error(again, 429, "TOOMANYREQUESTS")
            assert again.headers["Retry-After"]
            async with puller.stream("POST", JOBS, json=body) as second:
                assert second.status_code == 201, await second.aread()
                second_id = second.headers["X-Relay-Job"]
            # Two jobs on the edge: its maximum.
            edge_full = await third.post(JOBS, json=body)
            assert_error(edge_full, 429, "TOOMANYREQUESTS")
            assert "maximum" in edge_full.json()["errors"][0]["message"]

            # Only the credential that started a job sees or cancels it.
            assert_error(await puller.get(f"{JOBS}/{job_id}"), 404, "NOT_FOUND")
            assert_error(await puller.delete(f"{JOBS}/{job_id}"), 404, "NOT_FOUND")
            cancelled = await acme.delete(f"{JOBS}/{job_id}")
            assert cancelled.status_code == 202, cancelled.text
            assert (await puller.delete(f"{JOBS}/{second_id}")).status_code == 202

            # Following it again (from event 0) reads it to its end.
            followed = await acme.get(f"{JOBS}/{job_id}", params={"after": "0"})
            assert followed.status_code == 200
            lines = [json.loads(line) for line in followed.text.splitlines()]
            assert lines[0]["seq"] == 1 and lines[0]["event"] == "plan"
            assert lines[-1] == {"seq": lines[-1]["seq"], "event": "cancelled",
                                 "reason": "cancelled by the client"}  # fmt: skip
            assert PASSWORD not in followed.text
            # The limit is free again.
            async with acme.stream("POST", JOBS, json=body) as third_job:
                assert third_job.status_code == 201
                await acme.delete(f"{JOBS}/{third_job.headers['X-Relay-Job']}")
    assert PASSWORD not in caplog.text
