"""Which S3 client for the storage driver: boto3 in worker threads, or httpx + botocore's signer?

Against one moto server on 127.0.0.1 (tests/s3server.py), in the same run, variants taking
turns, for one object of ``--size`` bytes (default 256 MiB):

- multipart PUT: CreateMultipartUpload, ``--part-size`` parts sent one after another,
  CompleteMultipartUpload;
- streamed GET: one GetObject, the body read in 4 MiB pieces and dropped.

Variants:

- ``boto3``: what the driver ships, core/storage/s3_client.py: boto3 through
  ``trio.to_thread.run_sync`` with a CapacityLimiter, one thread hop per part and per 4 MiB
  body read, ``UNSIGNED-PAYLOAD`` with botocore's CRC32 checksum on uploads;
- ``boto3-signed``: boto3 in threads with botocore's defaults (over plain http it SHA-256-signs
  every payload, and adds the CRC32);
- ``httpx``: the project's httpx client (core/client/http.py: 1 MiB socket reads) with
  requests signed by botocore's ``S3SigV4Auth``, ``UNSIGNED-PAYLOAD``;
- ``httpx-signed``: the same, with the SHA-256 of each part computed in a worker thread.

Printed: MB/s (10^6 bytes) of the wall time, and the CPU seconds this process spent (the
client's cost; moto's own CPU, in another process, is printed apart: moto is slow itself, so
compare variants with each other, not with a real S3). Median of ``--repeat`` rounds.

    .venv/bin/python bench/s3_client_bench.py
    .venv/bin/python bench/s3_client_bench.py --size 64MiB --repeat 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import httpx
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.client.http import open_http_client  # noqa: E402  (1 MiB socket reads)
from core.storage.location import S3Credentials, S3Location  # noqa: E402
from core.storage.s3_client import S3Client  # noqa: E402
from tests.s3server import S3Server, create_bucket, moto_server  # noqa: E402

MiB = 1024 * 1024
BUCKET = "bench"
REGION = "us-east-1"
READ_SIZE = 4 * MiB
CREDENTIALS = Credentials("bench-key", "bench-secret")


class PresetPayloadSigner(S3SigV4Auth):
    """SigV4 for S3 with the payload hash the caller computed (or UNSIGNED-PAYLOAD)."""

    def payload(self, request: AWSRequest) -> str:
        return str(request.context["payload"])


def parse_size(text: str) -> int:
    units = {"KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text.removesuffix(suffix)) * factor
    return int(text)


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- boto3 in threads ------------------------------------------------------------------------


class DriverVariant:
    """What the S3 driver ships: core/storage/s3_client.py (boto3, threads, limiter)."""

    def __init__(self, endpoint: str) -> None:
        location = S3Location(bucket=BUCKET, endpoint=endpoint, region=REGION)
        self.client = S3Client(
            location, S3Credentials(CREDENTIALS.access_key, CREDENTIALS.secret_key)
        )

    async def put(self, key: str, data: bytes, part_size: int) -> None:
        upload_id = await self.client.create_multipart(key)
        parts = []
        for number, start in enumerate(range(0, len(data), part_size), 1):
            etag = await self.client.upload_part(
                key, upload_id, number, data[start : start + part_size]
            )
            parts.append((number, etag))
        await self.client.complete_multipart(key, upload_id, parts)

    async def get(self, key: str) -> int:
        stream, _ = await self.client.open_stream(key)
        total = 0
        try:
            while chunk := await stream.read(READ_SIZE):
                total += len(chunk)
        finally:
            await stream.aclose()
        return total

    async def aclose(self) -> None:
        await self.client.aclose()


class Boto3DefaultVariant:
    """boto3 with botocore's defaults, in threads: over plain http it signs every payload."""

    def __init__(self, endpoint: str) -> None:
        config = Config(region_name=REGION, s3={"addressing_style": "path"})
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=CREDENTIALS.access_key,
            aws_secret_access_key=CREDENTIALS.secret_key,
            config=config,
        )
        self.limiter = trio.CapacityLimiter(16)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self.limiter)

    async def put(self, key: str, data: bytes, part_size: int) -> None:
        started = await self.run(self.client.create_multipart_upload, Bucket=BUCKET, Key=key)
        upload_id = started["UploadId"]
        parts = []
        for number, start in enumerate(range(0, len(data), part_size), 1):
            answer = await self.run(
                self.client.upload_part,
                Bucket=BUCKET,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data[start : start + part_size],
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        await self.run(
            self.client.complete_multipart_upload,
            Bucket=BUCKET,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )

    async def get(self, key: str) -> int:
        answer = await self.run(self.client.get_object, Bucket=BUCKET, Key=key)
        body = answer["Body"]
        total = 0
        try:
            while chunk := await self.run(body.read, READ_SIZE):
                total += len(chunk)
        finally:
            await self.run(body.close)
        return total

    async def aclose(self) -> None:
        await self.run(self.client.close)


# --- httpx + botocore's signer ---------------------------------------------------------------


class HttpxVariant:
    def __init__(self, endpoint: str, *, signed: bool) -> None:
        self.endpoint = endpoint
        self.http = open_http_client(endpoint, auth_header=None)
        self.signer = PresetPayloadSigner(CREDENTIALS, "s3", REGION)
        self.signed = signed

    async def request(
        self, method: str, key: str, params: dict[str, str], body: bytes = b"", stream: bool = False
    ) -> httpx.Response:
        url = httpx.URL(f"{self.endpoint}/{BUCKET}/{key}", params=params)
        if self.signed and body:
            payload = await trio.to_thread.run_sync(lambda: hashlib.sha256(body).hexdigest())
        else:
            payload = "UNSIGNED-PAYLOAD"
        aws = AWSRequest(method, str(url))
        aws.context["payload"] = payload
        self.signer.add_auth(aws)
        headers = dict(aws.headers.items())
        request = self.http.build_request(method, url, headers=headers, content=body or None)
        response = await self.http.send(request, stream=stream)
        if not stream:
            await response.aread()
            if response.status_code >= 300:
                raise RuntimeError(f"{method} {key}: {response.status_code} {response.text[:200]}")
        return response

    async def put(self, key: str, data: bytes, part_size: int) -> None:
        started = await self.request("POST", key, {"uploads": ""})
        upload_id = started.text.split("<UploadId>")[1].split("</UploadId>")[0]
        parts = []
        for number, start in enumerate(range(0, len(data), part_size), 1):
            body = data[start : start + part_size]
            answer = await self.request(
                "PUT", key, {"partNumber": str(number), "uploadId": upload_id}, body
            )
            parts.append((number, answer.headers["ETag"]))
        document = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>" for n, etag in parts
        )
        await self.request(
            "POST",
            key,
            {"uploadId": upload_id},
            f"<CompleteMultipartUpload>{document}</CompleteMultipartUpload>".encode(),
        )

    async def get(self, key: str) -> int:
        response = await self.request("GET", key, {}, stream=True)
        total = 0
        try:
            async for chunk in response.aiter_raw():
                total += len(chunk)
        finally:
            await response.aclose()
        return total

    async def aclose(self) -> None:
        await self.http.aclose()


