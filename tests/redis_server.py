"""A private redis-server for a test: its own port, nothing on disk, stoppable and
restartable on the same port (Redis going away mid-run is part of what is tested)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from tests.peers import require_program
from tests.processes import free_port


class RedisServer:
    def __init__(self, program: str, directory: Path) -> None:
        self._program = program
        self._directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start it and return once it answers PING."""
        self._spawn()
        with trio.fail_after(10):
            while True:
                # A raw PING: a client that fails to connect leaves streams behind.
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                async with stream:
                    await stream.send_all(b"PING\r\n")
                    if (await stream.receive_some(64)).startswith(b"+PONG"):
                        return
                await trio.sleep(0.05)

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            [
                self._program,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A not-yet-started server (``await server.start()``), killed on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(require_program("redis-server"), directory)
    try:
        yield server
    finally:
        server.stop()
