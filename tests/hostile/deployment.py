"""A real origin process (auth on, one org) and a real edge process in front of it, for
adversarial clients; plus what the hostile tests measure: open descriptors and RSS of a
process and its children, and raw-socket exchanges."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.processes import (
    OriginProcess,
    edge_process,
    origin_command,
    origin_process,
    process_family,
)

CLI_SECONDS = 60
MIB = 1 << 20


@dataclass
class Deployment:
    origin: OriginProcess
    edge: OriginProcess
    org: str
    push_token: str  # the org's token: push and pull in its repositories

    def authorization(self) -> str:
        credential = base64.b64encode(f"x-token:{self.push_token}".encode()).decode()
        return f"Basic {credential}"

    def client(self, server: OriginProcess) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=server.url,
            trust_env=False,
            timeout=30,
            headers={"Accept-Encoding": "identity", "Authorization": self.authorization()},
        )


async def run_cli(data_dir: Path, *args: str) -> Any:
    command = [*origin_command(), *args, "--data-dir", str(data_dir), "--json"]
    with trio.fail_after(CLI_SECONDS):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return json.loads(result.stdout)


def _toml(settings: dict[str, float]) -> str:
    return "".join(f"{key} = {value!r}\n" for key, value in settings.items())


@asynccontextmanager
async def deployment(
    tmp: Path,
    origin_settings: dict[str, float] | None = None,
    edge_settings: dict[str, float] | None = None,
) -> AsyncIterator[Deployment]:
    """Origin and edge as processes; the settings go to their TOML config files."""
    data_dir = tmp / "origin-data"
    origin_config = tmp / "origin.toml"
    origin_config.write_text(_toml(origin_settings or {}))
    edge_config = tmp / "edge.toml"
    edge_config.write_text(_toml(edge_settings or {}))
    async with origin_process(
        data_dir, tmp / "origin.log", ["--config", str(origin_config)]
    ) as origin:
        org = await run_cli(data_dir, "org", "create", "acme")
        edge_token = await run_cli(data_dir, "token", "create", "--kind", "edge")
        token_file = tmp / "edge.token"
        token_file.write_text(edge_token["token"] + "\n")
        async with edge_process(
            origin.url,
            token_file,
            tmp / "edge-cache",
            tmp / "edge.log",
            ["--config", str(edge_config)],
        ) as edge:
            yield Deployment(origin, edge, org["name"], org["token"])


async def push_blob(deployed: Deployment, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with deployed.client(deployed.origin) as client:
        response = await client.post(
            f"/v2/{deployed.org}/{repository}/blobs/uploads/?digest={digest}", content=data
        )
    assert response.status_code == 201, response.text
    return digest


# --- what the process holds -----------------------------------------------------------------


def open_descriptors(pid: int, prefix: str = "") -> int:
    """Descriptors of ``pid`` and its children whose target starts with ``prefix``
    (``"socket:"``: connections and listeners)."""
    total = 0
    for member in process_family(pid):
        directory = f"/proc/{member}/fd"
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            try:
                total += os.readlink(f"{directory}/{name}").startswith(prefix)
            except FileNotFoundError:
                continue  # closed meanwhile
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for member in process_family(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            continue
    return total


@dataclass(frozen=True)
class Usage:
    descriptors: int
    sockets: int
    rss: int


def descriptor_targets(pid: int) -> list[str]:
    """What ``pid``'s descriptors (not its children's) point at, for failure messages."""
    directory = f"/proc/{pid}/fd"
    targets = []
    for name in os.listdir(directory):
        try:
            targets.append(os.readlink(f"{directory}/{name}"))
        except FileNotFoundError:
            continue
    return sorted(targets)


def sqlite_descriptors(pid: int) -> int:
    """Descriptors of ``pid`` on SQLite files (``*.db``, ``-wal``, ``-shm``): diskcache holds
    one connection per worker thread, so these follow how many threads trio keeps (bounded
    by the limiters, retired when idle), not how many requests came."""
    return sum(target.endswith((".db", ".db-wal", ".db-shm")) for target in descriptor_targets(pid))


def usage(server: OriginProcess) -> Usage:
    pid = server.process.pid
    return Usage(open_descriptors(pid), open_descriptors(pid, "socket:"), rss_bytes(pid))


async def sockets_settle(server: OriginProcess, at_most: int) -> int:
    """Wait (the caller bounds how long) until the server holds at most ``at_most`` sockets
    — closing connections is asynchronous — and return the count."""
    # Polling /proc: another process's descriptors offer nothing to wait on.
    while (count := open_descriptors(server.process.pid, "socket:")) > at_most:  # noqa: ASYNC110
        await trio.sleep(0.05)
    return count


async def sockets_reach(server: OriginProcess, at_least: int) -> int:
    """Wait (the caller bounds how long) until the server holds ``at_least`` sockets."""
    while (count := open_descriptors(server.process.pid, "socket:")) < at_least:  # noqa: ASYNC110
        await trio.sleep(0.05)
    return count


def host_port(server: OriginProcess) -> tuple[str, int]:
    host, _, port = server.host.rpartition(":")
    return host, int(port)


async def exchange(server: OriginProcess, payload: bytes, read_limit: int = 1 << 20) -> bytes:
    """Connect, send ``payload``, read what comes back until the server closes (or
    ``read_limit`` bytes); a reset counts as a close."""
    stream = await trio.open_tcp_stream(*host_port(server))
    received = bytearray()
    async with stream:
        try:
            await stream.send_all(payload)
            while len(received) < read_limit:
                data = await stream.receive_some(65536)
                if not data:
                    break
                received += data
        except trio.BrokenResourceError:
            pass
    return bytes(received)


def status_of(response: bytes) -> int:
    """The status code of the first response in raw bytes (0 if none arrived)."""
    if not response.startswith(b"HTTP/1.1 "):
        return 0
    return int(response[9:12])


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


async def upload(server: OriginProcess, head: bytes, body_size: int) -> bytes:
    """Send ``head`` and ``body_size`` bytes of body as fast as the server takes them while
    reading what it answers (as curl does); return the answer. A reset before the answer
    was read comes back as what was read until then (often nothing)."""
    stream = await trio.open_tcp_stream(*host_port(server))
    received = bytearray()

    async def send() -> None:
        piece = b" " * MIB
        with suppress(trio.BrokenResourceError):
            await stream.send_all(head)
            for _ in range(body_size // MIB):
                await stream.send_all(piece)
            await stream.send_all(b" " * (body_size % MIB))

    async def receive() -> None:
        with suppress(trio.BrokenResourceError):
            while data := await stream.receive_some(65536):
                received.extend(data)

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await receive()
        nursery.cancel_scope.cancel()
    return bytes(received)
