"""``depot push``: the edge copies a saved build to CNCF Distribution, and ``depot`` (a real
process) only starts the job and shows its events.

Targets are Distribution 2.8 on loopback (plain HTTP, as the relay speaks to 127.0.0.0/8)
with htpasswd Basic auth or with Bearer tokens; it has no referrers API, so referrers go to
the ``sha256-<hex>`` tag schema. What reached a target is read back with skopeo.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.docker_engine import docker_engine
from tests.integration.edges import RunningEdge, edge_client, metric, metrics, start_edge
from tests.integration.oci import (
    Manifest,
    new_artifact,
)
from tests.integration.tenants import Tenants, basic, start_tenants
from tests.interop.conftest import Skopeo
from tests.interop.relay_rig import (
    COMMAND_SECONDS,
    PUSHER,
    DepotPush,
    basic_target,
    blob_statuses,
    docker_config,
    events,
    gzip_image,
    platform_index,
    push_to_origin,
    save_build,
    token_target,
)
from tests.processes import free_port
from tests.tcp_proxy import CuttingProxy, HoldingProxy
from tests.token_service import TokenService

pytestmark = pytest.mark.interop

KiB, MiB = 1024, 1024 * 1024
CHUNK = 1 * MiB
SBOM = "application/vnd.example.sbom.v1+json"


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "origin")
    yield running
    running.origin.shutdown.set()
    running.store.close()


async def relay_edge(
    nursery: trio.Nursery, tenants: Tenants, tmp_path: Path, **overrides: object
) -> RunningEdge:
    settings: dict[str, object] = {"relay_chunk_bytes": CHUNK, "graceful_timeout_seconds": 2}
    settings.update(overrides)
    return await start_edge(nursery, tenants, tmp_path / "edge", **settings)


def three_layer_image() -> Manifest:
    return gzip_image((64 * KiB, 700 * KiB, 3 * MiB))


def depot_for(
    edge: RunningEdge, tenants: Tenants, tmp_path: Path, logins: dict[str, tuple[str, str]]
) -> DepotPush:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    return DepotPush(edge, tenants.acme, home, docker_config(tmp_path / "docker", logins))


def push_args(reference: str, project: str, targets: list[str], *flags: str) -> list[str]:
    args = ["push", reference, "--project", project, *flags]
    for target in targets:
        args += ["-t", target]
    return args


async def raw_manifest(skopeo: Skopeo, reference: str, creds: tuple[str, str]) -> bytes:
    return await skopeo.run(
        "inspect", "--raw", "--tls-verify=false", "--creds", ":".join(creds), reference
    )


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_relay_of_a_three_layer_image_sets_every_tag(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, skopeo: Skopeo
) -> None:
    """Basic auth target; two tags in one repository and one in another: the second
    repository's blobs are mounted from the first; a second relay finds every blob there."""
    image = three_layer_image()
    build_id = await save_build(tenants, image, ["main"])
    edge = await relay_edge(nursery, tenants, tmp_path)
    async with basic_target(tmp_path / "target") as host:
        depot = depot_for(edge, tenants, tmp_path, {host: PUSHER})
        targets = [f"{host}/team/app:v1", f"{host}/team/app:latest", f"{host}/mirror/app:v1"]
        result = await depot.run(*push_args(build_id, tenants.project, targets, "--json"))
        assert result.returncode == 0, result.stderr.decode()
        found = events(result.stdout)
        assert found[-1]["event"] == "done", found[-1]
        assert found[-1]["digest"] == image.digest
        assert found[-1]["blobs_copied"] == len(image.blobs)
        assert found[-1]["blobs_mounted"] == len(image.blobs)
        copied = blob_statuses(found, f"{host}/team/app")
        assert copied == {blob.digest: {"started", "done"} for blob in image.blobs}
        mounted = blob_statuses(found, f"{host}/mirror/app")
        assert mounted == {blob.digest: {"mounted"} for blob in image.blobs}
        assert {e["target"] for e in found if e["event"] == "tag"} == set(targets)

        with trio.fail_after(COMMAND_SECONDS):
            for target in targets:
                raw = await raw_manifest(skopeo, f"docker://{target}", PUSHER)
                assert raw == image.payload, target
            layout = tmp_path / "copied"
            await skopeo.run(
                "copy", "--src-tls-verify=false", "--src-creds", ":".join(PUSHER),
                f"docker://{targets[2]}", f"oci:{layout}:copied",
            )  # fmt: skip
        for blob in image.blobs:  # skopeo verified each digest as it copied
            path = layout / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")
            assert path.read_bytes() == blob.data

        again = await depot.run(*push_args("main", tenants.project, targets[:1]))
        assert again.returncode == 0, again.stderr.decode()
        assert again.stdout.decode() == f"{targets[0]}@{image.digest}\n"
        stderr = again.stderr.decode()
        assert stderr.count("exists") == len(image.blobs), stderr
        assert "copying" not in stderr, stderr