Variant = DriverVariant | Boto3DefaultVariant | HttpxVariant
FACTORIES: dict[str, Callable[[str], Variant]] = {
    "boto3": DriverVariant,
    "boto3-signed": Boto3DefaultVariant,
    "httpx": lambda endpoint: HttpxVariant(endpoint, signed=False),
    "httpx-signed": lambda endpoint: HttpxVariant(endpoint, signed=True),
}


Timing = tuple[float, float, float]  # wall seconds, our CPU seconds, moto's CPU seconds


async def measure(fn: Callable[[], Awaitable[Any]], moto_pid: int) -> tuple[Timing, Any]:
    cpu, moto_cpu, wall = time.process_time(), process_cpu(moto_pid), time.perf_counter()
    with trio.fail_after(600):
        result = await fn()
    timing = (
        time.perf_counter() - wall,
        time.process_time() - cpu,
        process_cpu(moto_pid) - moto_cpu,
    )
    return timing, result


async def bench(args: argparse.Namespace, server: S3Server) -> None:
    endpoint, moto_pid = server.endpoint, server.pid
    data = os.urandom(args.size)
    create_bucket(server, BUCKET)
    setup = DriverVariant(server.endpoint)
    results: dict[tuple[str, str], list[Timing]] = {}
    for round_number in range(args.repeat):
        for name in args.variants:
            variant = FACTORIES[name](endpoint)
            key = f"{name}-{round_number}"
            try:
                put, _ = await measure(partial(variant.put, key, data, args.part_size), moto_pid)
                fetched, got = await measure(partial(variant.get, key), moto_pid)
                if got != len(data):
                    raise RuntimeError(f"{name}: read {got} bytes, expected {len(data)}")
            finally:
                await variant.aclose()
            await setup.client.delete(key)
            results.setdefault((name, "multipart PUT"), []).append(put)
            results.setdefault((name, "streamed GET"), []).append(fetched)
            print(f"round {round_number + 1} {name}: done", file=sys.stderr)
    await setup.aclose()

    size_mb = args.size / 1e6
    print(
        f"\n{args.size // MiB} MiB object, {args.part_size // MiB} MiB parts, "
        f"median of {args.repeat}; moto on 127.0.0.1\n"
    )
    print(f"{'operation':<14} {'variant':<15} {'MB/s':>8} {'client CPU s':>13} {'moto CPU s':>11}")
    for operation in ("multipart PUT", "streamed GET"):
        for name in args.variants:
            runs = results[(name, operation)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            moto = statistics.median(r[2] for r in runs)
            print(f"{operation:<14} {name:<15} {size_mb / wall:>8.1f} {cpu:>13.2f} {moto:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=256 * MiB)
    parser.add_argument("--part-size", type=parse_size, default=16 * MiB)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(FACTORIES), choices=list(FACTORIES))
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="s3-client-bench-") as tmp,
        moto_server(Path(tmp) / "moto.log") as server,
    ):
        trio.run(bench, args, server)


if __name__ == "__main__":
    main()
