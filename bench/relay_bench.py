"""``depot push`` (the edge relays a build to a registry) vs ``skopeo copy`` of the same image
between the same two registries, measured in one run on this machine.

Servers on 127.0.0.1: ``depot-registry origin serve`` (auth on: an org, a project, an org
token and an edge token made with the CLI), ``depot-registry edge serve`` in front of it, and
per round a fresh CNCF Distribution (``docker-registry``, no auth) as the target. The image:
``--layers`` layers of random bytes in gzip framing (stored blocks, so skopeo copies them as
they are) plus a config, saved as a build with ``depot save``, then pulled once through the
edge so every blob is in its cache (a warm edge).

Each round, in turns (the order alternates):

- relay: ``depot push BUILD --project P -t DIST/relay/app:v1 --quiet``; the ``depot`` process
  talks to the edge through a counting TCP proxy, so the bytes it sends and receives are
  counted exactly (the image's bytes never pass through it: they go edge → Distribution);
- skopeo: ``skopeo copy --preserve-digests docker://EDGE/P:BUILD docker://DIST/skopeo/app:v1``
  (pulling through the same warm edge with the org token, pushing to the same Distribution).

A fresh Distribution per round (new port, new storage, removed after) keeps skopeo's
blob-info cache from turning a later round's uploads into mounts. Printed: wall seconds and
MB/s of each (median of ``--repeat``), the ratio skopeo time / relay time (> 1: the relay is
faster), and the ``depot`` process's traffic as a fraction of the image's bytes.

    .venv/bin/python bench/relay_bench.py                         # 1 GiB, 5 layers, 3 rounds
    .venv/bin/python bench/relay_bench.py --size 128MiB --repeat 1
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edge_bench as eb
import registry_bench as rb

MiB = rb.MiB
GiB = 1024 * MiB
LOOPBACK = rb.LOOPBACK
ORG = "bench"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
COPY_SECONDS = 1800


# -- the image ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    root: Path
    manifest_digest: str
    blobs: list[tuple[str, int]]  # (digest, size) of the config and layers

    @property
    def image_bytes(self) -> int:
        return sum(size for _, size in self.blobs)


def _write_blob(root: Path, data_path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    with data_path.open("rb") as source:
        while chunk := source.read(MiB):
            hasher.update(chunk)
    digest = "sha256:" + hasher.hexdigest()
    size = data_path.stat().st_size
    data_path.rename(root / "blobs" / "sha256" / hasher.hexdigest())
    return digest, size


def write_layout(root: Path, size: int, layers: int) -> Layout:
    """An OCI layout of one image: ``layers`` gzip members of random bytes summing ``size``."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptors, diff_ids, blobs = [], [], []
    for index in range(layers):
        remaining = size // layers
        temp = root / f"layer-{index}.tmp"
        uncompressed = hashlib.sha256()
        with temp.open("wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=0) as gz:
            while remaining:
                chunk = os.urandom(min(MiB, remaining))
                uncompressed.update(chunk)
                gz.write(chunk)
                remaining -= len(chunk)
        digest, blob_size = _write_blob(root, temp)
        descriptors.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": blob_size})
        diff_ids.append("sha256:" + uncompressed.hexdigest())
        blobs.append((digest, blob_size))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"bench": os.urandom(8).hex()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_temp = root / "config.tmp"
    config_temp.write_bytes(config)
    config_digest, config_size = _write_blob(root, config_temp)
    blobs.insert(0, (config_digest, config_size))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": descriptors,
        }
    ).encode()
    manifest_temp = root / "manifest.tmp"
    manifest_temp.write_bytes(manifest)
    manifest_digest, manifest_size = _write_blob(root, manifest_temp)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return Layout(root, manifest_digest, blobs)


# -- a TCP proxy that counts the depot process's traffic ----------------------------------------


class CountingProxy:
    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("http://").rpartition(":")
        self._host, self._port = host, int(port)
        self.sent = 0  # client → server
        self.received = 0  # server → client
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._relay, 0, host=LOOPBACK))
        self.url = f"http://{LOOPBACK}:{listeners[0].socket.getsockname()[1]}"

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(self._host, self._port)
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, True, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, False, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, up: bool, done: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(MiB):
                if up:
                    self.sent += len(data)
                else:
                    self.received += len(data)
                await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


# -- CPU time ------------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """utime + stime of a running process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended (the depot CLI, skopeo)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Cpu:
    """CPU seconds one copy cost: the edge, the target, and the client process."""

    edge: float
    target: float
    client: float

    @property
    def total(self) -> float:
        return self.edge + self.target + self.client


@asynccontextmanager
async def measured_cpu(edge_pid: int, target_pid: int, into: list[Cpu]) -> AsyncIterator[None]:
    before = (process_cpu(edge_pid), process_cpu(target_pid), children_cpu())
    yield
    after = (process_cpu(edge_pid), process_cpu(target_pid), children_cpu())
    into.append(Cpu(*(b - a for a, b in zip(before, after, strict=True))))


