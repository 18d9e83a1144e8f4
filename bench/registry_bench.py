"""Origin vs CNCF Distribution, measured side by side on this machine.

Starts ``depot-registry origin serve`` and ``docker-registry serve`` (filesystem storage, both
under one temp dir, both on 127.0.0.1), pushes the same blob to each, then measures one target
at a time:

- blob GET, 1 stream and N concurrent streams (MB/s aggregate, 1 MiB reads, identity encoding)
- monolithic blob push, POST + PUT streaming a file in 1 MiB chunks (MB/s)
- manifest GET by tag and HEAD blob with C concurrent clients for D seconds (requests/s; with
  ``wrk`` when it is installed, else httpx)

and prints one table with the ratio subject/Distribution (> 1: the subject is faster).
MB = 10^6 bytes. Every phase is bounded in time; servers are stopped on exit.

    .venv/bin/python bench/registry_bench.py                  # 1 GiB blob
    .venv/bin/python bench/registry_bench.py --size 64MiB --duration 3
    .venv/bin/python bench/registry_bench.py --subject distribution   # Distribution vs itself
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpcore
import httpx
import trio

MiB = 1024 * 1024
CHUNK = MiB
LOOPBACK = "127.0.0.1"
REPOSITORY = "bench/blob"
TAG = "latest"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
LISTENING_PREFIX = b"depot-registry origin listening on http://"
START_SECONDS = 30
STOP_SECONDS = 20
MIN_BULK_RATE = 20e6  # bytes/s below which a bulk phase is cut off as "timeout"

# httpcore reads the socket 64 KiB at a time; 1 MiB reads roughly double what one client
# process can pull (PITFALLS.md). A private constant, patched for this client only.
if hasattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES"):
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = CHUNK

DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
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


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MiB, 1GiB)")
    number, unit = float(match[1]), (match[2] or "B").upper().rstrip("B").rstrip("I")
    scale = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB, "T": 1024 * 1024 * MiB}[unit]
    size = int(number * scale)
    if size < CHUNK:
        raise argparse.ArgumentTypeError("size must be at least 1MiB")
    return size


def human_size(size: int) -> str:
    for unit, scale in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Blob:
    path: Path
    size: int
    digest: str


def write_random_blob(path: Path, size: int) -> Blob:
    """Random bytes (incompressible, unique per run), hashed while written."""
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(CHUNK, remaining))
            hasher.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return Blob(path, size, "sha256:" + hasher.hexdigest())


@dataclass
class Target:
    label: str
    base_url: str
    process: trio.Process
    log: Path
    results: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


async def stop(process: trio.Process) -> int:
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


async def _discard(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


@asynccontextmanager
async def run_origin(tmp: Path, workers: int | None) -> AsyncIterator[Target]:
    data_dir = tmp / "origin-data"
    data_dir.mkdir()
    log = tmp / "origin.log"
    command = [
        *origin_command(),
        *("origin", "serve", "--listen", f"{LOOPBACK}:0", "--data-dir", str(data_dir)),
        # Distribution runs without auth here too: the comparison is of serving bytes.
        "--no-auth",
        *(("--workers", str(workers)) if workers is not None else ()),
    ]
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL
        )
    try:
        assert process.stdout is not None
        buffer = b""
        with trio.move_on_after(START_SECONDS):
            while b"\n" not in buffer and (chunk := await process.stdout.receive_some()):
                buffer += chunk
        line = buffer.partition(b"\n")[0]
        if not line.startswith(LISTENING_PREFIX):
            raise SystemExit(
                f"origin did not start (stdout {buffer[:300]!r}, exit {process.poll()}):\n"
                + tail(log)
            )
        host = line.removeprefix(LISTENING_PREFIX).decode().strip().rstrip("/")
        if not host.startswith(f"{LOOPBACK}:"):
            raise SystemExit(f"origin listens on {host}, expected {LOOPBACK}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_discard, process.stdout)
            try:
                yield Target("origin", f"http://{host}", process, log)
            finally:
                with trio.CancelScope(shield=True):
                    await stop(process)
    finally:
        with trio.CancelScope(shield=True):
            code = await stop(process)
    if code != 0:
        print(f"warning: origin exited {code} after SIGTERM:\n{tail(log)}", file=sys.stderr)


@asynccontextmanager
async def run_distribution(tmp: Path, label: str) -> AsyncIterator[Target]:
    program = shutil.which("docker-registry")
    if program is None:
        raise SystemExit("docker-registry not found (apt-get install docker-registry)")
    root = tmp / f"{label}-data"
    root.mkdir()
    addr = f"{LOOPBACK}:{free_port()}"
    config = tmp / f"{label}.yml"
    config.write_text(DISTRIBUTION_CONFIG.format(root=root, addr=addr))
    async with serve_distribution(program, config, addr, tmp, label) as target:
        yield target


@asynccontextmanager
async def serve_distribution(
    program: str, config: Path, addr: str, tmp: Path, label: str
) -> AsyncIterator[Target]:
    """CNCF Distribution on ``config`` (listening on ``addr``), stopped on exit. No
    ``REGISTRY_*`` or ``AWS_*`` variable of ours reaches it: its config file says it all."""
    log = tmp / f"{label}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
    with log.open("wb") as output:
        process = await trio.lowlevel.open_process(
            [program, "serve", str(config)],
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        if not await _answers_v2(process, f"http://{addr}/v2/"):
            raise SystemExit(f"{label} did not start (exit {process.poll()}):\n{tail(log)}")
        yield Target(label, f"http://{addr}", process, log)
    finally:
        with trio.CancelScope(shield=True):
            await stop(process)


async def _answers_v2(process: trio.Process, url: str) -> bool:
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        with trio.move_on_after(START_SECONDS):
            while process.poll() is None:
                try:
                    if (await client.get(url)).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    return False


def bench_client(target: Target, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=target.base_url,
        http1=True,
        http2=False,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(60),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def _loopback_url(client: httpx.AsyncClient, location: str) -> httpx.URL:
    url = client.base_url.join(location)
    if url.host != LOOPBACK:
        raise RuntimeError(f"upload Location points off this machine: {location}")
    return url


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as source:
        while chunk := await source.read(CHUNK):
            yield chunk


async def push_blob(
    client: httpx.AsyncClient,
    repository: str,
    digest: str,
    size: int,
    body: bytes | AsyncIterator[bytes],
) -> None:
    """Monolithic upload: POST opens a session, one PUT carries every byte and the digest."""
    opened = await client.post(f"/v2/{repository}/blobs/uploads/")
    if opened.status_code != 202:
        raise RuntimeError(f"POST upload: {opened.status_code} {opened.text[:300]}")
    url = _loopback_url(client, opened.headers["Location"])
    url = url.copy_merge_params({"digest": digest})
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    done = await client.put(url, content=body, headers=headers)
    if done.status_code != 201:
        raise RuntimeError(f"PUT upload: {done.status_code} {done.text[:300]}")


async def push_manifest(client: httpx.AsyncClient, blob: Blob) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    await push_blob(client, REPOSITORY, config_digest, len(config), config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": blob.digest, "size": blob.size}],
        }
    ).encode()
    response = await client.put(
        f"/v2/{REPOSITORY}/manifests/{TAG}",
        content=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    if response.status_code != 201:
        raise RuntimeError(f"PUT manifest: {response.status_code} {response.text[:300]}")


async def get_blob(client: httpx.AsyncClient, blob: Blob) -> None:
    url = f"/v2/{REPOSITORY}/blobs/{blob.digest}"
    async with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"GET blob: {response.status_code}")
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
    if received != blob.size:
        raise RuntimeError(f"GET blob: {received} bytes of {blob.size}")


async def timed(seconds: float, work: Callable[[], Awaitable[None]]) -> float:
    """Elapsed seconds of ``work``, bounded by ``seconds``."""
    with trio.fail_after(seconds):
        start = time.perf_counter()
        await work()
        return time.perf_counter() - start


async def measure_get(target: Target, blob: Blob, streams: int) -> float:
    async with bench_client(target, streams) as client:

        async def all_streams() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(get_blob, client, blob)

        elapsed = await timed(30 + streams * blob.size / MIN_BULK_RATE, all_streams)
    return streams * blob.size / elapsed / 1e6


async def measure_push(target: Target, blob: Blob) -> float:
    async with bench_client(target, 2) as client:
        body = _file_chunks(blob.path)
        elapsed = await timed(
            30 + blob.size / MIN_BULK_RATE,
            lambda: push_blob(client, REPOSITORY, blob.digest, blob.size, body),
        )
    return blob.size / elapsed / 1e6


async def _raw_connection(
    host: str,
    port: int,
    request: bytes,
    read_body: bool,
    deadline: float,
    counts: dict[str, int],
) -> None:
    """One keep-alive HTTP/1.1 connection sending ``request`` back to back until ``deadline``.

    A minimal client (status line, Content-Length, nothing else) costs far less CPU per
    request than httpx, so on a small machine the server, not the client, is what is measured.
    """
    stream = await trio.open_tcp_stream(host, port)
    buffer = b""
    try:
        while trio.current_time() < deadline:
            await stream.send_all(request)
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("server closed a keep-alive connection")
                buffer += data
            head, buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
            status = int(head[9:12])
            fields = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
            }
            if "chunked" in fields.get("transfer-encoding", "").lower():
                raise RuntimeError("chunked response (no Content-Length)")
            length = int(fields.get("content-length", "0")) if read_body else 0
            while len(buffer) < length:
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("server closed the connection mid-body")
                buffer += data
            buffer = buffer[length:]
            counts["ok" if status == 200 else str(status)] = (
                counts.get("ok" if status == 200 else str(status), 0) + 1
            )
            if fields.get("connection", "").lower() == "close":
                await stream.aclose()
                stream = await trio.open_tcp_stream(host, port)
                buffer = b""
    finally:
        await stream.aclose()


async def measure_requests_raw(
    target: Target, method: str, path: str, headers: dict[str, str], clients: int, seconds: float
) -> float:
    url = httpx.URL(target.base_url)
    assert url.host == LOOPBACK and url.port is not None
    lines = [f"{method} {path} HTTP/1.1", f"Host: {url.host}:{url.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    counts: dict[str, int] = {}
    with trio.fail_after(seconds + 30):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(
                    _raw_connection,
                    url.host,
                    url.port,
                    request,
                    method != "HEAD",
                    start + seconds,
                    counts,
                )
        elapsed = trio.current_time() - start
    ok = counts.pop("ok", 0)
    if counts:
        raise RuntimeError(f"non-200 answers: {counts} (and {ok} x 200)")
    return ok / elapsed


async def measure_requests_wrk(
    target: Target,
    method: str,
    path: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    tmp: Path,
) -> float:
    wrk = shutil.which("wrk")
    assert wrk is not None
    script = tmp / f"wrk-{method.lower()}.lua"
    script.write_text(f'wrk.method = "{method}"\n')
    command = [wrk, "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(target.base_url + path)
    with trio.fail_after(seconds + 30):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    output = result.stdout.decode(errors="replace")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if result.returncode != 0 or rate is None or float(rate[1]) == 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {output} {result.stderr!r}")
    problems = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", output)
    if problems:
        raise RuntimeError("; ".join(problems))
    return float(rate[1])


@dataclass(frozen=True)
class Options:
    size: int
    duration: float
    streams: int
    clients: int
    tool: str
    repeat: int
    tmp: Path


async def run_benchmarks(targets: list[Target], blob: Blob, options: Options) -> list[str]:
    """Fill ``target.results``; return the metric labels in order."""
    manifest_headers = {"Accept": OCI_MANIFEST}
    head_headers: dict[str, str] = {}
    blob_path = f"/v2/{REPOSITORY}/blobs/{blob.digest}"
    manifest_path = f"/v2/{REPOSITORY}/manifests/{TAG}"

    async def requests(target: Target, method: str, path: str, headers: dict[str, str]) -> float:
        if options.tool == "wrk" and method != "HEAD":  # wrk waits for a body after HEAD
            return await measure_requests_wrk(
                target, method, path, headers, options.clients, options.duration, options.tmp
            )
        return await measure_requests_raw(
            target, method, path, headers, options.clients, options.duration
        )

    metrics: list[tuple[str, Callable[[Target], Awaitable[float]]]] = [
        ("blob push, monolithic (MB/s)", lambda t: measure_push(t, blob)),
        ("blob GET, 1 stream (MB/s)", lambda t: measure_get(t, blob, 1)),
        (
            f"blob GET, {options.streams} streams (MB/s total)",
            lambda t: measure_get(t, blob, options.streams),
        ),
        (
            f"manifest GET by tag, {options.clients} clients (req/s)",
            lambda t: requests(t, "GET", manifest_path, manifest_headers),
        ),
        (
            f"HEAD blob, {options.clients} clients (req/s)",
            lambda t: requests(t, "HEAD", blob_path, head_headers),
        ),
    ]
    for index, (label, measure) in enumerate(metrics):
        # The push runs once (a later push of the same digest may take a shortcut); every
        # other metric is the median of --repeat rounds, the targets taking turns.
        rounds = 1 if index == 0 else options.repeat
        samples: dict[str, list[float]] = {target.label: [] for target in targets}
        for round_number in range(rounds):
            for target in targets:
                if label in target.results:  # failed in an earlier round
                    continue
                print(
                    f"  {label:<40} {target.label} ({round_number + 1}/{rounds})",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    samples[target.label].append(await measure(target))
                except trio.TooSlowError:
                    target.results[label] = "timeout"
                except Exception as exc:  # any failure of one metric is reported, not fatal
                    target.results[label] = "error"
                    print(f"    {target.label}: {exc!r}", file=sys.stderr)
        for target in targets:
            if label not in target.results:
                target.results[label] = f"{statistics.median(samples[target.label]):.1f}"
        if index == 0:
            # Later metrics read the blob and the tag: make sure both exist.
            for target in targets:
                try:
                    await _ensure_content(target, blob)
                except Exception as exc:
                    print(f"    {target.label}: storing blob + manifest: {exc!r}", file=sys.stderr)
    return [label for label, _ in metrics]


async def _ensure_content(target: Target, blob: Blob) -> None:
    async with bench_client(target, 2) as client:
        head = await client.head(f"/v2/{REPOSITORY}/blobs/{blob.digest}")
        if head.status_code != 200:
            with trio.fail_after(30 + blob.size / MIN_BULK_RATE):
                await push_blob(client, REPOSITORY, blob.digest, blob.size, _file_chunks(blob.path))
        with trio.fail_after(30):
            await push_manifest(client, blob)


def ratio(mine: str, theirs: str) -> str:
    try:
        return f"{float(mine) / float(theirs):.2f}"
    except (ValueError, ZeroDivisionError):
        return "-"


def print_table(labels: list[str], subject: Target, peer: Target, header: str) -> None:
    print(header)
    columns = (subject.label, peer.label, f"{subject.label}/{peer.label}")
    print(f"| {'metric':<40} | {columns[0]:>14} | {columns[1]:>14} | {columns[2]:>22} |")
    print(f"|{'-' * 42}|{'-' * 15}:|{'-' * 15}:|{'-' * 23}:|")
    for label in labels:
        mine, theirs = subject.results[label], peer.results[label]
        print(f"| {label:<40} | {mine:>14} | {theirs:>14} | {ratio(mine, theirs):>22} |")


async def main_async(args: argparse.Namespace, blob: Blob, tmp: Path, peer_version: str) -> None:
    tool = args.tool
    options = Options(args.size, args.duration, args.streams, args.clients, tool, args.repeat, tmp)
    async with AsyncExitStack() as stack:
        if args.subject == "origin":
            subject = await stack.enter_async_context(run_origin(tmp, args.origin_workers))
        else:
            subject = await stack.enter_async_context(run_distribution(tmp, "distribution-a"))
        peer = await stack.enter_async_context(run_distribution(tmp, "distribution"))
        labels = await run_benchmarks([subject, peer], blob, options)
        workers = f", origin --workers {args.origin_workers}" if args.origin_workers else ""
        header = (
            f"\nblob {human_size(blob.size)}; {os.cpu_count()} CPUs; 127.0.0.1; "
            f"req/s: {tool} client, {options.clients} connections, {options.duration:g} s; "
            f"median of {options.repeat} rounds (push: 1){workers}; "
            f"Distribution {peer_version}; MB = 10^6 bytes\n"
        )
        print_table(labels, subject, peer, header)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=1024 * MiB, help="blob size (1GiB)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per req/s test")
    parser.add_argument("--origin-workers", type=int, default=None, help="origin --workers N")
    parser.add_argument("--streams", type=int, default=8, help="concurrent GET streams")
    parser.add_argument("--clients", type=int, default=16, help="clients for req/s tests")
    parser.add_argument(
        "--tool",
        choices=["raw", "wrk"],
        default="raw",
        help="load generator for req/s tests: built-in raw HTTP/1.1 client, or wrk (GET only)",
    )
    parser.add_argument(
        "--subject",
        choices=["origin", "distribution"],
        default="origin",
        help="what to compare with Distribution ('distribution' checks the bench itself)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds per metric (median)")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="parent of the work dir")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.duration > 600:
        parser.error("--duration must be in (0, 600]")
    if not 1 <= args.repeat <= 10:
        parser.error("--repeat must be in [1, 10]")
    if not shutil.which("docker-registry"):
        parser.error("docker-registry (CNCF Distribution) is not installed")
    if args.tool == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")

    with tempfile.TemporaryDirectory(prefix="depot-bench-", dir=args.tmp_dir) as work:
        tmp = Path(work)
        print(f"writing {human_size(args.size)} of random bytes ...", file=sys.stderr)
        blob = write_random_blob(tmp / "blob.bin", args.size)
        version = subprocess.run(
            ["docker-registry", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split()
        trio.run(main_async, args, blob, tmp, version[-1] if version else "?")
    return 0


if __name__ == "__main__":
    sys.exit(main())
