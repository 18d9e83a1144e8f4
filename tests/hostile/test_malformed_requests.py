"""Malformed requests arriving while the response is written never end a process.

hypercorn 0.18's trio worker died of these (``trio.BusyResourceError`` escaping its
connection task ended ``trio.run``: PITFALLS.md); each sequence runs ROUNDS times, some
concurrently, against the real origin and edge processes, which must then still answer and
hold no more descriptors or memory than before.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from tests.hostile.deployment import (
    MIB,
    Deployment,
    deployment,
    descriptor_targets,
    exchange,
    push_blob,
    sockets_settle,
    sqlite_descriptors,
    status_of,
    usage,
)
from tests.processes import OriginProcess

pytestmark = pytest.mark.hostile

ROUNDS = 100
PARALLEL = 10
#: Slack over the base after the attacks: allocator noise and worker threads' database
#: handles, nothing per request (ROUNDS per attack would show far above these).
RSS_SLACK = 24 * MIB
DESCRIPTOR_SLACK = 32

ATTACKS = {
    "chunked body with an invalid chunk size": (
        b"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\n"
    ),
    "bytes after a Connection: close request": (
        b"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\nGARBAGE\r\n\r\n"
    ),
    "a pipelined request with a broken body": (
        b"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n"
        b"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n"
    ),
}


def _request(template: bytes, path: str, authorization: str = "") -> bytes:
    auth = f"Authorization: {authorization}\r\n".encode() if authorization else b""
    return template.replace(b"{path}", path.encode()).replace(b"{auth}", auth)


async def _attack(server: OriginProcess, payload: bytes, answers: set[int]) -> None:
    async def one_lane() -> None:
        for _ in range(ROUNDS // PARALLEL):
            reply = await exchange(server, payload)
            # The route's answer or the server's 400 (which one wins is a race); never a 5xx.
            assert status_of(reply) in answers | {0, 400}, reply[:300]

    async with trio.open_nursery() as nursery:
        for _ in range(PARALLEL):
            nursery.start_soon(one_lane)


async def _survives_all(deployed: Deployment, server: OriginProcess, paths: dict[str, int]) -> None:
    async with deployed.client(server) as client, trio.open_nursery() as nursery:
        # Warm up what the attacks reach (lazy imports, pools, worker threads) first.
        for path in [*paths] * PARALLEL:
            nursery.start_soon(client.get, path)
    base = usage(server)
    base_sqlite = sqlite_descriptors(server.process.pid)
    for template in ATTACKS.values():
        for path, status in paths.items():
            await _attack(server, _request(template, path), {status, 401})
            await _attack(server, _request(template, path, deployed.authorization()), {status})
    assert server.process.returncode is None, "the server process ended"
    async with deployed.client(server) as client:
        assert (await client.get("/v2/")).status_code == 200
    await sockets_settle(server, base.sockets + 2)
    after = usage(server)
    # Requests must leave nothing open; worker threads' SQLite connections are not theirs.
    grown = after.descriptors - base.descriptors
    grown -= sqlite_descriptors(server.process.pid) - base_sqlite
    assert grown < DESCRIPTOR_SLACK, (grown, descriptor_targets(server.process.pid))
    assert after.rss < base.rss + RSS_SLACK


async def test_malformed_bodies_end_neither_origin_nor_edge(tmp_path: Path) -> None:
    with trio.fail_after(300):
        async with deployment(tmp_path) as deployed:
            digest = await push_blob(deployed, "victim", os.urandom(2 * MIB))
            blob = f"/v2/{deployed.org}/victim/blobs/{digest}"
            await _survives_all(deployed, deployed.origin, {"/v2/": 200, blob: 200})
            await _survives_all(deployed, deployed.edge, {"/healthz": 200, blob: 200})
            async with deployed.client(deployed.edge) as client:
                assert (await client.get("/healthz")).status_code == 200
