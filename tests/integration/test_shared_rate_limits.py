"""Failed-credential limits shared through Redis: two origins using one Redis count a client's
failures together; when Redis dies, each falls back to its own limit and keeps serving.

A redis-server of the test's own (a free port, killed mid-test), real origin processes."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.oci import guarded
from tests.peers import require_program
from tests.processes import free_port, origin_process, tail

pytestmark = pytest.mark.slow

BAD = httpx.BasicAuth("x-token", "dpu_not-a-real-token")


@asynccontextmanager
async def redis_server(log: Path) -> AsyncIterator[tuple[str, trio.Process]]:
    program = require_program("redis-server")
    port = free_port()
    command = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no"]
    with log.open("wb") as output:
        process = await trio.lowlevel.open_process(
            command, stdout=output, stderr=output, stdin=subprocess.DEVNULL
        )
    try:
        with trio.fail_after(10):
            while True:  # ready once it accepts a connection
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def status_with_bad_credentials(http: httpx.AsyncClient) -> int:
    return (await http.get("/v2/", auth=BAD)).status_code


async def test_two_origins_share_the_limit_and_fall_back_when_redis_dies(tmp_path: Path) -> None:
    config = tmp_path / "origin.toml"
    with trio.fail_after(60):
        async with redis_server(tmp_path / "redis.log") as (url, redis):
            config.write_text(
                f'redis_url = "{url}"\ntoken_failures_allowed = 3\n'
                "token_failure_window_seconds = 600\n"
            )
            args = ["--config", str(config)]
            async with (
                origin_process(tmp_path / "a", tmp_path / "a.log", args) as a,
                origin_process(tmp_path / "b", tmp_path / "b.log", args) as b,
                guarded(httpx.AsyncClient(base_url=a.url)) as to_a,
                guarded(httpx.AsyncClient(base_url=b.url)) as to_b,
            ):
                assert await status_with_bad_credentials(to_a) == 401
                assert await status_with_bad_credentials(to_a) == 401
                assert await status_with_bad_credentials(to_b) == 401
                # Three failures in all, one of them at b: b refuses the fourth try.
                refused = await to_b.get("/v2/", auth=BAD)
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["Retry-After"]) > 0
                assert (await to_a.get("/v2/", auth=BAD)).status_code == 429

                redis.kill()
                await redis.wait()
                # b alone has seen one failure: per process again, it answers 401 twice
                # more, then 429, and serves on.
                assert await status_with_bad_credentials(to_b) == 401
                assert await status_with_bad_credentials(to_b) == 401
                assert await status_with_bad_credentials(to_b) == 429
                assert (await to_b.get("/v2/")).status_code == 401  # anonymous: a challenge
                assert await b.stop() == 0  # a clean exit, Redis still gone

            # An origin starting while Redis is down serves, limiting per process.
            async with (
                origin_process(tmp_path / "c", tmp_path / "c.log", args) as c,
                guarded(httpx.AsyncClient(base_url=c.url)) as to_c,
            ):
                assert await status_with_bad_credentials(to_c) == 401
            started = (tmp_path / "c.log").read_text()
            assert "limits per process" in started or "limited per process" in started, started
            log = (tmp_path / "b.log").read_text()
            assert "failed credentials limited per process" in log, tail(tmp_path / "b.log")
            assert "Traceback" not in log, tail(tmp_path / "b.log")
