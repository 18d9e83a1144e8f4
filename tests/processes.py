"""Real server processes for tests and benchmarks: the origin (signals, kill -9, restarts),
edges in front of it, and CNCF Distribution as a peer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

LISTENING_PREFIX = b"depot-registry origin listening on "
EDGE_LISTENING_PREFIX = b"depot-registry edge listening on "
START_SECONDS = 30
STOP_SECONDS = 20


def process_family(pid: int) -> list[int]:
    """``pid`` and its descendants (a server may fork workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except FileNotFoundError:
            continue
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def stop_process(process: trio.Process) -> int:
    """SIGTERM, wait up to STOP_SECONDS, then SIGKILL. Returns the exit code (-9 if killed)."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_SECONDS):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


def origin_command() -> list[str]:
    script = Path(sys.executable).with_name("depot-registry")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from origin.cli import main; sys.exit(main())"]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"<{path} missing>"


@dataclass
class OriginProcess:
    process: trio.Process
    url: str  # http://127.0.0.1:PORT (https:// when it serves TLS)
    log: Path

    @property
    def host(self) -> str:
        return self.url.partition("://")[2]

    async def stop(self) -> int:
        return await stop_process(self.process)

    async def kill(self) -> None:
        self.process.kill()  # SIGKILL: no cleanup of any kind runs
        await self.process.wait()


@asynccontextmanager
async def origin_process(
    data_dir: Path, log: Path, extra_args: Sequence[str] = ()
) -> AsyncIterator[OriginProcess]:
    """Start an origin on 127.0.0.1:0; the caller's block runs while it serves."""
    command = [
        *origin_command(),
        *("origin", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)),
        *extra_args,
    ]
    with log.open("ab") as stderr:
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL
        )
    running = OriginProcess(process, "", log)
    try:
        assert process.stdout is not None
        running.url = await _read_listening_url(process.stdout, log)
        async with trio.open_nursery() as nursery:
            # Keep reading stdout so a chatty server never blocks on a full pipe.
            nursery.start_soon(_discard, process.stdout)
            try:
                yield running
            finally:
                with trio.CancelScope(shield=True):
                    await running.stop()
    finally:
        with trio.CancelScope(shield=True):
            await running.stop()


async def _discard(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


async def _read_listening_url(
    stdout: trio.abc.ReceiveStream, log: Path, prefix: bytes = LISTENING_PREFIX
) -> str:
    buffer = b""
    with trio.move_on_after(START_SECONDS):
        while b"\n" not in buffer:
            chunk = await stdout.receive_some()
            if not chunk:
                break
            buffer += chunk
    line = buffer.partition(b"\n")[0]
    if not line.startswith(prefix):
        what = prefix.split(b" ")[1].decode()
        raise AssertionError(f"{what} did not start: {buffer[:300]!r}\n{tail(log)}")
    return line.removeprefix(prefix).decode().strip()


@asynccontextmanager
async def edge_process(
    upstream: str,
    token_file: Path,
    cache_dir: Path,
    log: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> AsyncIterator[OriginProcess]:
    """Start ``depot-registry edge serve`` on 127.0.0.1:0 in front of the origin at
    ``upstream`` (``http://HOST:PORT``), with its edge token in ``token_file``; the caller's
    block runs while it serves, SIGTERM at the end (``stop()`` returns the exit code)."""
    command = [
        *origin_command(),
        *("edge", "serve", "--listen", "127.0.0.1:0", "--upstream", upstream),
        *("--cache-dir", str(cache_dir), "--upstream-token-file", str(token_file)),
        *extra_args,
    ]
    with log.open("ab") as stderr:
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=env
        )
    running = OriginProcess(process, "", log)
    try:
        assert process.stdout is not None
        running.url = await _read_listening_url(process.stdout, log, EDGE_LISTENING_PREFIX)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_discard, process.stdout)
            try:
                yield running
            finally:
                with trio.CancelScope(shield=True):
                    await running.stop()
    finally:
        with trio.CancelScope(shield=True):
            await running.stop()


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
"""


@asynccontextmanager
async def distribution_process(
    tmp: Path,
    program: str,
    auth: str = "",
    *,
    host: str | None = None,
    environ: dict[str, str] | None = None,
) -> AsyncIterator[tuple[str, Path]]:
    """CNCF Distribution on a free port with filesystem storage under ``tmp``; yields
    (HOST:PORT, log path). ``auth``: an ``auth:`` section of its config (htpasswd, token);
    with one, ``GET /v2/`` answering 401 means it is up. A restart: the same ``tmp`` and
    ``host`` again (the storage is kept), with ``environ={"REGISTRY_HTTP_SECRET": ...}`` so
    that upload sessions signed before it stay valid."""
    root = tmp / "distribution-data"
    root.mkdir(exist_ok=True)
    host = host or f"127.0.0.1:{free_port()}"
    config = tmp / "distribution.yml"
    config.write_text(DISTRIBUTION_CONFIG.format(root=root, addr=host) + auth)
    log = tmp / "distribution.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(environ or {})
    with log.open("ab") as output:
        process = await trio.lowlevel.open_process(
            [program, "serve", str(config)],
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        await _wait_ready(process, f"http://{host}/v2/", log, ready=(200, 401) if auth else (200,))
        yield host, log
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(process)


async def _wait_ready(
    process: trio.Process, url: str, log: Path, ready: tuple[int, ...] = (200,)
) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        with trio.move_on_after(START_SECONDS):
            while process.poll() is None:
                try:
                    if (await client.get(url)).status_code in ready:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    raise AssertionError(
        f"{url} not ready within {START_SECONDS}s (exit code {process.poll()}); "
        f"log tail:\n{tail(log, 40)}"
    )