# -- the two ways to copy ------------------------------------------------------------------------


def depot_command() -> list[str]:
    script = Path(sys.executable).with_name("depot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "depot.main"]


async def run(command: list[str], env: dict[str, str], what: str) -> str:
    with trio.fail_after(COPY_SECONDS):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{what} exited {result.returncode}:\n{result.stderr.decode()[-3000:]}")
    return result.stdout.decode()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPOT_", "DOCKER_"))}
    env.update(extra)
    return env


@dataclass
class Bench:
    tmp: Path
    edge: str  # http://127.0.0.1:PORT
    proxy: CountingProxy  # in front of the edge, for depot
    token: str
    project: str
    build_id: str
    layout: Layout

    def depot_env(self) -> dict[str, str]:
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        docker_config = self.tmp / "docker-config"
        docker_config.mkdir(exist_ok=True)
        return clean_env(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            DOCKER_CONFIG=str(docker_config),
            DEPOT_REGISTRY=self.proxy.url,
            DEPOT_TOKEN=self.token,
        )

    async def relay(self, target: str) -> tuple[float, int]:
        """(seconds, bytes the depot process exchanged with the edge)."""
        before = self.proxy.sent + self.proxy.received
        started = time.perf_counter()
        await run(
            [*depot_command(), "push", self.build_id, "--project", self.project,
             "-t", f"{target}/relay/app:v1", "--quiet"],
            self.depot_env(), "depot push",
        )  # fmt: skip
        seconds = time.perf_counter() - started
        return seconds, self.proxy.sent + self.proxy.received - before

    async def skopeo(self, target: str) -> float:
        workdir = self.tmp / "skopeo"
        for sub in ("home", "tmp", "registries.d"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "policy.json").write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
        (workdir / "registries.conf").write_text("")
        env = clean_env(
            HOME=str(workdir / "home"),
            TMPDIR=str(workdir / "tmp"),
            CONTAINERS_REGISTRIES_CONF=str(workdir / "registries.conf"),
        )
        edge = self.edge.removeprefix("http://")
        started = time.perf_counter()
        await run(
            ["skopeo", "--policy", str(workdir / "policy.json"),
             "--registries.d", str(workdir / "registries.d"), "--tmpdir", str(workdir / "tmp"),
             "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
             "--src-creds", f"x-token:{self.token}", "--dest-no-creds",
             f"docker://{edge}/{self.project}:{self.build_id}",
             f"docker://{target}/skopeo/app:v1"],
            env, "skopeo copy",
        )  # fmt: skip
        return time.perf_counter() - started


async def check_target(target: str, repository: str, digest: str) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        answer = await client.head(
            f"http://{target}/v2/{repository}/manifests/v1", headers={"Accept": OCI_MANIFEST}
        )
    if answer.headers.get("Docker-Content-Digest") != digest:
        raise SystemExit(f"{target}/{repository}:v1 is not {digest}: {answer.status_code}")


async def warm(edge: str, token: str, project: str, layout: Layout) -> None:
    """Pull every blob of the build through the edge once: the relay then reads its cache."""
    auth = {"Authorization": "Basic " + base64.b64encode(f"x-token:{token}".encode()).decode()}
    async with httpx.AsyncClient(
        base_url=edge, headers={**auth, "Accept-Encoding": "identity"}, trust_env=False,
        timeout=60,
    ) as client:  # fmt: skip
        for digest, _ in layout.blobs:
            async with client.stream("GET", f"/v2/{project}/blobs/{digest}") as response:
                if response.status_code != 200:
                    raise SystemExit(f"warming {digest}: HTTP {response.status_code}")
                async for _ in response.aiter_raw():
                    pass


@asynccontextmanager
async def target(tmp: Path, label: str) -> AsyncIterator[tuple[str, int]]:
    """A fresh Distribution: (HOST:PORT, pid); its storage is removed after."""
    async with eb.run_distribution(tmp, label) as server:
        try:
            yield server.url.removeprefix("http://"), server.process.pid
        finally:
            shutil.rmtree(server.root, ignore_errors=True)


# -- main -----------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    print(
        f"writing a {rb.human_size(args.size)} image of {args.layers} layers ...", file=sys.stderr
    )
    layout = write_layout(tmp / "layout", args.size, args.layers)
    async with AsyncExitStack() as stack:
        data_dir = tmp / "origin-data"
        data_dir.mkdir()
        origin = await stack.enter_async_context(
            eb.run_depot(
                "origin",
                ["origin", "serve", "--listen", f"{LOOPBACK}:0", "--data-dir", str(data_dir)],
                tmp / "origin.log",
                data_dir,
            )
        )
        org = await eb.depot_cli(data_dir, "org", "create", ORG)
        project = (await eb.depot_cli(data_dir, "project", "create", "--org", ORG, "app"))[
            "project_id"
        ]
        edge_token = await eb.depot_cli(data_dir, "token", "create", "--kind", "edge")
        token_file = tmp / "edge.token"
        token_file.write_text(edge_token["token"] + "\n")
        token_file.chmod(0o600)
        edge = await stack.enter_async_context(
            eb.run_depot(
                "edge",
                [
                    *("edge", "serve", "--listen", f"{LOOPBACK}:0", "--upstream", origin.url),
                    *("--cache-dir", str(tmp / "edge-cache"), "--cache-size", "64GiB"),
                    *("--upstream-token-file", str(token_file)),
                ],
                tmp / "edge.log",
                tmp / "edge-cache",
            )
        )
        print("saving the build (depot save) and warming the edge ...", file=sys.stderr)
        saved = await run(
            [*depot_command(), "save", str(layout.root), "--project", project],
            clean_env(HOME=str(tmp), DEPOT_REGISTRY=origin.url, DEPOT_TOKEN=org["token"]),
            "depot save",
        )
        build_id = saved.strip()
        shutil.rmtree(layout.root / "blobs")  # on origin now; the disk is better kept free
        await warm(edge.url, org["token"], project, layout)
        nursery = await stack.enter_async_context(trio.open_nursery())
        proxy = CountingProxy(edge.url)
        await proxy.start(nursery)
        bench = Bench(tmp, edge.url, proxy, org["token"], project, build_id, layout)

        results = Results()
        for round_number in range(args.repeat):
            async with target(tmp, f"target-{round_number}") as (registry, target_pid):
                order = ["relay", "skopeo"] if round_number % 2 == 0 else ["skopeo", "relay"]
                for what in order:
                    if what == "relay":
                        async with measured_cpu(edge.process.pid, target_pid, results.relay_cpu):
                            seconds, exchanged = await bench.relay(registry)
                        await check_target(registry, "relay/app", layout.manifest_digest)
                        results.relay.append(seconds)
                        results.cli_bytes.append(exchanged)
                    else:
                        async with measured_cpu(edge.process.pid, target_pid, results.skopeo_cpu):
                            seconds = await bench.skopeo(registry)
                        await check_target(registry, "skopeo/app", layout.manifest_digest)
                        results.skopeo.append(seconds)
                    print(f"round {round_number + 1}: {what} {seconds:.2f} s", file=sys.stderr)
        nursery.cancel_scope.cancel()
    report(args, layout, results)