async def test_relay_of_an_index_with_a_referrer_to_a_token_target(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, skopeo: Skopeo
) -> None:
    """A 2-platform index and an SBOM whose subject is the index, to Distribution with
    Bearer tokens. Distribution 2.8 has no referrers API: the SBOM is listed under the
    ``sha256-<hex>`` tag of the index, as the OCI spec's tag schema says."""
    amd64 = gzip_image((32 * KiB, 300 * KiB), ("linux", "amd64"))
    arm64 = gzip_image((32 * KiB, 300 * KiB), ("linux", "arm64"))
    index = platform_index([(amd64, ("linux", "amd64")), (arm64, ("linux", "arm64"))])
    build_id = await save_build(tenants, index)
    sbom = new_artifact(SBOM, index, annotations={"org.example.kind": "sbom"})
    await push_to_origin(tenants, sbom)
    edge = await relay_edge(nursery, tenants, tmp_path)
    async with token_target(nursery, tmp_path / "target") as (host, service):
        depot = depot_for(edge, tenants, tmp_path, {host: PUSHER})
        target = f"{host}/team/multi:v1"
        result = await depot.run(
            *push_args(f"{tenants.project}:{build_id}", tenants.project, [target], "--json")
        )
        assert result.returncode == 0, result.stderr.decode()
        found = events(result.stdout)
        assert found[-1]["event"] == "done" and found[-1]["digest"] == index.digest, found[-1]
        plan = next(e for e in found if e["event"] == "plan")
        assert (plan["manifests"], plan["referrers"]) == (3, 1), plan
        referrers = [e for e in found if e["event"] == "referrer"]
        assert [(r["digest"], r["subject"], r["via"]) for r in referrers] == [
            (sbom.digest, index.digest, "tag-schema")
        ]
        assert any(r.scopes == ["repository:team/multi:pull,push"] for r in service.requests)

        with trio.fail_after(COMMAND_SECONDS):
            assert await raw_manifest(skopeo, f"docker://{target}", PUSHER) == index.payload
            layout = tmp_path / "copied"
            await skopeo.run(
                "copy", "--all", "--src-tls-verify=false", "--src-creds", ":".join(PUSHER),
                f"docker://{target}", f"oci:{layout}:copied",
            )  # fmt: skip
            tag = "sha256-" + index.digest.removeprefix("sha256:")
            listed = json.loads(
                await raw_manifest(skopeo, f"docker://{host}/team/multi:{tag}", PUSHER)
            )
            stored = await raw_manifest(skopeo, f"docker://{host}/team/multi@{sbom.digest}", PUSHER)
        for child in (amd64, arm64):
            for blob in child.blobs:
                path = layout / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")
                assert path.read_bytes() == blob.data
        assert listed["mediaType"] == "application/vnd.oci.image.index.v1+json"
        assert listed["manifests"] == [
            {
                "mediaType": sbom.media_type,
                "digest": sbom.digest,
                "size": sbom.size,
                "artifactType": SBOM,
                "annotations": {"org.example.kind": "sbom"},
            }
        ]
        assert stored == sbom.payload


