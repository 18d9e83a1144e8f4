"""Blob GET with sendfile: the origin vs its streamed past and vs CNCF Distribution.

Starts, on 127.0.0.1, ``depot-registry origin serve`` (this tree: anycorn, blob bodies sent
with sendfile), optionally the origin of an earlier revision (``--baseline REV``: exported
with ``git archive`` and run with the same virtualenv — e.g. the last hypercorn revision,
whose blob bodies were read into Python and written back out), and ``docker-registry
serve``. Pushes one random blob of each ``--size`` to each and measures, one target at a
time, with curl as the reader (``-o /dev/null``):

- blob GET, 1 stream and ``--streams`` concurrent streams (MB/s aggregate);
- for this origin only: the GET over HTTP/2 (h2c, httpx): no zero copy there, the body is
  streamed (1 MiB reads in a thread);
- for this origin only: a cold GET (the blob file's pages dropped from the page cache with
  ``posix_fadvise(DONTNEED)`` first), with the worst latency of ``GET /v2/`` asked every
  10 ms meanwhile on another connection — a page-cache miss must not stall the event loop
  (sendfile runs in a worker thread) — and the same latency during a warm GET.

Every figure is the median of ``--repeat`` rounds, targets taking turns; ratios are against
Distribution measured in the same run. MB = 10^6 bytes. Client and servers share the
machine's cores (print with ``nproc``).

    .venv/bin/python bench/sendfile_bench.py                       # 256 MiB and 1 GiB
    .venv/bin/python bench/sendfile_bench.py --size 64MiB --repeat 1
    .venv/bin/python bench/sendfile_bench.py --baseline 39d508c    # + the hypercorn origin
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import trio
from registry_bench import (
    REPOSITORY,
    Blob,
    Target,
    bench_client,
    get_blob,
    parse_size,
    push_blob,
    run_distribution,
    run_origin,
    write_random_blob,
)

ROOT = Path(__file__).resolve().parent.parent
CURL_SECONDS = 300
PROBE_INTERVAL = 0.01


@asynccontextmanager
async def run_baseline(tmp: Path, revision: str) -> AsyncIterator[Target]:
    """The origin of ``revision``, run from an exported tree with this virtualenv."""
    tree = tmp / f"baseline-{revision}"
    tree.mkdir()
    archive = await trio.run_process(
        ["git", "-C", str(ROOT), "archive", revision], capture_stdout=True
    )
    await trio.run_process(["tar", "-x", "-C", str(tree)], stdin=archive.stdout)
    origin_dir = tmp / "baseline"
    origin_dir.mkdir()
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)  # the child imports the old tree first
    try:
        async with run_origin(origin_dir, None) as target:
            target.label = f"origin@{revision}"
            yield target
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous


async def curl_get(target: Target, blob: Blob, streams: int) -> float:
    """MB/s of ``streams`` concurrent curl downloads of the blob."""
    url = f"{target.base_url}/v2/{REPOSITORY}/blobs/{blob.digest}"
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url]
    sizes: list[int] = []

    async def one() -> None:
        result = await trio.run_process(command, capture_stdout=True, stdin=subprocess.DEVNULL)
        sizes.append(int(result.stdout))

    with trio.fail_after(CURL_SECONDS):
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one)
        elapsed = time.perf_counter() - start
    if sizes != [blob.size] * streams:
        raise RuntimeError(f"{target.label}: got {sizes} bytes, expected {blob.size} each")
    return streams * blob.size / elapsed / 1e6


async def h2c_get(target: Target, blob: Blob) -> float:
    """MB/s of one download over HTTP/2 with prior knowledge (no zero copy there)."""
    async with httpx.AsyncClient(
        base_url=target.base_url, http1=False, http2=True, trust_env=False, timeout=60
    ) as client:
        with trio.fail_after(CURL_SECONDS):
            start = time.perf_counter()
            await get_blob(client, blob)
            return blob.size / (time.perf_counter() - start) / 1e6


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def get_with_probe(target: Target, blob: Blob) -> tuple[float, float]:
    """(MB/s of one curl GET, worst ``GET /v2/`` latency in ms while it ran)."""
    worst = 0.0
    async with bench_client(target, 1) as client, trio.open_nursery() as nursery:

        async def probe() -> None:
            nonlocal worst
            while True:
                start = time.perf_counter()
                response = await client.get("/v2/")
                if response.status_code != 200:
                    raise RuntimeError(f"/v2/: {response.status_code}")
                worst = max(worst, time.perf_counter() - start)
                await trio.sleep(PROBE_INTERVAL)

        await client.get("/v2/")  # the probe's connection is open before the GET starts
        nursery.start_soon(probe)
        rate = await curl_get(target, blob, 1)
        nursery.cancel_scope.cancel()
    return rate, worst * 1000


def blob_file(data_dir: Path, blob: Blob) -> Path:
    encoded = blob.digest.removeprefix("sha256:")
    return data_dir / "storage" / "blobs" / "sha256" / encoded[:2] / encoded / "data"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def bench_size(
    targets: list[Target], subject: Target, size: int, tmp: Path, options: argparse.Namespace
) -> list[str]:
    blob = write_random_blob(tmp / f"blob-{size}", size)
    for target in targets:
        async with bench_client(target, 2) as client:
            await push_blob(client, REPOSITORY, blob.digest, blob.size, blob.path.read_bytes())
    results: dict[str, dict[str, list[float]]] = {t.label: {} for t in targets}

    def note(target: Target, metric: str, value: float) -> None:
        results[target.label].setdefault(metric, []).append(value)

    subject_file = blob_file(tmp / "origin-data", blob)
    for _ in range(options.repeat):
        for target in targets:
            note(target, "GET 1 stream MB/s", await curl_get(target, blob, 1))
            streams = options.streams
            note(target, f"GET {streams} streams MB/s", await curl_get(target, blob, streams))
        note(subject, "GET h2c (streamed) MB/s", await h2c_get(subject, blob))
        rate, warm_ms = await get_with_probe(subject, blob)
        note(subject, "/v2/ worst ms, warm GET", warm_ms)
        drop_from_page_cache(subject_file)
        rate, cold_ms = await get_with_probe(subject, blob)
        note(subject, "GET cold 1 stream MB/s", rate)
        note(subject, "/v2/ worst ms, cold GET", cold_ms)
    blob.path.unlink()
    lines = [f"\n{size / (1 << 20):.0f} MiB blob, median of {options.repeat}:"]
    reference = results["distribution"]
    metrics = [m for t in targets for m in results[t.label]]
    for metric in dict.fromkeys(metrics):
        row = f"  {metric:<28}"
        for target in targets:
            value = median(results[target.label].get(metric, []))
            row += f" {target.label}={value:8.1f}"
        mine = median(results[subject.label].get(metric, []))
        theirs = median(reference.get(metric, []))
        if metric in reference and "MB/s" in metric:
            row += f"   ratio {subject.label}/distribution={mine / theirs:.2f}"
        lines.append(row)
    return lines


async def main(options: argparse.Namespace) -> None:
    if shutil.which("curl") is None:
        raise SystemExit("curl not found")
    with tempfile.TemporaryDirectory(prefix="sendfile-bench-") as directory:
        tmp = Path(directory)
        async with AsyncExitStack() as stack:
            subject = await stack.enter_async_context(run_origin(tmp, None))
            targets = [subject]
            if options.baseline:
                targets.append(await stack.enter_async_context(run_baseline(tmp, options.baseline)))
            targets.append(await stack.enter_async_context(run_distribution(tmp, "distribution")))
            print(f"cores: {os.cpu_count()}; targets: {', '.join(t.label for t in targets)}")
            for size in options.size:
                for line in await bench_size(targets, subject, size, tmp, options):
                    print(line, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, action="append", help="blob size (repeatable)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default="", help="also run the origin of this revision")
    arguments = parser.parse_args()
    arguments.size = arguments.size or [256 << 20, 1 << 30]
    sys.exit(trio.run(main, arguments))
