"""The edge vs CNCF Distribution in proxy mode, measured side by side on this machine.

Two stacks on 127.0.0.1, each an origin with a pull-through cache in front:

- ours: ``depot-registry origin serve`` (auth on: an org, a pull token and an edge token are
  made with the CLI) and ``depot-registry edge serve`` in front of it;
- peer: ``docker-registry serve`` as origin (access log on, to count what its proxy fetches)
  and a second ``docker-registry`` with ``proxy: remoteurl:`` pointing at it;
- peer: nginx's ``proxy_cache`` in front of OUR origin (bench/nginx_peer.py: sendfile on,
  proxy_cache_lock on), the ceiling for cached bytes on this machine (``--no-nginx``: skip).

Clients send Basic ``x-token:<pull token>`` straight to ``/v2/...`` on both edges (Distribution
runs without auth and ignores it). The same blobs go to both origins, then, one side at a time:

- cache-hit blob GET with 1 and N streams (MB/s aggregate);
- manifest GET by tag on a warm edge (req/s, built-in raw HTTP/1.1 client) and how many
  requests reach the origin meanwhile;
- cold miss, first client: a fresh blob per side and round (MB/s, time to first byte,
  upstream GETs);
- 32 concurrent cold GETs of one fresh blob: upstream GETs (ours: fills in the edge's log and
  ``depot_edge_bytes_from_upstream``; Distribution: GET lines in its origin's access log) and the
  aggregate rate to clients against the single-client cold rate;
- edge RSS (VmRSS of the edge process and its children, sampled every 50 ms) while serving
  N cache-hit streams and during N cold fills of different blobs: the maximum.

and prints one table with the ratio edge/Distribution-proxy. MB = 10^6 bytes. Every phase is
bounded in time; servers are stopped and the temp dir removed on exit.

    .venv/bin/python bench/edge_bench.py                    # 1 GiB blobs (see bench/README.md)
    .venv/bin/python bench/edge_bench.py --size 64MiB --duration 3 --repeat 1
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import registry_bench as rb  # also patches httpcore for 1 MiB socket reads
from nginx_peer import Nginx, nginx_program, run_nginx

MiB = rb.MiB
GiB = 1024 * MiB
LOOPBACK = rb.LOOPBACK
ORG = "bench"
REPOSITORY = f"{ORG}/blob"
TAG = "latest"
TAIL = 64  # bytes at the end of each blob that make it unique (the rest is shared)
RSS_INTERVAL = 0.05
SETTLE_SECONDS = 60  # waiting for a proxy's background fetch to land and its log to flush

DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: {no_accesslog}
storage:
  cache:
    blobdescriptor: inmemory
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
PROXY_SECTION = """\
proxy:
  remoteurl: {remote}
"""


# -- blobs ------------------------------------------------------------------------------------


class BlobSource:
    """One random file; blob ``i`` is its first ``size - TAIL`` bytes plus a unique tail, so a
    fresh blob costs no new random bytes and its digest no second pass over the file."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        self._prefix = hashlib.sha256()
        self._serial = 0
        with path.open("wb") as out:
            remaining = size - TAIL
            while remaining:
                chunk = os.urandom(min(MiB, remaining))
                self._prefix.update(chunk)
                out.write(chunk)
                remaining -= len(chunk)
        self._nonce = os.urandom(8).hex()

    def fresh(self) -> Blob:
        self._serial += 1
        tail = f"depot-edge-bench {self._nonce} {self._serial}".encode().ljust(TAIL, b".")
        hasher = self._prefix.copy()
        hasher.update(tail)
        return Blob(self, tail, "sha256:" + hasher.hexdigest())


@dataclass(frozen=True)
class Blob:
    source: BlobSource
    tail: bytes
    digest: str

    @property
    def size(self) -> int:
        return self.source.size

    async def chunks(self) -> AsyncIterator[bytes]:
        remaining = self.size - TAIL
        async with await trio.open_file(self.source.path, "rb") as data:
            while remaining:
                chunk = await data.read(min(MiB, remaining))
                if not chunk:
                    raise RuntimeError("blob source file ended early")
                remaining -= len(chunk)
                yield chunk
        yield self.tail