async def test_a_target_token_refused_mid_copy_is_renewed(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants
) -> None:
    """The target's tokens stop working while a copy runs (Distribution takes them for ~3 s;
    the token service says 300): the relay's next request is refused, and the client gets a
    new token and goes on."""
    image = gzip_image((64 * KiB, 2 * MiB))
    build_id = await save_build(tenants, image)
    edge = await relay_edge(nursery, tenants, tmp_path)
    # Distribution accepts a token until 60 s past its exp: this one for about 3 s.
    fields = {"lifetime_seconds": -57, "reported_lifetime_seconds": 300}
    async with token_target(nursery, tmp_path / "target", **fields) as (host, service):
        proxy = HoldingProxy(host)
        await proxy.start(nursery)
        proxy.hold_after(256 * KiB)  # the copy is under way, with its first token
        depot = depot_for(edge, tenants, tmp_path, {proxy.host: PUSHER})
        target = f"{proxy.host}/team/app:v1"
        results: list[subprocess.CompletedProcess[bytes]] = []

        async def push() -> None:
            results.append(await depot.run(*push_args(build_id, tenants.project, [target])))

        with trio.fail_after(COMMAND_SECONDS):
            async with trio.open_nursery() as running:
                running.start_soon(push)
                await proxy.held.wait()
                await refused_by(host, service)  # tokens issued by now are no good any more
                proxy.release()
        assert results[0].returncode == 0, results[0].stderr.decode()
    scope = "repository:team/app:pull,push"
    fetched = [r for r in service.requests if r.user == PUSHER[0] and r.scopes == [scope]]
    assert len(fetched) >= 2, service.requests


