"""Clients that stop reading a blob pin nothing for long.

Before: 50 stalled readers of one blob took the origin from 90 to 890 MiB RSS (still 242 MiB
after they left) and nothing ever closed their connections. Now a send that makes no
progress for ``send_idle_timeout_seconds`` closes the connection, per-connection buffers
are small (sendfile on the origin, 1 MiB reads on the edge), and RSS returns near its base.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from tests.hostile.deployment import (
    MIB,
    Deployment,
    deployment,
    descriptor_targets,
    host_port,
    push_blob,
    sockets_reach,
    sqlite_descriptors,
    usage,
)
from tests.processes import OriginProcess

pytestmark = pytest.mark.hostile

READERS = 50
BLOB = 64 * MIB
SEND_IDLE = {"send_idle_timeout_seconds": 2.0}
#: What 50 stalled readers may add while they stall (the bug: 16 MiB each; now nothing
#: with sendfile on the origin, one 1 MiB chunk in flight and one read ahead on the edge) ...
STALLED_SLACK = 160 * MIB
#: ... and what may remain once they are gone.
AFTER_SLACK = 24 * MIB
DESCRIPTOR_SLACK = 32


async def _stalled_reader(server: OriginProcess, request: bytes) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    # A small receive window: the server's sends stall after a few hundred KiB.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(host_port(server))
    await sock.send(request)
    return sock


async def _stall(deployed: Deployment, server: OriginProcess, path: str, data: bytes) -> None:
    async with deployed.client(server) as client:
        response = await client.get(path)  # warm (and, on the edge, fills the cache)
        assert response.content == data
    base = usage(server)
    base_sqlite = sqlite_descriptors(server.process.pid)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {deployed.authorization()}\r\n\r\n"
    ).encode()
    readers = [await _stalled_reader(server, request) for _ in range(READERS)]
    try:
        # Every connection is open and stalled: the server holds its descriptor ...
        await sockets_reach(server, base.sockets + READERS)
        # ... until the send deadline closes them all, while the clients keep their sockets.
        peak = base.rss
        while (now := usage(server)).sockets > base.sockets + 2:
            peak = max(peak, now.rss)
            await trio.sleep(0.05)
    finally:
        for reader in readers:
            reader.close()
    assert peak < base.rss + STALLED_SLACK
    after = usage(server)
    assert after.rss < base.rss + AFTER_SLACK
    # Worker threads open their own database handles (not counted); nothing per connection.
    grown = after.descriptors - base.descriptors
    grown -= sqlite_descriptors(server.process.pid) - base_sqlite
    assert grown < DESCRIPTOR_SLACK, (grown, descriptor_targets(server.process.pid))
    async with deployed.client(server) as client:
        assert (await client.get(path)).content == data  # and serves as before


async def test_stalled_readers_are_cut_and_release_their_memory(tmp_path: Path) -> None:
    data = os.urandom(BLOB)
    with trio.fail_after(240):
        async with deployment(tmp_path, SEND_IDLE, SEND_IDLE) as deployed:
            digest = await push_blob(deployed, "big", data)
            path = f"/v2/{deployed.org}/big/blobs/{digest}"
            await _stall(deployed, deployed.origin, path, data)
            await _stall(deployed, deployed.edge, path, data)
