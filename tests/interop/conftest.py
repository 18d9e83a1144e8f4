"""Fixtures for the interop tier: real servers as subprocesses, real skopeo.

- ``origin``: ``depot-registry origin serve --listen 127.0.0.1:0`` with a data dir under
  ``tmp_path``; the port is read back from its single ``listening on`` stdout line. Teardown
  sends SIGTERM and requires exit code 0.
- ``distribution``: CNCF Distribution (``docker-registry serve``), filesystem storage under
  ``tmp_path``, on a free port; ready once ``GET /v2/`` answers 200.
- ``registry``: each of the two, so every round-trip test also checks itself against the
  reference implementation (a test failing only on ``[origin]`` points at the origin).
- ``skopeo``: skopeo with a private policy, registries.conf, HOME/XDG dirs and TMPDIR.

Everything a server writes goes to ``tmp_path/<name>.log``; failure messages quote its tail.
"""

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
import pytest
import trio

from tests.peers import require_program

START_SECONDS = 30
STOP_SECONDS = 20
SKOPEO_SECONDS = 180
LISTENING_PREFIX = b"depot-registry origin listening on http://"


@dataclass(frozen=True)
class Registry:
    """A running registry, addressed as ``HOST:PORT`` in skopeo ``docker://`` references."""

    kind: str
    host: str
    log: Path

    def ref(self, repository: str, reference: str) -> str:
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"docker://{self.host}/{repository}{separator}{reference}"

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} missing>"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def origin_command() -> list[str]:
    script = Path(sys.executable).with_name("depot-registry")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from origin.cli import main; sys.exit(main())"]


async def _drain(stream: trio.abc.ReceiveStream, sink: Path, initial: bytes) -> None:
    with sink.open("wb") as out:
        out.write(initial)
        while chunk := await stream.receive_some():
            out.write(chunk)
            out.flush()


async def _stop(process: trio.Process) -> int:
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


@asynccontextmanager
async def run_origin(tmp: Path, extra_args: Sequence[str] = ()) -> AsyncIterator[Registry]:
    log = tmp / "origin.log"
    stdout_log = tmp / "origin.stdout"
    data_dir = tmp / "origin-data"
    data_dir.mkdir()
    command = [
        *origin_command(),
        *("origin", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)),
        *extra_args,
    ]
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL
        )
    try:
        assert process.stdout is not None
        host, rest = await _read_listening_line(process, process.stdout, log)
        async with trio.open_nursery() as nursery:
            # Keep reading stdout so a chatty server never blocks on a full pipe.
            nursery.start_soon(_drain, process.stdout, stdout_log, rest)
            try:
                yield Registry("origin", host, log)
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(process)  # stdout reaches EOF, so _drain ends
    finally:
        with trio.CancelScope(shield=True):
            returncode = await _stop(process)  # no-op once stopped; returns the exit code
    assert returncode == 0, (
        f"origin exited with {returncode} after SIGTERM (expected 0); stderr tail:\n{tail(log, 40)}"
    )


async def _read_listening_line(
    process: trio.Process, stdout: trio.abc.ReceiveStream, log: Path
) -> tuple[str, bytes]:
    """Read stdout up to the first newline; return (HOST:PORT, bytes read after the line)."""
    buffer = b""
    with trio.move_on_after(START_SECONDS):
        while b"\n" not in buffer:
            chunk = await stdout.receive_some()
            if not chunk:
                break
            buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    if not line.startswith(LISTENING_PREFIX):
        raise AssertionError(
            f"origin did not print {LISTENING_PREFIX.decode()!r}HOST:PORT (waited up to "
            f"{START_SECONDS}s; exit code {process.poll()}); stdout {buffer[:500]!r}; "
            f"stderr tail:\n{tail(log, 40)}"
        )
    host = line.removeprefix(LISTENING_PREFIX).decode().strip().rstrip("/")
    _, _, port = host.rpartition(":")
    assert host.startswith("127.0.0.1:") and port.isdigit() and port != "0", line
    return host, rest


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
async def run_distribution(tmp: Path) -> AsyncIterator[Registry]:
    program = require_program("docker-registry")
    root = tmp / "distribution-data"
    root.mkdir()
    host = f"127.0.0.1:{free_port()}"
    config = tmp / "distribution.yml"
    config.write_text(DISTRIBUTION_CONFIG.format(root=root, addr=host))
    log = tmp / "distribution.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with log.open("wb") as output:
        process = await trio.lowlevel.open_process(
            [program, "serve", str(config)],
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        await _wait_ready(process, f"http://{host}/v2/", log)
        yield Registry("distribution", host, log)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)


async def _wait_ready(process: trio.Process, url: str, log: Path) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        with trio.move_on_after(START_SECONDS):
            while process.poll() is None:
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    raise AssertionError(
        f"{url} not ready within {START_SECONDS}s (exit code {process.poll()}); "
        f"log tail:\n{tail(log, 40)}"
    )


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Registry]:
    async with run_origin(tmp_path) as registry:
        yield registry


@pytest.fixture
async def distribution(tmp_path: Path) -> AsyncIterator[Registry]:
    async with run_distribution(tmp_path) as registry:
        yield registry


@pytest.fixture(params=["origin", "distribution"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    server = run_origin(tmp_path) if request.param == "origin" else run_distribution(tmp_path)
    async with server as running:
        yield running


@dataclass(frozen=True)
class Skopeo:
    program: str
    workdir: Path
    env: dict[str, str]

    def _global_args(self) -> list[str]:
        return [
            "--policy",
            str(self.workdir / "policy.json"),
            "--registries.d",
            str(self.workdir / "registries.d"),
            "--tmpdir",
            str(self.workdir / "tmp"),
        ]

    async def run(self, *args: str) -> bytes:
        """Run ``skopeo --debug ARGS``; return stdout, fail with the stderr tail otherwise."""
        command = [self.program, "--debug", *self._global_args(), *args]
        with trio.fail_after(SKOPEO_SECONDS):
            result = await trio.run_process(
                command,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env,
                stdin=subprocess.DEVNULL,
            )
        if result.returncode != 0:
            stderr = "\n".join(result.stderr.decode(errors="replace").splitlines()[-60:])
            raise AssertionError(
                f"skopeo exited {result.returncode}: {' '.join(command)}\n{stderr}"
            )
        return result.stdout

    async def copy(self, source: str, destination: str, *flags: str) -> None:
        await self.run(
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--src-no-creds",
            "--dest-no-creds",
            *flags,
            source,
            destination,
        )

    async def inspect_raw(self, reference: str) -> bytes:
        return await self.run("inspect", "--raw", "--tls-verify=false", "--no-creds", reference)


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    program = require_program("skopeo")
    workdir = tmp_path / "skopeo"
    for sub in ("home", "run", "tmp", "registries.d"):
        (workdir / sub).mkdir(parents=True)
    (workdir / "policy.json").write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    (workdir / "registries.conf").write_text("")
    home = workdir / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(workdir / "run"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(workdir / "tmp"),
        "CONTAINERS_REGISTRIES_CONF": str(workdir / "registries.conf"),
    }
    return Skopeo(program, workdir, env)
