"""Fixtures for the interop tier: real servers as subprocesses, real skopeo.

- ``origin``: ``depot-registry origin serve --listen 127.0.0.1:0`` with a data dir under
  ``tmp_path``; the port is read back from its single ``listening on`` stdout line. Teardown
  sends SIGTERM and requires exit code 0.
- ``distribution``: CNCF Distribution (``docker-registry serve``), filesystem storage under
  ``tmp_path``, on a free port; ready once ``GET /v2/`` answers 200.
- ``registry``: each of the two, so every round-trip test also checks itself against the
  reference implementation (a test failing only on ``[origin]`` points at the origin).
- ``skopeo``: skopeo with a private policy, registries.conf, HOME/XDG dirs and TMPDIR.
- ``auth_origin``: an origin with auth on (no ``--no-auth``), org ``acme`` and a pull token of
  it created with the ``depot-registry org|token create`` CLI on the same data dir.
- ``auth_edge``: ``depot-registry edge serve`` on 127.0.0.1:0 in front of ``auth_origin``, with
  an edge token (``token create --kind edge``) in a file and a cache dir under ``tmp_path``;
  teardown sends SIGTERM and requires exit code 0.

Everything a server writes goes to ``tmp_path/<name>.log``; failure messages quote its tail.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.peers import require_program
from tests.processes import (
    distribution_process,
    edge_process,
    origin_command,
    origin_process,
    tail,
)

SKOPEO_SECONDS = 180
CLI_SECONDS = 30


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


@asynccontextmanager
async def run_origin(
    tmp: Path, extra_args: Sequence[str] = ("--no-auth",)
) -> AsyncIterator[Registry]:
    data_dir = tmp / "origin-data"
    data_dir.mkdir()
    async with origin_process(data_dir, tmp / "origin.log", extra_args) as origin:
        yield Registry("origin", origin.host, origin.log)
        returncode = await origin.stop()
    assert returncode == 0, (
        f"origin exited with {returncode} after SIGTERM (expected 0); stderr tail:\n"
        f"{tail(origin.log, 40)}"
    )


@asynccontextmanager
async def run_distribution(tmp: Path) -> AsyncIterator[Registry]:
    async with distribution_process(tmp, require_program("docker-registry")) as (host, log):
        yield Registry("distribution", host, log)


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
class AuthOrigin:
    """An origin with auth on, org ``org`` and two of its tokens, made with the CLI."""

    registry: Registry
    data_dir: Path
    org: str
    org_token: str  # may push and pull in the org
    pull_token: str  # may only pull

    @property
    def host(self) -> str:
        return self.registry.host

    def ref(self, repository: str, reference: str) -> str:
        return self.registry.ref(repository, reference)

    def log_tail(self, lines: int = 40) -> str:
        return self.registry.log_tail(lines)

    async def cli(self, *args: str) -> Any:
        """``depot-registry ARGS --data-dir DATA --json`` against this origin's database."""
        return await run_cli(self.data_dir, *args)


async def run_cli(data_dir: Path, *args: str) -> Any:
    """Run a tenancy command of the CLI with ``--json``; return its parsed stdout."""
    command = [*origin_command(), *args, "--data-dir", str(data_dir), "--json"]
    with trio.fail_after(CLI_SECONDS):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL
        )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}:\n"
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
    return json.loads(result.stdout)


@pytest.fixture
async def auth_origin(tmp_path: Path) -> AsyncIterator[AuthOrigin]:
    """An origin with auth on; ``acme`` and its tokens are created while it serves (the
    server reads the same SQLite database, so it sees them at once)."""
    async with run_origin(tmp_path, extra_args=()) as registry:
        data_dir = tmp_path / "origin-data"
        org = await run_cli(data_dir, "org", "create", "acme")
        pull = await run_cli(data_dir, "token", "create", "--kind", "pull", "--org", org["name"])
        yield AuthOrigin(registry, data_dir, org["name"], org["token"], pull["token"])


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

    async def attempt(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run ``skopeo --debug ARGS`` and return the result, whatever the exit status."""
        command = [self.program, "--debug", *self._global_args(), *args]
        with trio.fail_after(SKOPEO_SECONDS):
            return await trio.run_process(
                command,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env,
                stdin=subprocess.DEVNULL,
            )

    async def run(self, *args: str) -> bytes:
        """Run ``skopeo --debug ARGS``; return stdout, fail with the stderr tail otherwise."""
        result = await self.attempt(*args)
        if result.returncode != 0:
            stderr = "\n".join(result.stderr.decode(errors="replace").splitlines()[-60:])
            raise AssertionError(
                f"skopeo exited {result.returncode}: {' '.join(result.args)}\n{stderr}"
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


@dataclass(frozen=True)
class AuthEdge:
    """An edge in front of an :class:`AuthOrigin`; clients use the origin's tokens on it."""

    registry: Registry
    origin: AuthOrigin
    cache_dir: Path

    @property
    def host(self) -> str:
        return self.registry.host

    def ref(self, repository: str, reference: str) -> str:
        return self.registry.ref(repository, reference)

    def log_tail(self, lines: int = 40) -> str:
        return self.registry.log_tail(lines)


@asynccontextmanager
async def run_edge(tmp: Path, origin: AuthOrigin) -> AsyncIterator[AuthEdge]:
    """An edge with an edge token made with the CLI on the origin's data dir."""
    edge_token = await origin.cli("token", "create", "--kind", "edge")
    token_file = tmp / "edge.token"
    token_file.write_text(edge_token["token"] + "\n")
    token_file.chmod(0o600)
    cache_dir = tmp / "edge-cache"
    upstream = f"http://{origin.host}"
    async with edge_process(upstream, token_file, cache_dir, tmp / "edge.log") as edge:
        yield AuthEdge(Registry("edge", edge.host, edge.log), origin, cache_dir)
        returncode = await edge.stop()
    assert returncode == 0, (
        f"edge exited with {returncode} after SIGTERM (expected 0); stderr tail:\n"
        f"{tail(edge.log, 40)}"
    )


@pytest.fixture
async def auth_edge(tmp_path: Path, auth_origin: AuthOrigin) -> AsyncIterator[AuthEdge]:
    async with run_edge(tmp_path, auth_origin) as edge:
        yield edge
