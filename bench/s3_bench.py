"""Push and pull of one big blob: the origin on S3 vs the origin on its filesystem vs CNCF
Distribution on the same S3 server, ratios in one run.

One moto server (tests/s3server.py; in memory, it checks no signature) with a bucket per S3
target, on 127.0.0.1 like everything else:

- ``origin-s3``: ``depot-registry origin serve --no-auth`` with ``storage_url = s3://...``
  (the upload staged as 8 MiB pieces, published by UploadPartCopy into one multipart upload);
- ``origin-fs``: the same origin on its data directory (filesystem driver);
- ``distribution-s3``: ``docker-registry serve`` with ``storage: s3`` and ``regionendpoint``
  pointing at the same moto server (its own bucket); its redirect to presigned URLs is
  disabled, so both registries stream the bytes themselves (the origin's redirect mode is
  off by default too).

Each round writes a fresh random blob (``--size``, default 1 GiB), pushes it to every target
(POST + one streamed PUT, 1 MiB chunks: a monolithic upload) and pulls it back (one streamed
GET, 1 MiB reads, bytes counted). MB/s = 10^6 bytes per second of wall time; median of
``--repeat`` rounds. moto is slow and single-threaded itself: the S3 figures are bounded by it,
so compare the S3 targets with each other (same server, same run), and with the filesystem
for what the object store costs. Printed with the machine's core count.

    .venv/bin/python bench/s3_bench.py
    .venv/bin/python bench/s3_bench.py --size 256MiB --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import httpx  # noqa: E402
from registry_bench import (  # noqa: E402
    LISTENING_PREFIX,
    LOOPBACK,
    REPOSITORY,
    START_SECONDS,
    Blob,
    Target,
    _discard,
    free_port,
    human_size,
    measure_get,
    measure_push,
    origin_command,
    parse_size,
    serve_distribution,
    stop,
    tail,
    write_random_blob,
)

from tests.s3server import TEST_CREDENTIALS, S3Server, create_bucket, moto_server  # noqa: E402

DISTRIBUTION_S3_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  s3:
    accesskey: {key}
    secretkey: {secret}
    region: us-east-1
    regionendpoint: {endpoint}
    bucket: {bucket}
    secure: false
    v4auth: true
  delete:
    enabled: true
  redirect:
    disable: {no_redirect}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
"""


@asynccontextmanager
async def run_origin(
    tmp: Path,
    label: str,
    storage_url: str | None,
    *,
    data: str | None = None,
    redirect: bool = False,
) -> AsyncIterator[Target]:
    data_dir = tmp / f"{data or label}-data"
    data_dir.mkdir(exist_ok=True)
    config = tmp / f"{label}.toml"
    lines = ["storage_redirect = true"] if redirect else []
    if storage_url:
        (tmp / "id").write_text(TEST_CREDENTIALS[0])
        (tmp / "secret").write_text(TEST_CREDENTIALS[1])
        lines += [
            f'storage_url = "{storage_url}"',
            f'storage_access_key_id_file = "{tmp / "id"}"',
            f'storage_secret_access_key_file = "{tmp / "secret"}"',
        ]
    config.write_text("\n".join(lines) + "\n")
    log = tmp / f"{label}.log"
    command = [
        *origin_command(),
        *("origin", "serve", "--listen", f"{LOOPBACK}:0", "--data-dir", str(data_dir)),
        *("--no-auth", "--config", str(config)),
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
            raise SystemExit(f"{label} did not start:\n{tail(log)}")
        host = line.removeprefix(LISTENING_PREFIX).decode().strip().rstrip("/")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_discard, process.stdout)
            try:
                yield Target(label, f"http://{host}", process, log)
            finally:
                with trio.CancelScope(shield=True):
                    await stop(process)
    finally:
        with trio.CancelScope(shield=True):
            await stop(process)


@asynccontextmanager
async def run_distribution_s3(
    tmp: Path, s3: S3Server, bucket: str, *, redirect: bool = False
) -> AsyncIterator[Target]:
    program = shutil.which("docker-registry")
    if program is None:
        raise SystemExit("docker-registry not found (apt-get install docker-registry)")
    addr = f"{LOOPBACK}:{free_port()}"
    label = "distribution-s3-redirect" if redirect else "distribution-s3"
    config = tmp / f"{label}.yml"
    config.write_text(
        DISTRIBUTION_S3_CONFIG.format(
            key=TEST_CREDENTIALS[0],
            secret=TEST_CREDENTIALS[1],
            endpoint=s3.endpoint,
            bucket=bucket,
            addr=addr,
            no_redirect="false" if redirect else "true",
        )
    )
    async with serve_distribution(program, config, addr, tmp, label) as target:
        yield target


