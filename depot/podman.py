"""``depot pull`` into podman, when no Docker engine answers.

podman pulls from the registry itself (``podman pull``), with the CLI's token in an auth file
of its own (mode 0600, in a private temp directory, removed afterwards) rather than on the
command line, where any user could read it in the process list. Plain HTTP
(``--tls-verify=false``) only for a registry addressed with ``http://``. Then ``podman tag``
gives it each local name. podman's own progress goes to stderr unless ``quiet``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from core.errors import BackendError

#: Bound of ``podman tag`` / ``inspect`` (a pull is bounded by the caller, if at all).
QUICK_SECONDS = 60


class PodmanError(BackendError):
    """podman is missing or failed; the message ends with podman's own error text."""


def find_podman() -> str | None:
    return shutil.which("podman")


def auth_document(server: str, username: str, password: str) -> bytes:
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {server: {"auth": raw}}}).encode()


async def pull(
    program: str,
    reference: str,
    *,
    server: str,
    token: str,
    plain_http: bool,
    platform: str | None,
    quiet: bool,
    environ: Mapping[str, str] | None = None,
) -> str:
    """``podman pull reference``; the image id podman prints."""
    env = dict(os.environ if environ is None else environ)
    directory = Path(tempfile.mkdtemp(prefix="depot-podman-"))
    try:
        authfile = directory / "auth.json"
        fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(auth_document(server, "x-token", token))
        command = [program, "pull", "--authfile", str(authfile)]
        if plain_http:
            command.append("--tls-verify=false")
        if platform:
            command += ["--platform", platform]
        if quiet:
            command.append("--quiet")
        command.append(reference)
        result = await trio.run_process(
            command,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=quiet,  # else podman's progress and errors reach the user as is
            check=False,
            env=env,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if result.returncode != 0:
        detail = (result.stderr or b"").decode(errors="replace").strip().splitlines()
        raise PodmanError(
            f"podman pull {reference} failed (exit {result.returncode})"
            + (f": {detail[-1]}" if detail else "")
        )
    lines = result.stdout.decode(errors="replace").split()
    if not lines:
        raise PodmanError(f"podman pull {reference} printed no image id")
    return lines[-1]


async def run(program: str, *args: str, environ: Mapping[str, str] | None = None) -> bytes:
    """Run ``podman ARGS`` (tag, untag, inspect); its stdout."""
    env = dict(os.environ if environ is None else environ)
    with trio.fail_after(QUICK_SECONDS):
        result = await trio.run_process(
            [program, *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise PodmanError(
            f"podman {' '.join(args)} failed (exit {result.returncode})"
            + (f": {detail[-1]}" if detail else "")
        )
    return result.stdout


async def tag_all(program: str, image: str, names: Sequence[str]) -> None:
    for name in names:
        await run(program, "tag", image, name)
