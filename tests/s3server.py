"""A real S3 server for tests and benchmarks: moto in server mode, as a subprocess.

No MinIO is installable here (PITFALLS.md); ``moto[server]`` serves the S3 REST API we use
(multipart uploads, UploadPartCopy, ranged GETs, presigned URLs, conditional PUTs). It does
NOT verify request signatures, so a test against it proves the requests are well formed and
the semantics right, never that the credentials were. It keeps every object in memory
(``POST /moto-api/reset`` forgets them all), enforces S3's 5 MiB minimum part size, and
reports every multipart upload as initiated on 2010-11-10 (a constant in its answers).

Synchronous on purpose: pytest-trio runs each test in its own ``trio.run``, so a server shared
by a whole session has to be started by a plain fixture. It binds 127.0.0.1:0 and the port is
read back from its "Running on" line, so two runs never race for a port.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

START_SECONDS = 30
STOP_SECONDS = 10
_RUNNING = re.compile(rb"Running on (http://127\.0\.0\.1:\d+)")


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    log: Path
    pid: int

    def reset(self) -> None:
        """Forget every bucket and object (moto's own API)."""
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()


def moto_command() -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "moto.server"]


def _wait_for_endpoint(log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        found = _RUNNING.search(log.read_bytes())
        if found:
            return found.group(1).decode()
        time.sleep(0.05)  # waiting for a line in its log: there is nothing to block on
    raise AssertionError(
        f"moto did not start (exit code {process.poll()}):\n"
        + log.read_text(errors="replace")[-3000:]
    )


@contextmanager
def moto_server(
    log: Path, *, min_part_size: int | None = None, env: Mapping[str, str] | None = None
) -> Iterator[S3Server]:
    """Run ``moto_server`` on 127.0.0.1:0 while the block runs; stop it after.

    ``min_part_size`` lowers moto's 5 MiB minimum size of a multipart upload's non-last parts
    (``S3_UPLOAD_PART_MIN_SIZE``); the default keeps S3's rule.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment.update(env or {})
    if min_part_size is not None:
        environment["S3_UPLOAD_PART_MIN_SIZE"] = str(min_part_size)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*moto_command(), "-H", "127.0.0.1", "-p", "0"],
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            env=environment,
        )
    try:
        yield S3Server(_wait_for_endpoint(log, process), log, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def moto_installed() -> bool:
    return importlib.util.find_spec("moto") is not None


def require_moto() -> None:
    """Skip (fail on CI: ``CI=true``) when moto is not installed: it comes with ``.[test]``."""
    if moto_installed():
        return
    message = "moto is not installed (pip install -e '.[test]' brings moto[server])"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


#: moto accepts any credentials (it verifies no signature); real ones must never be needed.
TEST_CREDENTIALS = ("moto-test-key", "moto-test-secret")


def create_bucket(server: S3Server, name: str) -> None:
    """Create a bucket with plain boto3 (test setup, outside any driver under test)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=TEST_CREDENTIALS[0],
        aws_secret_access_key=TEST_CREDENTIALS[1],
    )
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
