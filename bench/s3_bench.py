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

from registry_bench import (  # noqa: E402
    LISTENING_PREFIX,
    LOOPBACK,
    START_SECONDS,
    Blob,
    Target,
    _answers_v2,
    _discard,
    free_port,
    human_size,
    measure_get,
    measure_push,
    origin_command,
    parse_size,
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
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
"""


@asynccontextmanager
async def run_origin(tmp: Path, label: str, storage_url: str | None) -> AsyncIterator[Target]:
    data_dir = tmp / f"{label}-data"
    data_dir.mkdir()
    config = tmp / f"{label}.toml"
    lines = []
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
async def run_distribution_s3(tmp: Path, s3: S3Server, bucket: str) -> AsyncIterator[Target]:
    program = shutil.which("docker-registry")
    if program is None:
        raise SystemExit("docker-registry not found (apt-get install docker-registry)")
    addr = f"{LOOPBACK}:{free_port()}"
    config = tmp / "distribution-s3.yml"
    config.write_text(
        DISTRIBUTION_S3_CONFIG.format(
            key=TEST_CREDENTIALS[0],
            secret=TEST_CREDENTIALS[1],
            endpoint=s3.endpoint,
            bucket=bucket,
            addr=addr,
        )
    )
    log = tmp / "distribution-s3.log"
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
            raise SystemExit(f"distribution-s3 did not start:\n{tail(log)}")
        yield Target("distribution-s3", f"http://{addr}", process, log)
    finally:
        with trio.CancelScope(shield=True):
            await stop(process)


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
            blob.path.unlink()

    median = {
        label: {what: statistics.median(values) for what, values in figures.items()}
        for label, figures in results.items()
    }
    print(
        f"\n{human_size(args.size)} blob, {os.cpu_count()} cores, median of {args.repeat}; "
        "MB/s (10^6 B/s)"
    )
    print(f"{'target':<18}{'push':>10}{'pull':>10}")
    for label, figures in median.items():
        print(f"{label:<18}{figures['push']:>10.0f}{figures['pull']:>10.0f}")
    s3_, fs, dist = median["origin-s3"], median["origin-fs"], median["distribution-s3"]
    for what in ("push", "pull"):
        print(
            f"{what}: origin-s3 / distribution-s3 = {s3_[what] / dist[what]:.2f}, "
            f"origin-s3 / origin-fs = {s3_[what] / fs[what]:.2f}"
        )


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
