"""What ``deploy/`` describes, started for real: the containers of each Kubernetes overlay and
the systemd units' ExecStart lines run here with their own flags, environment and settings
files (paths moved under the test's directory, ``tests/deploy_local.py``), bootstrapped with
the commands of ``deploy/README.md``, and answer their probes. The region runs two origins
on one PostgreSQL database and one data directory with the signing key made by the
README's openssl command, and edges of both kinds (Deployment and DaemonSet).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import trio

from tests.deploy_local import (
    KUBERNETES,
    SYSTEMD,
    LocalCommand,
    container,
    find,
    local_container,
    local_unit,
)
from tests.kustomize import render
from tests.peers import require_program
from tests.processes import stop_process, tail

DEADLINE_SECONDS = 120
CLI = str(Path(sys.executable).with_name("depot-registry"))
PG_CANDIDATES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose tables land in a schema of this test's own, dropped after."""
    for url in PG_CANDIDATES:
        admin = sa.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with admin.connect():
                break
        except sa.exc.OperationalError:
            admin.dispose()
    else:
        message = "PostgreSQL is not reachable on 127.0.0.1:5432 (database test)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    schema = f"deploy_{uuid.uuid4().hex}"
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield f"{url}?options=-csearch_path%3D{schema}"
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()


def environment(command: LocalCommand) -> dict[str, str]:
    """This machine's environment without DEPOT_* settings, plus the deployed ones."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    return base | command.env


def local_argv(command: LocalCommand) -> list[str]:
    argv = list(command.argv)
    if argv[0] in ("depot-registry", "/opt/depot-registry/bin/depot-registry"):
        argv[0] = CLI
    return argv


@asynccontextmanager
async def serving(command: LocalCommand, log: Path) -> AsyncIterator[str]:
    """Run ``command`` (a server: it prints "... listening on URL"); yield the URL."""
    command.set_flag("--listen", "127.0.0.1:0")
    with log.open("ab") as stderr:
        process = await trio.lowlevel.open_process(
            local_argv(command),
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=environment(command),
        )
    try:
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise AssertionError(f"{command.argv[:3]} did not start:\n{tail(log)}")
            line += chunk
        assert b" listening on " in line, line
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stdout)
            yield line.decode().rsplit(" ", 1)[1].strip()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            assert await stop_process(process) == 0, tail(log)


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


async def cli_json(command: LocalCommand, *args: str) -> dict[str, str]:
    """A depot-registry command run as the README runs it in the container (its
    environment, so the same database), printing JSON."""
    result = await trio.run_process(
        [CLI, *args, "--json"], capture_stdout=True, env=environment(command)
    )
    document: dict[str, str] = json.loads(result.stdout)
    return document


async def until_ok(url: str) -> None:
    """Wait until ``url`` answers 200 (the caller's deadline bounds the wait)."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        while True:
            if (await client.get(url)).status_code == 200:
                return
            await trio.sleep(0.05)  # e.g. an edge loading origin's keys


async def probe(url: str, spec_container: dict, kind: str) -> None:  # type: ignore[type-arg]
    """Wait until the container's ``kind`` probe (an httpGet) answers 200."""
    await until_ok(url + spec_container[kind]["httpGet"]["path"])


async def assert_pull_access(edge_url: str, org_token: str) -> None:
    """A client authenticated with the org token gets through the edge to origin."""
    basic = base64.b64encode(f"x-token:{org_token}".encode()).decode()
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        anonymous = await client.get(edge_url + "/v2/")
        assert anonymous.status_code == 401
        response = await client.get(edge_url + "/v2/", headers={"Authorization": f"Basic {basic}"})
        assert response.status_code == 200, response.text


async def test_single_node_overlay_serves(tmp_path: Path) -> None:
    objects = render(KUBERNETES / "overlays" / "single-node")
    statefulset = find(objects, "StatefulSet", "depot-origin")
    origin_spec = container(statefulset, "origin")
    origin = local_container(statefulset, origin_spec, objects, tmp_path / "origin", {})
    with trio.fail_after(DEADLINE_SECONDS):
        # deploy/README.md: the first org and the edge token, in the origin's container.
        data_dir = origin.flag("--data-dir")
        org = await cli_json(origin, "org", "create", "demo", "--init", "--data-dir", data_dir)
        edge_token = await cli_json(
            origin, "token", "create", "--kind", "edge", "--data-dir", data_dir
        )
        async with serving(origin, tmp_path / "origin.log") as origin_url:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                await probe(origin_url, origin_spec, kind)
            deployment = find(objects, "Deployment", "depot-edge")
            edge_spec = container(deployment, "edge")
            secrets = {"depot-edge-token": {"token": edge_token["token"]}}
            edge = local_container(deployment, edge_spec, objects, tmp_path / "edge", secrets)
            edge.set_flag("--upstream", origin_url)
            async with serving(edge, tmp_path / "edge.log") as edge_url:
                for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    await probe(edge_url, edge_spec, kind)
                await assert_pull_access(edge_url, org["token"])


async def test_region_overlays_serve_from_postgresql_with_one_signing_key(
    tmp_path: Path, postgres_schema_url: str
) -> None:
    openssl = require_program("openssl")
    objects = render(KUBERNETES / "overlays" / "region")
    deployment = find(objects, "Deployment", "depot-origin")
    # deploy/README.md: the signing key for the Secret depot-signing-key.
    key = tmp_path / "signing.pem"
    generate = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    await trio.run_process([openssl, *generate, "-out", str(key)], capture_stderr=True)
    secrets = {
        "depot-signing-key": {"000001700000000-depot-1.pem": key.read_text()},
        "depot-database": {"url": postgres_schema_url},
    }
    # Two replicas: one data volume and one database, pods of their own otherwise.
    shared = tmp_path / "volume"
    shared.mkdir()
    replicas = []
    for replica in ("a", "b"):
        (tmp_path / replica).mkdir()
        (tmp_path / replica / "data").symlink_to(shared, target_is_directory=True)
        init_spec = container(deployment, "install-signing-key", init=True)
        init = local_container(deployment, init_spec, objects, tmp_path / replica, secrets)
        await trio.run_process(init.argv, env=environment(init))
        origin_spec = container(deployment, "origin")
        replicas.append(
            local_container(deployment, origin_spec, objects, tmp_path / replica, secrets)
        )
    with trio.fail_after(DEADLINE_SECONDS):
        org = await cli_json(replicas[0], "org", "create", "acme")
        edge_token = await cli_json(replicas[0], "token", "create", "--kind", "edge")
        async with (
            serving(replicas[0], tmp_path / "origin-a.log") as origin_a,
            serving(replicas[1], tmp_path / "origin-b.log") as origin_b,
            httpx.AsyncClient(trust_env=False, timeout=10) as client,
        ):
            for url in (origin_a, origin_b):
                jwks = (await client.get(url + "/.well-known/jwks.json")).json()
                assert [k["kid"] for k in jwks["keys"]] == ["depot-1"]
            edge_secrets = {"depot-edge-token": {"token": edge_token["token"]}}
            daemonset_objects = render(KUBERNETES / "overlays" / "region-daemonset")
            for name, workload, rendered in (
                ("deployment", find(objects, "Deployment", "depot-edge"), objects),
                (
                    "daemonset",
                    find(daemonset_objects, "DaemonSet", "depot-edge"),
                    daemonset_objects,
                ),
            ):
                edge_spec = container(workload, "edge")
                edge = local_container(workload, edge_spec, rendered, tmp_path / name, edge_secrets)
                edge.set_flag("--upstream", origin_b if name == "daemonset" else origin_a)
                async with serving(edge, tmp_path / f"edge-{name}.log") as edge_url:
                    await probe(edge_url, edge_spec, "readinessProbe")
                    await probe(edge_url, edge_spec, "livenessProbe")
                    await assert_pull_access(edge_url, org["token"])


async def test_systemd_units_serve(tmp_path: Path) -> None:
    origin = local_unit(SYSTEMD / "depot-origin.service", tmp_path / "host", {})
    with trio.fail_after(DEADLINE_SECONDS):
        # deploy/README.md: the first org and the edge token, as the depot user.
        data_dir = origin.flag("--data-dir")
        org = await cli_json(origin, "org", "create", "demo", "--init", "--data-dir", data_dir)
        edge_token = await cli_json(
            origin, "token", "create", "--kind", "edge", "--data-dir", data_dir
        )
        edge = local_unit(
            SYSTEMD / "depot-edge.service", tmp_path / "host", {"edge-token": edge_token["token"]}
        )
        async with serving(origin, tmp_path / "origin.log") as origin_url:
            edge.set_flag("--upstream", origin_url)
            async with serving(edge, tmp_path / "edge.log") as edge_url:
                await until_ok(edge_url + "/readyz")
                await assert_pull_access(edge_url, org["token"])