def reclaim(root: Path, digest: str) -> None:
    """Delete a blob's bytes from a registry's filesystem storage (``…/blobs/sha256/ab/<hex>/
    data`` in both implementations) once a phase no longer needs them: keeps the disk bounded."""
    encoded = digest.removeprefix("sha256:")
    for directory in root.rglob(encoded):
        data = directory / "data"
        if directory.is_dir() and data.is_file():
            data.unlink()


# -- processes --------------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    url: str
    process: trio.Process
    log: Path
    root: Path  # its storage directory


async def _read_line(stdout: trio.abc.ReceiveStream, prefix: bytes, what: str, log: Path) -> str:
    buffer = b""
    with trio.move_on_after(rb.START_SECONDS):
        while b"\n" not in buffer and (chunk := await stdout.receive_some()):
            buffer += chunk
    line = buffer.partition(b"\n")[0]
    if not line.startswith(prefix):
        raise SystemExit(f"{what} did not start (stdout {buffer[:300]!r}):\n{rb.tail(log)}")
    url = line.removeprefix(prefix).decode().strip().rstrip("/")
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise SystemExit(f"{what} listens on {url}, expected {LOOPBACK}")
    return url


@asynccontextmanager
async def run_depot(
    label: str, args: Sequence[str], log: Path, root: Path
) -> AsyncIterator[Server]:
    """``depot-registry ARGS``; ready once it prints its listening line."""
    what = args[0]
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [*rb.origin_command(), *args], stdout=subprocess.PIPE, stderr=stderr,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        prefix = f"depot-registry {what} listening on ".encode()
        url = await _read_line(process.stdout, prefix, label, log)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rb._discard, process.stdout)
            try:
                yield Server(label, url, process, log, root)
            finally:
                with trio.CancelScope(shield=True):
                    await rb.stop(process)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            code = await rb.stop(process)
    if code != 0:
        print(f"warning: {label} exited {code} after SIGTERM:\n{rb.tail(log)}", file=sys.stderr)


async def depot_cli(data_dir: Path, *args: str) -> Any:
    with trio.fail_after(30):
        result = await trio.run_process(
            [*rb.origin_command(), *args, "--data-dir", str(data_dir), "--json"],
            capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"depot-registry {' '.join(args)}: {result.stderr.decode()[-500:]}")
    return json.loads(result.stdout)


