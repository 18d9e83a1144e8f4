"""``./scripts/run`` as a person runs it: it prints the URL and the exact commands (with the
CLIs' path and the origin's data directory), keeps both servers' logs in files of the data
directory (the terminal gets no request lines), and when the origin dies it says so, shows
the end of the origin's log, stops the edge and exits non-zero."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
READY_SECONDS = 120  # a first run may install the project into .venv
STOP_SECONDS = 20


@pytest.fixture
def run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    ports = {"edge": f"127.0.0.1:{free_port()}", "origin": f"127.0.0.1:{free_port()}"}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    environ.update(
        DEPOT_DATA_DIR=str(tmp_path / "data"),
        DEPOT_LISTEN=ports["edge"],
        DEPOT_ORIGIN_LISTEN=ports["origin"],
        DEPOT_BASE_DOMAIN="registry.localhost",
    )
    with subprocess.Popen(
        [str(ROOT / "scripts" / "run")],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: teardown ends every child
    ) as process:
        try:
            yield process, ports
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(STOP_SECONDS)


def read_until_ready(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C stops both"):
            return "".join(lines)
    raise AssertionError(f"scripts/run never got ready:\n{''.join(lines)}")


def server_pid(port: str, kind: str) -> int:
    """The pid of the ``depot-registry <kind> serve --listen <port>`` process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if kind.encode() in argv and b"serve" in argv and port.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no {kind} process on {port}")


def test_run_prints_what_to_do_logs_to_files_and_stops_when_origin_dies(
    run: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    process, ports = run
    out = read_until_ready(process)
    data = tmp_path / "data"
    token = re.search(r"dpo_\w+", out)
    assert token is not None, out
    assert f"use http://{ports['edge']}" in out
    assert f'export PATH="{ROOT}/.venv/bin:$PATH"' in out
    assert f"--data-dir {data}/origin" in out
    assert f"curl --resolve demo.registry.localhost:{ports['edge'].split(':')[1]}:127.0.0.1" in out

    with httpx.Client(trust_env=False, timeout=10) as http:
        answer = http.get(
            f"http://{ports['edge']}/v2/",
            headers={"Host": f"demo.registry.localhost:{ports['edge'].split(':')[1]}"},
            auth=("x-token", token.group()),
        )
        assert answer.status_code == 200, answer.text
    edge_log = (data / "edge.log").read_text()
    assert '"path": "/v2/"' in edge_log, edge_log  # the request line is in the file ...

    os.kill(server_pid(ports["origin"], "origin"), signal.SIGKILL)
    assert process.wait(STOP_SECONDS) == 1
    assert process.stdout is not None and process.stderr is not None
    rest = process.stdout.read()
    stderr = process.stderr.read()
    assert "depot.edge.access" not in out + rest  # ... and never on the terminal
    assert "the origin stopped" in stderr, stderr
    assert "origin listening on" in stderr  # the end of its log
    with pytest.raises(AssertionError):
        server_pid(ports["edge"], "edge")  # the edge was stopped too