@dataclass
class Results:
    relay: list[float] = field(default_factory=list)  # seconds
    skopeo: list[float] = field(default_factory=list)
    relay_cpu: list[Cpu] = field(default_factory=list)
    skopeo_cpu: list[Cpu] = field(default_factory=list)
    cli_bytes: list[int] = field(default_factory=list)


def _cpu_row(samples: list[Cpu]) -> str:
    def median(part: str) -> float:
        return statistics.median(getattr(sample, part) for sample in samples)

    return (
        f"{median('total'):.2f} (edge {median('edge'):.2f}, target {median('target'):.2f}, "
        f"client {median('client'):.2f})"
    )


def report(args: argparse.Namespace, layout: Layout, results: Results) -> None:
    size = layout.image_bytes
    relay, skopeo = statistics.median(results.relay), statistics.median(results.skopeo)
    traffic = max(results.cli_bytes)
    rows: list[tuple[str, Any]] = [
        ("image", f"{rb.human_size(size)} ({args.layers} layers + config)"),
        ("relay (depot push), s", f"{relay:.2f}  [{', '.join(f'{s:.2f}' for s in results.relay)}]"),
        ("relay MB/s", f"{size / relay / 1e6:.0f}"),
        ("relay CPU s", _cpu_row(results.relay_cpu)),
        ("skopeo copy, s", f"{skopeo:.2f}  [{', '.join(f'{s:.2f}' for s in results.skopeo)}]"),
        ("skopeo MB/s", f"{size / skopeo / 1e6:.0f}"),
        ("skopeo CPU s", _cpu_row(results.skopeo_cpu)),
        ("ratio skopeo / relay time (target >= 1.2)", f"{skopeo / relay:.2f}"),
        ("depot process traffic, bytes (max of rounds)", traffic),
        ("depot traffic / image bytes (target < 1 %)", f"{traffic / size:.5%}"),
    ]
    print(f"\n{os.cpu_count()} CPUs; 127.0.0.1; median of {args.repeat} rounds; MB = 10^6 bytes")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=rb.parse_size, default=GiB, help="image size (1GiB)")
    parser.add_argument("--layers", type=int, default=5, help="layers (5)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median)")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="parent of the work dir")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 10 or not 1 <= args.layers <= 64:
        parser.error("--repeat must be in [1, 10], --layers in [1, 64]")
    for program in ("docker-registry", "skopeo"):
        if not shutil.which(program):
            parser.error(f"{program} is not installed")
    needed = 5 * args.size
    with tempfile.TemporaryDirectory(prefix="depot-relay-bench-", dir=args.tmp_dir) as work:
        free = shutil.disk_usage(work).free
        if free < needed:
            parser.error(f"needs ~{rb.human_size(needed)} free, has {rb.human_size(free)}")
        trio.run(main_async, args, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
