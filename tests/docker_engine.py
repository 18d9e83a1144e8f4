"""A real Docker engine for tests: Debian's ``dockerd`` started by the test, as root, with a
data root, exec root, socket and client config of its own under a short temporary directory
(unix socket paths are limited to 107 bytes), vfs storage and no networking of its own
(``--iptables=false --ip6tables=false --bridge=none``): nothing of the host's Docker, if any,
is touched. It pulls from and pushes to plain-HTTP registries on 127.0.0.0/8 without flags.

``docker_engine(...)`` yields a :class:`DockerEngine` whose ``env()`` points the ``docker`` CLI
at it (``DOCKER_HOST``, ``DOCKER_CONFIG``). Teardown stops the daemon and removes its
directories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tests.peers import require_program
from tests.processes import stop_process, tail

START_SECONDS = 60
COMMAND_SECONDS = 180


@dataclass(frozen=True)
class DockerEngine:
    root: Path
    socket: Path
    config_dir: Path  # the docker CLI's DOCKER_CONFIG (credentials from `docker login`)
    log: Path

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.config_dir))
        env.update(extra or {})
        return env

    async def docker(
        self, *args: str, stdin: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the ``docker`` CLI against this engine; output captured."""
        with trio.fail_after(COMMAND_SECONDS):
            result = await trio.run_process(
                [require_program("docker"), *args],
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env(),
            )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')[-2000:]}\n"
                f"dockerd log tail:\n{tail(self.log, 30)}"
            )
        return result


@asynccontextmanager
async def docker_engine(
    extra_args: Sequence[str] = (), daemon_config: Mapping[str, object] | None = None
) -> AsyncIterator[DockerEngine]:
    """Start a private ``dockerd``; ``daemon_config`` becomes its ``daemon.json``."""
    program = require_program("dockerd")
    require_program("docker")
    root = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))
    try:
        engine = DockerEngine(root, root / "d.sock", root / "client", root / "dockerd.log")
        engine.config_dir.mkdir()
        config_file = root / "daemon.json"
        config_file.write_text(json.dumps(dict(daemon_config or {})))
        command = [
            program,
            *("--storage-driver", "vfs", "--iptables=false", "--ip6tables=false"),
            *("--bridge=none", "--data-root", str(root / "data")),
            *("--exec-root", str(root / "exec"), "--pidfile", str(root / "d.pid")),
            *("--config-file", str(config_file), "-H", engine.host),
            *extra_args,
        ]
        with engine.log.open("wb") as output:
            process = await trio.lowlevel.open_process(
                command, stdout=output, stderr=output, stdin=subprocess.DEVNULL
            )
        try:
            await _wait_ready(process, engine)
            yield engine
        finally:
            with trio.CancelScope(shield=True):
                await stop_process(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _wait_ready(process: trio.Process, engine: DockerEngine) -> None:
    transport = httpx.AsyncHTTPTransport(uds=str(engine.socket))
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=2) as client:
        with trio.move_on_after(START_SECONDS):
            while process.poll() is None:
                try:
                    if (await client.get("http://docker/_ping")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
    raise AssertionError(
        f"dockerd not ready within {START_SECONDS}s (exit code {process.poll()}); "
        f"log tail:\n{tail(engine.log, 40)}"
    )
