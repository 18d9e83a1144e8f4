"""What the push relay tests run: an origin with tenants and an edge in-process, builds saved
to the origin, CNCF Distribution targets (htpasswd Basic auth, or Bearer tokens from
:class:`tests.token_service.TokenService`), and ``depot`` as a real process.

The ``depot`` process reads the target credentials from a Docker config directory
(``DOCKER_CONFIG``) and talks to the edge with an org token (``DEPOT_REGISTRY``,
``DEPOT_TOKEN``); it never sees the build's bytes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import trio

from depot import api
from tests.integration.edges import RunningEdge
from tests.integration.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    Blob,
    Manifest,
    image_manifest,
    push_manifest,
)
from tests.integration.tenants import Tenants, basic
from tests.integration.test_depot_cli import depot_command
from tests.interop.oci_layout import random_layer
from tests.peers import require_program
from tests.processes import distribution_process
from tests.token_service import TokenService, User

#: Bound of one ``depot`` or skopeo run, and of each test (the machine may be loaded).
COMMAND_SECONDS = 120
BCRYPT_ROUNDS = 4
PUSHER = ("pusher", "pusher-secret")


def gzip_image(sizes: Sequence[int], platform: tuple[str, str] = ("linux", "amd64")) -> Manifest:
    """An image whose layers are real gzip'd tars of random bytes (skopeo copies them as
    they are; anything else it would compress on the way)."""
    layers, diff_ids = [], []
    for size in sizes:
        compressed, diff_id = random_layer(size)
        layers.append(Blob(compressed, OCI_LAYER))
        diff_ids.append(diff_id)
    config = {
        "architecture": platform[1],
        "os": platform[0],
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return image_manifest(Blob(json.dumps(config).encode(), OCI_CONFIG), layers)


def platform_index(children: Sequence[tuple[Manifest, tuple[str, str]]]) -> Manifest:
    """An OCI index of ``children``, each with its (os, architecture)."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            child.descriptor(platform={"os": os_name, "architecture": architecture})
            for child, (os_name, architecture) in children
        ],
    }
    payload = json.dumps(document, indent=2).encode()
    return Manifest(payload, OCI_INDEX, children=tuple(child for child, _ in children))


async def save_build(tenants: Tenants, manifest: Manifest, save_tags: Sequence[str] = ()) -> str:
    """Save ``manifest`` as a build of ``tenants.project`` at the origin; its build id."""
    async with httpx.AsyncClient(
        base_url=tenants.url, headers=basic(tenants.acme), trust_env=False, timeout=60
    ) as client:
        build = await api.create_build(client, tenants.project, list(save_tags))
        for reference in (build["id"], *save_tags):
            await push_manifest(client, tenants.project, manifest, reference)
    build_id: str = build["id"]
    return build_id


async def push_to_origin(tenants: Tenants, manifest: Manifest) -> None:
    """Push ``manifest`` (a referrer, say) by digest into the project's repository."""
    async with httpx.AsyncClient(
        base_url=tenants.url, headers=basic(tenants.acme), trust_env=False, timeout=60
    ) as client:
        await push_manifest(client, tenants.project, manifest)


def htpasswd_auth(tmp: Path, users: dict[str, str]) -> str:
    """Distribution's ``auth:`` section for htpasswd Basic auth with ``users``."""
    path = tmp / "htpasswd"
    lines = [
        f"{user}:".encode() + bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
        for user, password in users.items()
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return f"auth:\n  htpasswd:\n    realm: relay-target\n    path: {path}\n"


@asynccontextmanager
async def basic_target(tmp: Path, **kwargs: Any) -> AsyncIterator[str]:
    """Distribution with htpasswd Basic auth (user ``pusher``); yields HOST:PORT."""
    await trio.Path(tmp).mkdir(parents=True, exist_ok=True)
    program = require_program("docker-registry")
    auth = htpasswd_auth(tmp, dict([PUSHER]))
    async with distribution_process(tmp, program, auth, **kwargs) as (host, _):
        yield host


@asynccontextmanager
async def token_target(
    nursery: trio.Nursery, tmp: Path, **service_fields: Any
) -> AsyncIterator[tuple[str, TokenService]]:
    """Distribution with Bearer tokens: ``pusher`` may push, ``puller`` only pull."""
    await trio.Path(tmp).mkdir(parents=True, exist_ok=True)
    program = require_program("docker-registry")
    users = {
        PUSHER[0]: User(PUSHER[1], frozenset({"pull", "push"})),
        "puller": User("puller-secret", frozenset({"pull"})),
    }
    service = TokenService(tmp, users, **service_fields)
    await service.start(nursery)
    try:
        async with distribution_process(tmp, program, service.distribution_auth()) as (host, _):
            yield host, service
    finally:
        service.stop()


def docker_config(directory: Path, logins: dict[str, tuple[str, str]]) -> Path:
    """A Docker config directory whose ``config.json`` has ``auths`` for ``logins``
    (registry → (user, password)), as ``docker login`` writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    auths = {
        registry: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        for registry, (user, password) in logins.items()
    }
    (directory / "config.json").write_text(json.dumps({"auths": auths}))
    return directory


@dataclass
class DepotPush:
    """``depot`` as a process against the edge, with the target credentials in
    ``docker_config``."""

    edge: RunningEdge
    token: str
    home: Path
    docker_config: Path
    registry: str | None = None  # where depot reaches the edge (default: the edge's URL)

    def env(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("DEPOT_", "DOCKER_"))}
        environ.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            DOCKER_CONFIG=str(self.docker_config),
            DEPOT_REGISTRY=self.registry or self.edge.url,
            DEPOT_TOKEN=self.token,
        )
        return environ

    def command(self, *args: str) -> list[str]:
        return [*depot_command(), *args]

    async def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(COMMAND_SECONDS):
            result = await trio.run_process(
                self.command(*args),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env(),
                stdin=subprocess.DEVNULL,
            )
        self.check_secrets(result.stdout + result.stderr)
        return result

    def check_secrets(self, output: bytes) -> None:
        assert self.token.encode() not in output, "depot printed its token"
        config = json.loads((self.docker_config / "config.json").read_text())
        for entry in config.get("auths", {}).values():
            secret = base64.b64decode(entry["auth"]).partition(b":")[2]
            assert secret not in output, "depot printed a target password"


def events(stdout: bytes) -> list[dict[str, Any]]:
    """The events ``depot push --json`` printed."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def blob_statuses(found: list[dict[str, Any]], target: str) -> dict[str, set[str]]:
    """digest → the statuses its blob events had at ``target`` (registry/repository)."""
    statuses: dict[str, set[str]] = {}
    for event in found:
        if event["event"] == "blob" and event["target"] == target:
            statuses.setdefault(event["digest"], set()).add(event["status"])
    return statuses