@asynccontextmanager
async def run_distribution(
    tmp: Path, label: str, *, accesslog: bool = False, remote: str | None = None
) -> AsyncIterator[Server]:
    program = shutil.which("docker-registry")
    if program is None:
        raise SystemExit("docker-registry not found (apt-get install docker-registry)")
    root = tmp / f"{label}-data"
    root.mkdir()
    addr = f"{LOOPBACK}:{rb.free_port()}"
    config = DISTRIBUTION_CONFIG.format(
        root=root, addr=addr, no_accesslog="false" if accesslog else "true"
    )
    if remote is not None:
        config += PROXY_SECTION.format(remote=remote)
    config_path = tmp / f"{label}.yml"
    config_path.write_text(config)
    log = tmp / f"{label}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with log.open("wb") as output:
        process = await trio.lowlevel.open_process(
            [program, "serve", str(config_path)], stdout=output, stderr=output,
            stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    try:
        if not await rb._answers_v2(process, f"http://{addr}/v2/"):
            raise SystemExit(f"{label} did not start (exit {process.poll()}):\n{rb.tail(log)}")
        yield Server(label, f"http://{addr}", process, log, root)
    finally:
        with trio.CancelScope(shield=True):
            await rb.stop(process)


def tree_rss(pid: int) -> int:
    """VmRSS (bytes) of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match[1]) * 1024 if match else 0
    return total


@asynccontextmanager
async def rss_sampler(pid: int) -> AsyncIterator[list[int]]:
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(await trio.to_thread.run_sync(tree_rss, pid))
            await trio.sleep(RSS_INTERVAL)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        try:
            yield samples
        finally:
            nursery.cancel_scope.cancel()
    samples.append(tree_rss(pid))


# -- the two sides ----------------------------------------------------------------------------


@dataclass
class Side:
    label: str
    origin: Server
    edge: Server
    origin_headers: dict[str, str]  # credentials for pushing to the origin
    client_headers: dict[str, str]  # what pulling clients send to the edge
    upstream_gets: Callable[[str], Awaitable[int]]  # upstream GETs of a blob digest so far
    upstream_manifest_requests: Callable[[], Awaitable[int]]  # manifest requests so far
    settle: Callable[[str], Awaitable[None]]  # wait until the edge stopped fetching a digest
    edge_root: Path | None  # storage the bench may reclaim (Distribution's), None for ours
    results: dict[str, str] = field(default_factory=dict)

    def client(self, base_url: str, connections: int, headers: dict[str, str]) -> Any:
        return httpx.AsyncClient(
            base_url=base_url, headers=headers, http1=True, http2=False, trust_env=False,
            follow_redirects=False, timeout=httpx.Timeout(60),
            limits=httpx.Limits(max_connections=connections,
                                max_keepalive_connections=connections),
        )  # fmt: skip

    async def push(self, blob: Blob) -> None:
        async with self.client(self.origin.url, 2, self.origin_headers) as client:
            with trio.fail_after(60 + blob.size / rb.MIN_BULK_RATE):
                await rb.push_blob(client, REPOSITORY, blob.digest, blob.size, blob.chunks())

    async def push_manifest(self, blob: Blob) -> None:
        async with self.client(self.origin.url, 2, self.origin_headers) as client:
            with trio.fail_after(30):
                await rb.push_manifest(client, rb.Blob(blob.source.path, blob.size, blob.digest))

    async def forget(self, blob: Blob) -> None:
        """Free the disk a cold blob used (origin and Distribution's cache; ours evicts)."""
        await trio.to_thread.run_sync(reclaim, self.origin.root, blob.digest)
        if self.edge_root is not None:
            await trio.to_thread.run_sync(reclaim, self.edge_root, blob.digest)


async def edge_metrics(edge: Server) -> dict[str, float]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(f"{edge.url}/metrics")
    response.raise_for_status()
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def count_lines(log: Path, pattern: re.Pattern[str]) -> int:
    try:
        return len(pattern.findall(log.read_text(errors="replace")))
    except FileNotFoundError:
        return 0


def our_side(origin: Server, edge: Server, org_token: str, pull_token: str) -> Side:
    async def upstream_gets(digest: str) -> int:
        # One fill is one upstream GET, logged when it ends (completed or failed).
        pattern = re.compile(rf"filled {re.escape(digest)}:|fill of {re.escape(digest)} failed")
        return count_lines(edge.log, pattern)

    async def manifest_requests() -> int:
        metrics = await edge_metrics(edge)
        # Tag lookups the edge could not answer locally went to origin (HEAD, maybe a GET).
        return int(metrics.get('depot_edge_cache_misses_total{kind="tag"}', 0))

    async def settle(digest: str) -> None:
        # Another process's state: polled (no event to wait on).
        with trio.move_on_after(SETTLE_SECONDS):
            while True:
                if not (await edge_metrics(edge)).get("depot_edge_fills_in_flight", 0):
                    return
                await trio.sleep(0.05)

    return Side(
        "edge", origin, edge, basic(org_token), basic(pull_token), upstream_gets,
        manifest_requests, settle, None,
    )  # fmt: skip


def distribution_side(origin: Server, proxy: Server, pull_token: str) -> Side:
    repo = re.escape(REPOSITORY)

    async def upstream_gets(digest: str) -> int:
        pattern = re.compile(rf'"GET /v2/{repo}/blobs/{re.escape(digest)} HTTP/1\.1" 200 ')
        return count_lines(origin.log, pattern)

    async def manifest_requests() -> int:
        pattern = re.compile(rf'"(?:GET|HEAD) /v2/{repo}/manifests/[^ ]+ HTTP/1\.1" ')
        return count_lines(origin.log, pattern)

    async def settle(digest: str) -> None:
        """The proxy stores a blob with a fetch of its own: wait until it has, and until the
        origin's access log stops growing."""
        encoded = digest.removeprefix("sha256:")
        with trio.move_on_after(SETTLE_SECONDS):
            while True:
                if any(proxy.root.rglob(f"{encoded}/data")):
                    break
                await trio.sleep(0.1)
            last = -1
            while (now := await upstream_gets(digest)) != last:
                last = now
                await trio.sleep(0.5)

    # Distribution runs without auth: the header is sent anyway, as a client would.
    return Side(
        "distribution proxy", origin, proxy, {}, basic(pull_token), upstream_gets,
        manifest_requests, settle, proxy.root,
    )  # fmt: skip


def nginx_side(origin: Server, nginx: Nginx, org_token: str, pull_token: str) -> Side:
    """nginx's proxy cache in front of OUR origin (the same one the edge uses)."""
    repo = re.escape(REPOSITORY)

    async def upstream_gets(digest: str) -> int:
        return nginx.upstream_fetches(rf"/v2/{repo}/blobs/{re.escape(digest)}")

    async def manifest_requests() -> int:
        return nginx.upstream_fetches(rf"/v2/{repo}/manifests/\S+")

    async def settle(digest: str) -> None:
        # nginx logs a request when it ends, and renames its cache file before that.
        last = -1
        with trio.move_on_after(SETTLE_SECONDS):
            while (now := await upstream_gets(digest)) != last:
                last = now
                await trio.sleep(0.3)

    server = Server("nginx cache", nginx.url, nginx.process, nginx.access_log, nginx.prefix)
    return Side(
        "nginx cache", origin, server, basic(org_token), basic(pull_token), upstream_gets,
        manifest_requests, settle, None,
    )  # fmt: skip


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"x-token:{token}".encode()).decode()}