async def measure_redirected_pull(target: Target, blob: Blob) -> float:
    """One GET that must be a redirect, followed (the registry's credentials-free hop to the
    store), the body read in 1 MiB pieces; MB/s."""
    url = f"{target.base_url}/v2/{REPOSITORY}/blobs/{blob.digest}"
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        with trio.fail_after(600):
            start = trio.current_time()
            first = await client.get(url)
            if first.status_code != 307:
                raise RuntimeError(f"{target.label}: {first.status_code}, expected a redirect")
            received = 0
            async with client.stream("GET", first.headers["Location"]) as response:
                async for chunk in response.aiter_raw(1024 * 1024):
                    received += len(chunk)
            elapsed = trio.current_time() - start
    if received != blob.size:
        raise RuntimeError(f"{target.label}: {received} bytes of {blob.size}")
    return blob.size / elapsed / 1e6


async def main_async(args: argparse.Namespace, tmp: Path, s3: S3Server) -> None:
    for bucket in ("depot", "distribution"):
        create_bucket(s3, bucket)
    storage = f"s3://depot?endpoint={s3.endpoint}&region=us-east-1"
    results: dict[str, dict[str, list[float]]] = {}
    async with AsyncExitStack() as stack:
        targets = [
            await stack.enter_async_context(run_origin(tmp, "origin-s3", storage)),
            await stack.enter_async_context(run_origin(tmp, "origin-fs", None)),
            await stack.enter_async_context(run_distribution_s3(tmp, s3, "distribution")),
        ]
        # Redirect mode: the same storage (and, for the origin, the same database) served by
        # a second process with redirects on; pull only, following the 307 to moto.
        redirecting = [
            await stack.enter_async_context(
                run_origin(tmp, "origin-s3-redirect", storage, data="origin-s3", redirect=True)
            ),
            await stack.enter_async_context(
                run_distribution_s3(tmp, s3, "distribution", redirect=True)
            ),
        ]
        for round_number in range(args.repeat):
            print(f"round {round_number + 1}: writing {human_size(args.size)} ...", file=sys.stderr)
            blob: Blob = write_random_blob(tmp / "blob.bin", args.size)
            for target in targets:
                push = await measure_push(target, blob)
                pull = await measure_get(target, blob, 1)
                print(
                    f"  {target.label}: push {push:.0f} MB/s, pull {pull:.0f} MB/s", file=sys.stderr
                )
                figures = results.setdefault(target.label, {"push": [], "pull": []})
                figures["push"].append(push)
                figures["pull"].append(pull)
            for target in redirecting:
                pull = await measure_redirected_pull(target, blob)
                print(f"  {target.label}: pull {pull:.0f} MB/s", file=sys.stderr)
                results.setdefault(target.label, {"pull": []})["pull"].append(pull)
            blob.path.unlink()

    median = {
        label: {what: statistics.median(values) for what, values in figures.items()}
        for label, figures in results.items()
    }
    print(
        f"\n{human_size(args.size)} blob, {os.cpu_count()} cores, median of {args.repeat}; "
        "MB/s (10^6 B/s)"
    )
    print(f"{'target':<26}{'push':>10}{'pull':>10}")
    for label, figures in median.items():
        push = f"{figures['push']:>10.0f}" if "push" in figures else f"{'-':>10}"
        print(f"{label:<26}{push}{figures['pull']:>10.0f}")
    s3_, fs, dist = median["origin-s3"], median["origin-fs"], median["distribution-s3"]
    for what in ("push", "pull"):
        print(
            f"{what}: origin-s3 / distribution-s3 = {s3_[what] / dist[what]:.2f}, "
            f"origin-s3 / origin-fs = {s3_[what] / fs[what]:.2f}"
        )
    redirected = median["origin-s3-redirect"]["pull"] / median["distribution-s3-redirect"]["pull"]
    print(f"pull, redirect mode: origin / distribution = {redirected:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--repeat", type=int, default=1, help="rounds (median)")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="parent of the work dir")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 10:
        parser.error("--repeat must be in [1, 10]")
    with tempfile.TemporaryDirectory(prefix="depot-s3-bench-", dir=args.tmp_dir) as work:
        tmp = Path(work)
        with moto_server(tmp / "moto.log") as s3:
            trio.run(main_async, args, tmp, s3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
