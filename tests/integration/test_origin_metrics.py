"""Origin's ``/metrics`` after real requests: requests by route and status, latency, bytes in
(a chunked upload) and out, open upload sessions, token exchanges by result, database
latency, garbage collection runs and bytes freed; and its access log, one JSON line per
request with the edge's fields."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.conftest import start_origin
from tests.integration.edges import metric, start_edge
from tests.integration.oci import random_blob, start_upload, upload_url
from tests.integration.tenants import basic, start_tenants

TIMEOUT = 30


def client(url: str, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        trust_env=False,
        timeout=TIMEOUT,
        headers={"Accept-Encoding": "identity", **headers},
    )


async def scrape(url: str) -> str:
    async with client(url) as http:
        answer = await http.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        return answer.text


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


async def test_origin_metrics_after_real_requests(nursery: trio.Nursery, tmp_path: Path) -> None:
    tenants = await start_tenants(nursery, tmp_path / "origin")
    blob = random_blob(300_000)
    with trio.fail_after(TIMEOUT):
        async with client(tenants.url) as http:
            params = {"service": "depot-registry", "scope": "repository:acme/app:pull"}
            assert (
                await http.get("/token", params=params, headers=basic(tenants.acme))
            ).status_code == 200
            assert (
                await http.get("/token", params=params, headers=basic("dpo_wrong"))
            ).status_code == 401
            assert (await http.get("/token", params=params)).status_code == 200  # anonymous
        async with client(tenants.url, **basic(tenants.acme)) as http:
            started = await start_upload(http, "acme/app")
            done = await http.put(  # chunked: no Content-Length
                upload_url(started), params={"digest": blob.digest}, content=chunks(blob.data)
            )
            assert done.status_code == 201, done.text
            got = await http.get(f"/v2/acme/app/blobs/{blob.digest}")
            assert got.content == blob.data
            assert (await http.get("/v2/acme/app/manifests/nope")).status_code == 404
            await start_upload(http, "acme/left-open")
        text = await scrape(tenants.url)
    assert metric(text, "depot_origin_requests_total", 'route="blob",status="200"') == 1
    assert metric(text, "depot_origin_requests_total", 'route="manifest",status="404"') == 1
    assert metric(text, "depot_origin_requests_total", 'route="token",status="401"') == 1
    assert metric(text, "depot_origin_request_seconds_count", 'route="blob"') == 1
    for result, count in (("issued", 1), ("refused", 1), ("anonymous", 1)):
        assert metric(text, "depot_origin_token_exchanges_total", f'result="{result}"') == count
    assert metric(text, "depot_origin_bytes_received_total") >= blob.size
    assert metric(text, "depot_origin_bytes_sent_total") >= blob.size
    assert metric(text, "depot_origin_upload_sessions") == 1  # the one left open
    assert metric(text, "depot_origin_database_seconds_count", 'operation="write"') > 0
    assert metric(text, "depot_origin_database_seconds_count", 'operation="lookup"') > 0
    tenants.origin.shutdown.set()
    tenants.store.close()


async def test_gc_runs_and_bytes_freed(nursery: trio.Nursery, tmp_path: Path) -> None:
    origin = await start_origin(
        nursery, tmp_path / "data", auth=False, gc_interval_seconds=0.2, gc_grace_seconds=0
    )
    orphan = random_blob(50_000)  # a blob no manifest references: garbage at once
    with trio.fail_after(TIMEOUT):
        async with client(origin.url) as http:
            started = await start_upload(http, "lib/app")
            put = await http.put(
                upload_url(started), params={"digest": orphan.digest}, content=orphan.data
            )
            assert put.status_code == 201
        while True:  # until a collection has run since the blob was stored
            text = await scrape(origin.url)
            if metric(text, "depot_origin_gc_bytes_freed_total") >= orphan.size:
                break
            await trio.sleep(0.1)
    assert metric(text, "depot_origin_gc_runs_total", 'result="ok"') >= 1
    assert metric(text, "depot_origin_gc_blobs_deleted_total") >= 1
    origin.shutdown.set()


async def test_origin_and_edge_log_one_json_line_per_request_with_the_same_fields(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tenants = await start_tenants(nursery, tmp_path / "origin")
    edge = await start_edge(nursery, tenants, tmp_path / "edge")
    caplog.set_level(logging.INFO, logger="depot")
    with trio.fail_after(TIMEOUT):
        async with client(edge.url, **basic(tenants.acme)) as http:
            answer = await http.get("/v2/acme/app/tags/list")  # passed through to origin
            assert answer.status_code in (200, 404), answer.text
    lines = {
        record.name: json.loads(record.getMessage())
        for record in caplog.records
        if record.name in ("depot.edge.access", "depot.origin.access")
        and "/tags/list" in record.getMessage()
    }
    assert set(lines) == {"depot.edge.access", "depot.origin.access"}, caplog.text
    edge_line, origin_line = lines["depot.edge.access"], lines["depot.origin.access"]
    assert set(edge_line) == set(origin_line)
    assert origin_line["path"] == "/v2/acme/app/tags/list"
    assert origin_line["repository"] == "acme/app" and origin_line["status"] == answer.status_code
    await edge.stop()
    tenants.origin.shutdown.set()
    tenants.store.close()
