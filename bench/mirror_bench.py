"""The edge as a registry mirror vs CNCF Distribution in proxy mode, same upstream, one run.

One upstream: ``docker-registry serve`` (access log on: every request the mirrors make is
counted there) playing Docker Hub. Two mirrors of it on 127.0.0.1:

- ours: ``depot-registry edge serve --mirror docker.io=UPSTREAM --mirror-access
  docker.io=anonymous`` (beside an origin it needs for its own names: ``origin serve`` with an
  edge token made with the CLI); clients ask ``/v2/library/<name>/...?ns=docker.io``, as
  containerd does through a ``hosts.toml``;
- peer: ``docker-registry`` with ``proxy: remoteurl: UPSTREAM``; clients ask
  ``/v2/library/<name>/...``.

Per side, with an image of its own (so both start cold):

- cold pull: ``--clients`` clients at once each pull a ``--layers``-layer image (manifest by
  tag, then config and layers, 3 blobs at a time as Docker does): wall time until the last
  client is done, and the upstream's GETs per blob digest and manifest requests (from its
  access log, once the mirror stopped fetching);
- warm tag lookups: ``--clients`` keep-alive connections GET the manifest by tag for
  ``--duration`` s (built-in raw HTTP/1.1 client): req/s, and upstream requests per 1,000
  lookups (the edge answers inside its tag freshness window, 30 s by default; Distribution's
  proxy asks its remote on every tag lookup).

    .venv/bin/python bench/mirror_bench.py                          # 5 x 16 MiB layers, 8 clients
    .venv/bin/python bench/mirror_bench.py --layer-size 4MiB --duration 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edge_bench as eb
import registry_bench as rb

MiB = rb.MiB
LOOPBACK = rb.LOOPBACK
TAG = "latest"
OCI_MANIFEST, OCI_CONFIG, OCI_LAYER = rb.OCI_MANIFEST, rb.OCI_CONFIG, rb.OCI_LAYER
ACCEPT = f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"
BLOBS_AT_ONCE = 3  # what Docker pulls in parallel per image


@dataclass(frozen=True)
class Image:
    repository: str  # at the upstream: library/<name>
    manifest: bytes
    blobs: tuple[tuple[str, bytes], ...]  # (digest, bytes): config first, then layers

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.blobs)


def make_image(name: str, layers: int, layer_size: int) -> Image:
    blobs = []
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()})
    for data in [config.encode(), *(os.urandom(layer_size) for _ in range(layers))]:
        blobs.append(("sha256:" + hashlib.sha256(data).hexdigest(), data))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": blobs[0][0], "size": len(blobs[0][1])},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}
                for digest, data in blobs[1:]
            ],
        }
    ).encode()
    return Image(f"library/{name}", manifest, tuple(blobs))


async def push_image(upstream: eb.Server, image: Image) -> None:
    async with httpx.AsyncClient(base_url=upstream.url, trust_env=False, timeout=120) as client:
        for digest, data in image.blobs:
            await rb.push_blob(client, image.repository, digest, len(data), data)
        response = await client.put(
            f"/v2/{image.repository}/manifests/{TAG}",
            content=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        if response.status_code != 201:
            raise SystemExit(f"PUT manifest: {response.status_code} {response.text[:300]}")


@dataclass
class Side:
    label: str
    mirror: eb.Server
    query: str  # appended to every path: "?ns=docker.io" for ours

    def path(self, image: Image, what: str) -> str:
        return f"/v2/{image.repository}/{what}{self.query}"


def upstream_counts(upstream: eb.Server, image: Image) -> tuple[list[int], int]:
    """(GETs with 200 per blob of ``image``, manifest GET/HEADs) in the upstream's log."""
    text = upstream.log.read_text(errors="replace")
    repo = re.escape(image.repository)
    gets = [
        len(re.findall(rf'"GET /v2/{repo}/blobs/{re.escape(digest)} HTTP/1\.1" 200 ', text))
        for digest, _ in image.blobs
    ]
    manifests = len(re.findall(rf'"(?:GET|HEAD) /v2/{repo}/manifests/[^ ]+ HTTP/1\.1" ', text))
    return gets, manifests


async def pull(client: httpx.AsyncClient, side: Side, image: Image) -> None:
    response = await client.get(side.path(image, f"manifests/{TAG}"), headers={"Accept": ACCEPT})
    if response.status_code != 200 or response.content != image.manifest:
        raise RuntimeError(f"{side.label}: manifest {response.status_code} {response.text[:200]}")
    limiter = trio.CapacityLimiter(BLOBS_AT_ONCE)

    async def blob(digest: str, size: int) -> None:
        async with limiter:
            url = side.path(image, f"blobs/{digest}")
            async with client.stream("GET", url) as streamed:
                received = 0
                async for chunk in streamed.aiter_raw():
                    received += len(chunk)
            if streamed.status_code != 200 or received != size:
                raise RuntimeError(f"{side.label}: blob {streamed.status_code}, {received} B")

    async with trio.open_nursery() as nursery:
        for digest, data in image.blobs:
            nursery.start_soon(blob, digest, len(data))


async def cold_pull(side: Side, image: Image, clients: int) -> float:
    """Seconds until ``clients`` concurrent pulls of a cold image all ended."""
    headers = {"Accept-Encoding": "identity"}
    limits = httpx.Limits(max_connections=BLOBS_AT_ONCE + 1)
    pools = [
        httpx.AsyncClient(
            base_url=side.mirror.url, headers=headers, limits=limits, trust_env=False, timeout=300
        )
        for _ in range(clients)
    ]
    try:
        with trio.fail_after(60 + clients * image.size / rb.MIN_BULK_RATE):
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for client in pools:
                    nursery.start_soon(pull, client, side, image)
            return time.perf_counter() - start
    finally:
        for client in pools:
            await client.aclose()


