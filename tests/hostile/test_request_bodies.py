"""Request bodies that are too big or stop arriving: an answer the client can read, and
nothing held afterwards.

* A manifest PUT over the 4 MiB limit is answered 413 (SIZE_INVALID) early; the server
  drains the rest before closing, so the client, still uploading, reads the 413 instead of
  a connection reset.
* A body that stops (headers then silence, or part of it then silence) gets 408
  (REQUEST_TIMEOUT) after ``body_idle_timeout_seconds`` and its connection closes, on the
  origin and through the edge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.hostile.deployment import (
    MIB,
    Deployment,
    body_of,
    deployment,
    exchange,
    sockets_settle,
    status_of,
    upload,
    usage,
)
from tests.processes import OriginProcess

pytestmark = pytest.mark.hostile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IDLE = {"body_idle_timeout_seconds": 1.0}


@pytest.mark.parametrize("size", [4 * MIB + 1, 64 * MIB])
async def test_an_oversize_manifest_put_reads_its_413(tmp_path: Path, size: int) -> None:
    oversize = b"{" + b" " * (size - 2) + b"}"
    with trio.fail_after(120):
        async with deployment(tmp_path) as deployed:
            for server in (deployed.origin, deployed.edge):
                async with deployed.client(server) as client:
                    for _ in range(5):
                        response = await client.put(
                            f"/v2/{deployed.org}/big/manifests/latest",
                            content=oversize,
                            headers={"Content-Type": OCI_MANIFEST},
                        )
                        assert response.status_code == 413, response.text
                        assert response.json()["errors"][0]["code"] == "SIZE_INVALID"


async def test_an_oversize_manifest_reaches_a_client_that_reads_while_it_uploads(
    tmp_path: Path,
) -> None:
    size = 64 * MIB
    with trio.fail_after(120):
        async with deployment(tmp_path) as deployed:
            head = (
                f"PUT /v2/{deployed.org}/big/manifests/latest HTTP/1.1\r\nHost: x\r\n"
                "Connection: close\r\n"
                f"Authorization: {deployed.authorization()}\r\n"
                f"Content-Type: {OCI_MANIFEST}\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
            for server in (deployed.origin, deployed.edge):
                for _ in range(10):
                    reply = await upload(server, head, size)
                    assert status_of(reply) == 413, reply[:300]
                    assert _error_code(reply) == "SIZE_INVALID"


def _error_code(reply: bytes) -> str:
    code: str = json.loads(body_of(reply))["errors"][0]["code"]
    return code


async def _upload_location(deployed: Deployment, server: OriginProcess) -> str:
    async with deployed.client(server) as client:
        response = await client.post(f"/v2/{deployed.org}/slow/blobs/uploads/")
    assert response.status_code == 202, response.text
    location: str = response.headers["Location"]
    return location.removeprefix(server.url)


async def _stalled_bodies_get_408(deployed: Deployment, server: OriginProcess) -> None:
    auth = f"Authorization: {deployed.authorization()}\r\n"
    patch = await _upload_location(deployed, server)
    requests = {
        "PATCH, part of the body then silence": (
            f"PATCH {patch} HTTP/1.1\r\nHost: x\r\n{auth}"
            "Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n0123456789"
        ),
        "PUT manifest, headers then silence": (
            f"PUT /v2/{deployed.org}/slow/manifests/v1 HTTP/1.1\r\nHost: x\r\n{auth}"
            f"Content-Type: {OCI_MANIFEST}\r\nContent-Length: 50\r\n\r\n"
        ),
    }
    async with deployed.client(server) as client:
        assert (await client.get("/v2/")).status_code == 200
    base = usage(server)
    for what, request in requests.items():
        replies: list[bytes] = []

        async def one(request: str = request, replies: list[bytes] = replies) -> None:
            replies.append(await exchange(server, request.encode()))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        # exchange() returns once the server closed the connection: each of them did.
        for reply in replies:
            assert status_of(reply) == 408, (what, reply[:300])
            assert _error_code(reply) == "REQUEST_TIMEOUT", what
    await sockets_settle(server, base.sockets + 2)
    assert usage(server).descriptors < base.descriptors + 32
    async with deployed.client(server) as client:
        assert (await client.get("/v2/")).status_code == 200


async def test_a_request_body_that_stops_gets_408_on_origin_and_edge(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with deployment(tmp_path, IDLE, IDLE) as deployed:
            await _stalled_bodies_get_408(deployed, deployed.origin)
            await _stalled_bodies_get_408(deployed, deployed.edge)