async def refused_by(host: str, service: TokenService) -> None:
    """Return once ``host`` refuses a token ``service`` issues now (polling)."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        answer = await client.get(
            f"{service.url}/token",
            params={"service": service.service, "scope": "repository:probe/x:pull"},
            auth=PUSHER,
        )
        token = answer.json()["token"]
        while True:
            probe = await client.get(
                f"http://{host}/v2/probe/x/tags/list", headers={"Authorization": f"Bearer {token}"}
            )
            if probe.status_code == 401:
                return
            await trio.sleep(0.2)


async def test_a_target_killed_mid_copy_resumes_where_it_stood(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants, skopeo: Skopeo
) -> None:
    """Distribution dies between two PATCH chunks of the big layer and comes back on the same
    port and storage: the relay asks the session where it stands and goes on from there.
    Counted at the target: no byte of the image reached it twice (plus one chunk of slack)."""
    image = gzip_image((40 * KiB, 6 * MiB))
    build_id = await save_build(tenants, image)
    edge = await relay_edge(nursery, tenants, tmp_path)
    directory, host = tmp_path / "target", f"127.0.0.1:{free_port()}"
    keep_sessions = {"REGISTRY_HTTP_SECRET": "relay-test-secret"}

    async def serve_target(stop: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        async with basic_target(directory, host=host, environ=keep_sessions):
            task_status.started()
            await stop.wait()  # then SIGTERM: Distribution 2.8 exits at once, mid-request

    proxy = HoldingProxy(host)
    await proxy.start(nursery)
    proxy.hold_after(2 * MiB + 512 * KiB)
    depot = depot_for(edge, tenants, tmp_path, {proxy.host: PUSHER})
    target = f"{proxy.host}/team/app:v1"
    results: list[subprocess.CompletedProcess[bytes]] = []
    pushed = trio.Event()

    async def push() -> None:
        results.append(await depot.run(*push_args(build_id, tenants.project, [target])))
        pushed.set()

    layout = tmp_path / "copied"
    with trio.fail_after(COMMAND_SECONDS):
        async with trio.open_nursery() as running:
            first_stop, second_stop = trio.Event(), trio.Event()
            async with trio.open_nursery() as first:
                await first.start(serve_target, first_stop)
                running.start_soon(push)
                await proxy.held.wait()
                first_stop.set()
            await running.start(serve_target, second_stop)
            proxy.release()
            await pushed.wait()
            assert results[0].returncode == 0, results[0].stderr.decode()
            image_bytes = sum(blob.size for blob in image.blobs) + image.size
            assert proxy.upstream_bytes < image_bytes + CHUNK, (proxy.upstream_bytes, image_bytes)
            await skopeo.run(
                "copy", "--src-tls-verify=false", "--src-creds", ":".join(PUSHER),
                f"docker://{host}/team/app:v1", f"oci:{layout}:copied",
            )  # fmt: skip
            second_stop.set()
    for blob in image.blobs:
        path = layout / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")
        assert path.read_bytes() == blob.data


async def test_wrong_target_credentials_show_the_targets_message(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants
) -> None:
    image = gzip_image((16 * KiB,))
    build_id = await save_build(tenants, image)
    edge = await relay_edge(nursery, tenants, tmp_path)
    async with basic_target(tmp_path / "basic") as host:
        depot = depot_for(edge, tenants, tmp_path / "a", {host: ("pusher", "wrong-secret")})
        result = await depot.run(*push_args(build_id, tenants.project, [f"{host}/team/app:v1"]))
        assert result.returncode == 1, result.stderr.decode()
        message = f"pushing to {host}/team/app: unauthorized: authentication required"
        assert message in result.stderr.decode(), result.stderr.decode()
    async with token_target(nursery, tmp_path / "token") as (host, _):
        depot = depot_for(edge, tenants, tmp_path / "b", {host: ("puller", "puller-secret")})
        result = await depot.run(*push_args(build_id, tenants.project, [f"{host}/team/app:v1"]))
        assert result.returncode == 1, result.stderr.decode()
        message = f"pushing to {host}/team/app: denied: authentication required"
        assert message in result.stderr.decode(), result.stderr.decode()


async def test_a_job_ends_when_the_cli_goes_away_or_is_interrupted(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants
) -> None:
    """The target never answers (its requests are held), so the job runs until something
    ends it: the CLI killed (its connection drops; the edge cancels the job after the grace
    period), then the CLI interrupted with SIGINT (it cancels the job itself, exits 130)."""
    image = gzip_image((16 * KiB,))
    build_id = await save_build(tenants, image)
    edge = await relay_edge(nursery, tenants, tmp_path, relay_grace_seconds=1)
    async with basic_target(tmp_path / "target") as host:
        proxy = HoldingProxy(host)
        await proxy.start(nursery)
        proxy.hold_after(0)
        depot = depot_for(edge, tenants, tmp_path, {proxy.host: PUSHER})
        args = push_args(build_id, tenants.project, [f"{proxy.host}/team/app:v1"], "--json")
        with trio.fail_after(COMMAND_SECONDS):
            async with edge_client(edge.url, basic(tenants.acme)) as client:
                running = await start_push(depot, args, tmp_path / "killed.log")
                process, job_id = running.process, running.job_id
                process.kill()
                await process.wait()
                await until_no_jobs(client)
                final = await last_event(client, job_id)
                assert final == {**final, "event": "cancelled", "reason": "the client went away"}

                running = await start_push(depot, args, tmp_path / "interrupted.log")
                process, job_id = running.process, running.job_id
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 130
                stderr = (tmp_path / "interrupted.log").read_bytes()
                assert b"interrupted: the relay job was cancelled" in stderr, stderr
                final = await last_event(client, job_id)
                assert final == {**final, "event": "cancelled", "reason": "cancelled by the client"}
                assert metric(await metrics(client), "depot_edge_relay_jobs") == 0
        proxy.release()


@dataclass
class Running:
    process: trio.Process
    job_id: str
    events: list[dict[str, Any]]  # read so far; the rest are still on its stdout


async def start_push(depot: DepotPush, args: list[str], log: Path) -> Running:
    """``depot push --json`` running, once the edge has planned its job."""
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            depot.command(*args),
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=depot.env(),
        )
    assert process.stdout is not None
    buffer, job_id = b"", None
    seen: list[dict[str, Any]] = []
    try:
        while True:
            line, newline, rest = buffer.partition(b"\n")
            if not newline:
                chunk = await process.stdout.receive_some()
                assert chunk, f"depot ended before its job was planned: see {log}"
                buffer += chunk
                continue
            buffer = rest
            event = json.loads(line)
            seen.append(event)
            if event["event"] == "accepted":
                job_id = event["job"]
            if event["event"] == "plan":
                assert job_id is not None and not buffer
                return Running(process, job_id, seen)
    except BaseException:
        process.kill()
        raise


async def until_no_jobs(client: httpx.AsyncClient) -> None:
    """Return once the edge runs no relay job (polling its metrics)."""
    while True:
        if metric(await metrics(client), "depot_edge_relay_jobs") == 0:
            return
        await trio.sleep(0.1)


async def last_event(client: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    """The final event of a job that has ended (following it from the start)."""
    response = await client.get(f"/api/v1/relay/jobs/{job_id}")
    assert response.status_code == 200, response.text
    found = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    final: dict[str, object] = found[-1]
    return final


async def test_depot_push_uses_what_docker_login_wrote(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants
) -> None:
    """A real ``docker login`` (a private dockerd) writes the config ``depot push`` reads;
    the engine then pulls what the relay pushed."""
    image = gzip_image((16 * KiB,))
    build_id = await save_build(tenants, image)
    edge = await relay_edge(nursery, tenants, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    async with basic_target(tmp_path / "target") as host, docker_engine() as engine:
        login = await engine.docker(
            "login", "--username", PUSHER[0], "--password-stdin", host,
            stdin=PUSHER[1].encode(),
        )  # fmt: skip
        assert b"Login Succeeded" in login.stdout, login
        depot = DepotPush(edge, tenants.acme, home, engine.config_dir)
        target = f"{host}/team/app:v1"
        result = await depot.run(*push_args(build_id, tenants.project, [target]))
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode() == f"{target}@{image.digest}\n"
        await engine.docker("pull", target)
        inspected = json.loads((await engine.docker("image", "inspect", target)).stdout)
        assert inspected[0]["Id"] == image.blobs[0].digest  # the image's config


async def test_the_cli_follows_its_job_again_after_a_dropped_connection(
    nursery: trio.Nursery, tmp_path: Path, tenants: Tenants
) -> None:
    """The connection between ``depot`` and the edge is cut while the job waits on the target:
    ``depot`` follows the job again from the last event it saw, and the job finishes."""
    image = gzip_image((16 * KiB,))
    build_id = await save_build(tenants, image)
    edge = await relay_edge(nursery, tenants, tmp_path)
    async with basic_target(tmp_path / "target") as host:
        target = HoldingProxy(host)
        await target.start(nursery)
        target.hold_after(0)
        line = CuttingProxy(edge.url.removeprefix("http://"))
        await line.start(nursery)
        depot = depot_for(edge, tenants, tmp_path, {target.host: PUSHER})
        depot.registry = line.url
        args = push_args(build_id, tenants.project, [f"{target.host}/team/app:v1"], "--json")
        with trio.fail_after(COMMAND_SECONDS):
            running = await start_push(depot, args, tmp_path / "push.log")
            process = running.process
            line.cut()
            target.release()
            assert process.stdout is not None
            rest = b""
            while chunk := await process.stdout.receive_some():
                rest += chunk
            assert await process.wait() == 0, (tmp_path / "push.log").read_text()
    found = [*running.events, *events(rest)]
    assert [event["seq"] for event in found] == list(range(len(found)))  # none twice or lost
    assert found[-1]["event"] == "done" and found[-1]["digest"] == image.digest
    assert line.cuts == 1