async def tag_lookups(side: Side, image: Image, clients: int, seconds: float) -> tuple[float, int]:
    """(req/s, lookups answered) of GET manifest by tag, warm."""
    url = httpx.URL(side.mirror.url)
    assert url.host == LOOPBACK and url.port is not None
    lines = [
        f"GET {side.path(image, f'manifests/{TAG}')} HTTP/1.1",
        f"Host: {url.host}:{url.port}",
        f"Accept: {ACCEPT}",
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    counts: dict[str, int] = {}
    with trio.fail_after(seconds + 30):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(
                    rb._raw_connection, url.host, url.port, request, True, start + seconds, counts
                )
        elapsed = trio.current_time() - start
    ok = counts.pop("ok", 0)
    if counts:
        raise RuntimeError(f"{side.label}: non-200 answers {counts} (and {ok} x 200)")
    return ok / elapsed, ok


async def settle(upstream: eb.Server) -> None:
    """Until the upstream's access log stops growing (a proxy finishing in the background)."""
    last = -1
    with trio.move_on_after(eb.SETTLE_SECONDS):
        while (size := upstream.log.stat().st_size) != last:
            last = size
            await trio.sleep(0.5)


async def measure(
    side: Side, upstream: eb.Server, image: Image, options: argparse.Namespace
) -> dict[str, str]:
    await push_image(upstream, image)
    await settle(upstream)
    seconds = await cold_pull(side, image, options.clients)
    await settle(upstream)
    gets, manifests = upstream_counts(upstream, image)
    rate, lookups = await tag_lookups(side, image, options.clients, options.duration)
    await settle(upstream)
    _, manifests_after = upstream_counts(upstream, image)
    per_thousand = (manifests_after - manifests) * 1000 / max(lookups, 1)
    return {
        f"cold pull, {options.clients} clients, wall (s)": f"{seconds:.2f}",
        "cold pull, upstream GETs per blob digest (max)": str(max(gets)),
        "cold pull, upstream blob GETs (total)": str(sum(gets)),
        "cold pull, upstream manifest requests": str(manifests),
        "warm tag lookups (req/s)": f"{rate:.0f}",
        "upstream requests per 1,000 warm lookups": f"{per_thousand:.1f}",
    }


async def main_async(options: argparse.Namespace, tmp: Path, version: str) -> None:
    async with AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(
            eb.run_distribution(tmp, "upstream", accesslog=True)
        )
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
        edge_token = await eb.depot_cli(data_dir, "token", "create", "--kind", "edge")
        token_file = tmp / "edge.token"
        token_file.write_text(edge_token["token"] + "\n")
        token_file.chmod(0o600)
        cache_dir = tmp / "edge-cache"
        edge = await stack.enter_async_context(
            eb.run_depot(
                "edge",
                [
                    *("edge", "serve", "--listen", f"{LOOPBACK}:0", "--upstream", origin.url),
                    *("--cache-dir", str(cache_dir), "--upstream-token-file", str(token_file)),
                    *("--mirror", f"docker.io={upstream.url}"),
                    *("--mirror-access", "docker.io=anonymous"),
                ],
                tmp / "edge.log",
                cache_dir,
            )
        )
        proxy = await stack.enter_async_context(
            eb.run_distribution(tmp, "distribution-proxy", remote=upstream.url)
        )
        sides = [
            Side("edge", edge, "?ns=docker.io"),
            Side("distribution proxy", proxy, ""),
        ]
        results = []
        for index, side in enumerate(sides):
            image = make_image(f"bench{index}", options.layers, options.layer_size)
            print(f"measuring {side.label} ...", file=sys.stderr)
            results.append(await measure(side, upstream, image, options))
    print_table(sides, results, options, version)


def print_table(
    sides: Sequence[Side],
    results: Sequence[dict[str, str]],
    options: argparse.Namespace,
    version: str,
) -> None:
    print(
        f"\n{options.layers} layers x {rb.human_size(options.layer_size)}; {options.clients} "
        f"clients; {os.cpu_count()} CPUs; 127.0.0.1; tag lookups: raw HTTP/1.1 client, "
        f"{options.duration:g} s; Distribution {version} (upstream + proxy); one run\n"
    )
    labels = list(results[0])
    width = max(len(label) for label in labels)
    print(f"| {'metric'.ljust(width)} | {sides[0].label} | {sides[1].label} |")
    print(f"|{'-' * (width + 2)}|---:|---:|")
    for label in labels:
        print(f"| {label.ljust(width)} | {results[0][label]} | {results[1][label]} |")
    ours = float(results[0]["warm tag lookups (req/s)"])
    theirs = float(results[1]["warm tag lookups (req/s)"])
    print(f"\nwarm tag lookups, edge / Distribution proxy: {ours / max(theirs, 1e-9):.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--layers", type=int, default=5, help="layers per image (5)")
    parser.add_argument("--layer-size", type=rb.parse_size, default=16 * MiB, help="(16MiB)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of tag lookups")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="parent of the work dir")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 25:
        parser.error("--duration must be in (0, 25] (inside the edge's 30 s tag freshness)")
    if not 1 <= args.layers <= 50 or not 1 <= args.clients <= 64:
        parser.error("--layers must be in [1, 50] and --clients in [1, 64]")
    if not shutil.which("docker-registry"):
        parser.error("docker-registry (CNCF Distribution) is not installed")
    with tempfile.TemporaryDirectory(prefix="depot-mirror-bench-", dir=args.tmp_dir) as work:
        version = subprocess.run(
            ["docker-registry", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split()
        trio.run(main_async, args, Path(work), version[-1] if version else "?")
    return 0


if __name__ == "__main__":
    sys.exit(main())
