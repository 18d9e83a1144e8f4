"""Real origin and edge processes (auth on, origin trusting the edge's address) for hostile
clients, what those clients send, and what the tests measure afterwards.

The processes are started once per test module (a plain, synchronous fixture: Hypothesis
runs every example in a trio run of its own, so the servers must outlive them). Clients are
told apart by the loopback address they connect from: the edge reaches origin from
127.0.0.1, the one address origin trusts to name its clients (``trusted_proxies``); hostile
clients come from 127.0.0.2 and up.

Requests are raw bytes on a socket (:func:`raw_request`): hostile input must reach the
server exactly as written, without a client library validating or encoding it first.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from config.settings import OriginSettings
from tests.integration.tenants import OwnTenancyStore
from tests.processes import origin_command, process_family, tail

START_SECONDS = 30
STOP_SECONDS = 20
#: No answer within this long is a hang (a failure), never a timing assertion.
ANSWER_SECONDS = 10
MIB = 1 << 20


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def descriptors(self) -> int:
        """Open file descriptors of the process and its children."""
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in process_family(self.process.pid))

    def rss(self) -> int:
        """Resident bytes of the process and its children."""
        total = 0
        for pid in process_family(self.process.pid):
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total


@dataclass
class Fleet:
    origin: Server
    edge: Server
    data_dir: Path
    org: str
    org_token: str  # push and pull in the org's repositories

    def basic(self, token: str | None = None) -> str:
        raw = base64.b64encode(f"x-token:{token or self.org_token}".encode()).decode()
        return f"Basic {raw}"

    def servers(self) -> tuple[Server, Server]:
        return self.origin, self.edge


async def _tenancy(data_dir: Path) -> tuple[str, str]:
    """Org ``acme`` and its token, and an edge token, in the running origin's database."""
    store = OwnTenancyStore.open(OriginSettings(data_dir=data_dir).resolved_database_url)
    try:
        now = time.time()
        org = await store.create_org("acme", now)
        _, org_token = await store.create_token("org", org_id=org.id, now=now)
        _, edge_token = await store.create_token("edge", now=now)
    finally:
        store.close()
    return org_token, edge_token


def _start(command: Sequence[str], tmp: Path, name: str, prefix: str) -> Server:
    log, out = tmp / f"{name}.log", tmp / f"{name}.out"
    with log.open("ab") as stderr, out.open("wb") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        line = out.read_bytes().partition(b"\n")[0]
        if line.startswith(prefix.encode()):
            return Server(process, line.decode().removeprefix(prefix).strip(), log)
        time.sleep(0.05)  # waiting for the process to start listening
    process.kill()
    process.wait()
    raise AssertionError(f"{name} did not start\n{tail(log)}")


def _stop(server: Server) -> int:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def _toml(settings: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


@contextmanager
def fleet(
    tmp: Path,
    *,
    origin_settings: dict[str, Any] | None = None,
    edge_settings: dict[str, Any] | None = None,
) -> Iterator[Fleet]:
    """Origin (org ``acme`` with a token, repository ``acme/public`` public) and an edge in
    front of it; both must still be alive at the end."""
    data_dir = tmp / "origin-data"
    origin_config = tmp / "origin.toml"
    origin_config.write_text(_toml({"trusted_proxies": "127.0.0.1", **(origin_settings or {})}))
    edge_config = tmp / "edge.toml"
    edge_config.write_text(_toml(edge_settings or {}))
    origin = _start(
        [
            *origin_command(),
            *("origin", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)),
            *("--config", str(origin_config)),
        ],
        tmp,
        "origin",
        "depot-registry origin listening on ",
    )
    edge = None
    try:
        # Through the store, as an administrator's process would (two CLI runs cost seconds).
        org_token, edge_token = trio.run(_tenancy, data_dir)
        token_file = tmp / "edge.token"
        token_file.write_text(edge_token + "\n")
        edge = _start(
            [
                *origin_command(),
                *("edge", "serve", "--listen", "127.0.0.1:0", "--upstream", origin.url),
                *("--cache-dir", str(tmp / "edge-cache"), "--upstream-token-file", str(token_file)),
                *("--config", str(edge_config)),
            ],
            tmp,
            "edge",
            "depot-registry edge listening on ",
        )
        yield Fleet(origin, edge, data_dir, "acme", org_token)
        for server in (origin, edge):
            assert server.alive, f"{server.url} died\n{tail(server.log)}"
    finally:
        if edge is not None:
            _stop(edge)
        _stop(origin)


# -- raw requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    head: bytes  # status line and headers
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def request_bytes(
    method: str,
    target: bytes,
    host: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: " + host.encode()]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def raw_request(
    server: Server,
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    *,
    source: str | None = None,
) -> Answer:
    """One request as exactly these bytes (``Connection: close``); the whole answer."""
    host, port = server.address
    with trio.fail_after(ANSWER_SECONDS):
        stream = await trio.open_tcp_stream(host, port, local_address=source)
        async with stream:
            await stream.send_all(request_bytes(method, target, f"{host}:{port}", headers, body))
            received = bytearray()
            while chunk := await _receive(stream):
                received += chunk
                if len(received) > 4 * MIB:
                    break
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), (target[:200], bytes(received[:300]))
    return Answer(int(status_line.split()[1]), head, rest)


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:  # reset after the answer: the server closed first
        return b""


async def stalled_request(
    server: Server,
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    declared_length: int,
    source: str,
) -> trio.SocketStream:
    """A request whose head says ``declared_length`` body bytes follow, and none do."""
    host, port = server.address
    lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: {host}:{port}".encode()]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % declared_length)
    with trio.fail_after(ANSWER_SECONDS):
        stream = await trio.open_tcp_stream(host, port, local_address=source)
        await stream.send_all(b"\r\n".join(lines) + b"\r\n\r\n")
    return stream


async def answer_on(stream: trio.SocketStream) -> int | None:
    """The status a stalled request was answered with, if one came within the guard."""
    received = bytearray()
    with trio.move_on_after(ANSWER_SECONDS):
        while b"\r\n" not in received:
            chunk = await _receive(stream)
            if not chunk:
                break
            received += chunk
    line = bytes(received).split(b"\r\n", 1)[0]
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None