# -- measurements -----------------------------------------------------------------------------


@dataclass
class Transfer:
    seconds: float  # until every stream ended
    first_byte: float  # seconds until the first body byte of the first stream
    firsts: list[float] = field(default_factory=list)  # each stream's, in arrival order


async def get_streams(side: Side, blobs: Sequence[Blob]) -> Transfer:
    """GET every blob of ``blobs`` at once through the edge (one stream each)."""
    firsts: list[float] = []

    async def one(client: httpx.AsyncClient, blob: Blob, start: float) -> None:
        url = f"/v2/{REPOSITORY}/blobs/{blob.digest}"
        async with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
            if response.status_code != 200:
                await response.aread()
                raise RuntimeError(f"GET blob: {response.status_code} {response.text[:300]}")
            received = 0
            async for chunk in response.aiter_raw():
                if not received:
                    firsts.append(time.perf_counter() - start)
                received += len(chunk)
        if received != blob.size:
            raise RuntimeError(f"GET blob: {received} bytes of {blob.size}")

    total = sum(blob.size for blob in blobs)
    async with side.client(side.edge.url, len(blobs), side.client_headers) as client:
        with trio.fail_after(60 + total / rb.MIN_BULK_RATE):
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for blob in blobs:
                    nursery.start_soon(one, client, blob, start)
            elapsed = time.perf_counter() - start
    return Transfer(elapsed, min(firsts), sorted(firsts))


async def manifest_requests(side: Side, clients: int, seconds: float) -> tuple[float, int]:
    """(req/s, requests answered) for GET manifest by tag, ``clients`` keep-alive connections."""
    url = httpx.URL(side.edge.url)
    assert url.host == LOOPBACK and url.port is not None
    headers = {"Accept": rb.OCI_MANIFEST, **side.client_headers}
    lines = [f"GET /v2/{REPOSITORY}/manifests/{TAG} HTTP/1.1", f"Host: {url.host}:{url.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
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
        raise RuntimeError(f"non-200 answers: {counts} (and {ok} x 200)")
    return ok / elapsed, ok


@dataclass(frozen=True)
class Options:
    size: int
    duration: float
    repeat: int
    streams: int
    clients: int
    cold_clients: int
    nginx: bool = True


Row = tuple[str, str]  # (metric label, which direction is better)


class Table:
    def __init__(self, sides: Sequence[Side]) -> None:
        self.sides = sides
        self.rows: list[Row] = []

    def row(self, label: str, better: str) -> str:
        self.rows.append((label, better))
        return label

    def print(self, header: str) -> None:
        """One column per side, and after each peer the ratio edge/peer."""
        ours, *peers = self.sides
        print(header)
        titles = [f"{'metric (better)':<60}", f"{ours.label:>8}"]
        rules = ["-" * 62, "-" * 9 + ":"]
        for peer in peers:
            width = max(len(peer.label), 8)
            titles += [f"{peer.label:>{width}}", f"{'ratio':>6}"]
            rules += ["-" * (width + 1) + ":", "-" * 7 + ":"]
        print("| " + " | ".join(titles) + " |")
        print("|" + "|".join(rules) + "|")
        for label, better in self.rows:
            mine = ours.results.get(label, "-")
            text = f"{label} ({better})" if better else label
            cells = [f"{text:<60}", f"{mine:>8}"]
            for peer in peers:
                theirs = peer.results.get(label, "-")
                width = max(len(peer.label), 8)
                cells += [f"{theirs:>{width}}", f"{rb.ratio(mine, theirs):>6}"]
            print("| " + " | ".join(cells) + " |")


def record(side: Side, label: str, samples: Sequence[float], digits: int = 1) -> None:
    if label not in side.results and samples:
        side.results[label] = f"{statistics.median(samples):.{digits}f}"


async def attempt(side: Side, label: str, work: Callable[[], Awaitable[None]]) -> None:
    print(f"  {label} — {side.label}", file=sys.stderr, flush=True)
    try:
        await work()
    except trio.TooSlowError:
        side.results.setdefault(label, "timeout")
    except Exception as exc:  # one failed metric is reported, not fatal
        side.results.setdefault(label, "error")
        print(f"    {side.label}: {exc!r}", file=sys.stderr)


async def run_benchmarks(sides: Sequence[Side], source: BlobSource, options: Options) -> Table:
    table = Table(sides)
    repeat, n = options.repeat, options.streams
    start_rss = table.row("edge RSS at start, idle (MiB)", "lower")
    for side in sides:
        side.results[start_rss] = f"{tree_rss(side.edge.process.pid) / MiB:.0f}"

    # Content on both origins; both edges warmed with the blob and the tag.
    hot = source.fresh()
    for side in sides:
        await side.push(hot)
        await side.push_manifest(hot)
        await get_streams(side, [hot])
        async with side.client(side.edge.url, 1, side.client_headers) as client:
            answer = await client.get(
                f"/v2/{REPOSITORY}/manifests/{TAG}", headers={"Accept": rb.OCI_MANIFEST}
            )
            if answer.status_code != 200:
                raise SystemExit(f"{side.label}: manifest GET {answer.status_code} {answer.text}")
        await side.settle(hot.digest)

    # Cache hits.
    hit1 = table.row("cache hit GET, 1 stream (MB/s)", "higher")
    hitn = table.row(f"cache hit GET, {n} streams (MB/s total)", "higher")
    rss_hit = table.row(f"edge RSS max, {n} cache-hit streams (MiB)", "lower")
    samples: dict[str, dict[str, list[float]]] = {s.label: {} for s in sides}
    for _ in range(repeat):
        for side in sides:

            async def hit(side: Side = side, streams: int = 1, label: str = hit1) -> None:
                transfer = await get_streams(side, [hot] * streams)
                rate = streams * hot.size / transfer.seconds / 1e6
                samples[side.label].setdefault(label, []).append(rate)

            await attempt(side, hit1, hit)

            async def hits(side: Side = side) -> None:
                async with rss_sampler(side.edge.process.pid) as rss:
                    await hit(side, n, hitn)
                samples[side.label].setdefault(rss_hit, []).append(max(rss) / MiB)

            await attempt(side, hitn, hits)
    for side in sides:
        record(side, hit1, samples[side.label].get(hit1, []))
        record(side, hitn, samples[side.label].get(hitn, []))
        side.results.setdefault(rss_hit, f"{max(samples[side.label].get(rss_hit, [0])):.0f}")

    # Manifest GET by tag on a warm edge.
    manifest = table.row(f"manifest GET by tag, {options.clients} clients (req/s)", "higher")
    upstream = table.row("  origin requests per 1000 manifest GETs", "lower")
    for _ in range(repeat):
        for side in sides:

            async def tags(side: Side = side) -> None:
                before = await side.upstream_manifest_requests()
                rate, answered = await manifest_requests(side, options.clients, options.duration)
                await trio.sleep(0.5)  # let the origin's access log catch up
                asked = await side.upstream_manifest_requests() - before
                samples[side.label].setdefault(manifest, []).append(rate)
                samples[side.label].setdefault(upstream, []).append(1000 * asked / answered)

            await attempt(side, manifest, tags)
    for side in sides:
        record(side, manifest, samples[side.label].get(manifest, []))
        record(side, upstream, samples[side.label].get(upstream, []))

    # Cold misses, one client: a fresh blob per side and round.
    cold = table.row("cold miss, 1st client (MB/s)", "higher")
    ttfb = table.row("  time to first byte (ms)", "lower")
    cold_gets = table.row("  upstream GETs of the blob", "lower")
    for _ in range(repeat):
        for side in sides:

            async def one_cold(side: Side = side) -> None:
                blob = source.fresh()
                await side.push(blob)
                transfer = await get_streams(side, [blob])
                await side.settle(blob.digest)
                mine = samples[side.label]
                mine.setdefault(cold, []).append(blob.size / transfer.seconds / 1e6)
                mine.setdefault(ttfb, []).append(transfer.first_byte * 1000)
                mine.setdefault(cold_gets, []).append(await side.upstream_gets(blob.digest))
                await side.forget(blob)

            await attempt(side, cold, one_cold)
    for side in sides:
        record(side, cold, samples[side.label].get(cold, []))
        record(side, ttfb, samples[side.label].get(ttfb, []), 0)
        record(side, cold_gets, samples[side.label].get(cold_gets, []), 0)

    # Many clients at once on one cold blob.
    k = options.cold_clients
    herd_gets = table.row(f"{k} concurrent cold GETs of 1 blob: upstream GETs", "lower")
    herd_rate = table.row("  aggregate to clients (MB/s)", "higher")
    herd_gain = table.row("  aggregate / single-client cold rate", "higher")
    herd_ttfb = table.row("  time to first byte, median client (ms)", "lower")
    herd_ttfb_max = table.row("  time to first byte, slowest client (ms)", "lower")
    rss_herd = table.row("  edge RSS max (MiB)", "lower")
    for _ in range(repeat):
        for side in sides:

            async def herd(side: Side = side) -> None:
                blob = source.fresh()
                await side.push(blob)
                async with rss_sampler(side.edge.process.pid) as rss:
                    transfer = await get_streams(side, [blob] * k)
                await side.settle(blob.digest)
                mine = samples[side.label]
                mine.setdefault(herd_gets, []).append(await side.upstream_gets(blob.digest))
                mine.setdefault(herd_rate, []).append(k * blob.size / transfer.seconds / 1e6)
                mine.setdefault(herd_ttfb, []).append(statistics.median(transfer.firsts) * 1000)
                mine.setdefault(herd_ttfb_max, []).append(max(transfer.firsts) * 1000)
                mine.setdefault(rss_herd, []).append(max(rss) / MiB)
                await side.forget(blob)

            await attempt(side, herd_gets, herd)
    for side in sides:
        record(side, herd_gets, samples[side.label].get(herd_gets, []), 0)
        record(side, herd_rate, samples[side.label].get(herd_rate, []))
        record(side, herd_ttfb, samples[side.label].get(herd_ttfb, []), 0)
        record(side, herd_ttfb_max, samples[side.label].get(herd_ttfb_max, []), 0)
        single = samples[side.label].get(cold, [])
        aggregate = samples[side.label].get(herd_rate, [])
        if single and aggregate:
            gain = statistics.median(aggregate) / statistics.median(single)
            side.results.setdefault(herd_gain, f"{gain:.2f}")
        side.results.setdefault(rss_herd, f"{max(samples[side.label].get(rss_herd, [0])):.0f}")

    # N cold fills of N different blobs at once (once per side: N fresh blobs each).
    fills_rate = table.row(f"{n} cold fills of {n} blobs at once (MB/s total)", "higher")
    rss_fills = table.row(f"edge RSS max, {n} cold fills (MiB)", "lower")
    for side in sides:

        async def fills(side: Side = side) -> None:
            blobs = [source.fresh() for _ in range(n)]
            for blob in blobs:
                await side.push(blob)
            async with rss_sampler(side.edge.process.pid) as rss:
                transfer = await get_streams(side, blobs)
            side.results[fills_rate] = f"{n * source.size / transfer.seconds / 1e6:.1f}"
            side.results[rss_fills] = f"{max(rss) / MiB:.0f}"
            for blob in blobs:
                await side.settle(blob.digest)
                await side.forget(blob)

        await attempt(side, fills_rate, fills)

    idle = table.row("edge RSS at the end, idle (MiB)", "lower")
    fds = table.row("edge open file descriptors at the end", "lower")
    for side in sides:
        side.results[idle] = f"{tree_rss(side.edge.process.pid) / MiB:.0f}"
        side.results[fds] = str(len(os.listdir(f"/proc/{side.edge.process.pid}/fd")))
    return table


# -- main -------------------------------------------------------------------------------------


def disk_needed(options: Options) -> tuple[int, int]:
    """(bytes the run may hold on disk at once, our edge's cache size)."""
    blobs_through_edge = 1 + 2 * options.repeat + options.streams
    cache = blobs_through_edge * options.size + GiB
    # Each origin and Distribution's cache hold the hot blob + the last phase's blobs.
    live = 3 * (1 + options.streams) * options.size
    # nginx's cache keeps every blob that went through it (it evicts only past its limit).
    peer_cache = blobs_through_edge * options.size if options.nginx else 0
    return options.size + live + cache + peer_cache, cache


async def main_async(options: Options, tmp: Path, source: BlobSource, version: str) -> None:
    needed, cache_size = disk_needed(options)
    free = shutil.disk_usage(tmp).free
    if free < needed:
        raise SystemExit(f"needs ~{rb.human_size(needed)} free in {tmp}, has {rb.human_size(free)}")
    async with AsyncExitStack() as stack:
        data_dir = tmp / "origin-data"
        data_dir.mkdir()
        origin = await stack.enter_async_context(
            run_depot(
                "origin",
                ["origin", "serve", "--listen", f"{LOOPBACK}:0", "--data-dir", str(data_dir)],
                tmp / "origin.log",
                data_dir,
            )
        )
        org = await depot_cli(data_dir, "org", "create", ORG)
        pull = await depot_cli(data_dir, "token", "create", "--kind", "pull", "--org", ORG)
        edge_token = await depot_cli(data_dir, "token", "create", "--kind", "edge")
        token_file = tmp / "edge.token"
        token_file.write_text(edge_token["token"] + "\n")
        token_file.chmod(0o600)
        cache_dir = tmp / "edge-cache"
        edge = await stack.enter_async_context(
            run_depot(
                "edge",
                [
                    *("edge", "serve", "--listen", f"{LOOPBACK}:0", "--upstream", origin.url),
                    *("--cache-dir", str(cache_dir), "--cache-size", str(cache_size)),
                    *("--upstream-token-file", str(token_file)),
                ],
                tmp / "edge.log",
                cache_dir,
            )
        )
        peer_origin = await stack.enter_async_context(
            run_distribution(tmp, "distribution-origin", accesslog=True)
        )
        proxy = await stack.enter_async_context(
            run_distribution(tmp, "distribution-proxy", remote=peer_origin.url)
        )
        sides = [
            our_side(origin, edge, org["token"], pull["token"]),
            distribution_side(peer_origin, proxy, pull["token"]),
        ]
        if options.nginx:
            nginx = await stack.enter_async_context(
                run_nginx(tmp, origin.url, cache_size=cache_size)
            )
            sides.append(nginx_side(origin, nginx, org["token"], pull["token"]))
        table = await run_benchmarks(sides, source, options)
    header = (
        f"\nblobs {rb.human_size(options.size)}; {os.cpu_count()} CPUs; 127.0.0.1; "
        f"median of {options.repeat} rounds ({options.streams} cold fills: 1 round); "
        f"manifest: raw HTTP/1.1 client, {options.duration:g} s; clients send Basic x-token "
        f"to both; Distribution {version} (origin + proxy); edge cache "
        f"{rb.human_size(cache_size)}; ratio = edge / the peer to its left; nginx (if "
        f"shown): proxy_cache in front of the edge's origin, sendfile on, proxy_cache_lock "
        f"on, worker_processes auto; "
        f"MB = 10^6 bytes\n"
    )
    table.print(header)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=rb.parse_size, default=GiB, help="blob size (1GiB)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per req/s test")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per metric (median)")
    parser.add_argument("--streams", type=int, default=8, help="concurrent hit streams / fills")
    parser.add_argument("--clients", type=int, default=16, help="clients for manifest req/s")
    parser.add_argument(
        "--cold-clients", type=int, default=32, help="concurrent GETs of one cold blob"
    )
    parser.add_argument("--tmp-dir", type=Path, default=None, help="parent of the work dir")
    parser.add_argument(
        "--no-nginx", dest="nginx", action="store_false", help="without nginx's proxy cache"
    )
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600]")
    if not 1 <= args.repeat <= 10:
        parser.error("--repeat must be in [1, 10]")
    if not 1 <= args.streams <= 64 or not 1 <= args.cold_clients <= 256:
        parser.error("--streams must be in [1, 64], --cold-clients in [1, 256]")
    if not shutil.which("docker-registry"):
        parser.error("docker-registry (CNCF Distribution) is not installed")
    if args.nginx and nginx_program() is None:
        parser.error("nginx is not installed (apt-get install nginx-light), or pass --no-nginx")
    options = Options(
        args.size, args.duration, args.repeat, args.streams, args.clients, args.cold_clients,
        args.nginx,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="depot-edge-bench-", dir=args.tmp_dir) as work:
        tmp = Path(work)
        print(f"writing {rb.human_size(args.size)} of random bytes ...", file=sys.stderr)
        source = BlobSource(tmp / "blob.bin", args.size)
        version = subprocess.run(
            ["docker-registry", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split()
        trio.run(main_async, options, tmp, source, version[-1] if version else "?")
    return 0


if __name__ == "__main__":
    sys.exit(main())
