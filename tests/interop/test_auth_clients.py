"""Real clients against an origin with auth on: tokens made with the CLI, used the way people
and Kubernetes nodes use them (``x-token:<token>`` as username and password).

- skopeo pushes with an org token through the Bearer flow and pulls back with a pull token;
  a wrong token and a pull token cannot push, and nothing lands in the registry.
- containerd (``ctr images pull --user``, what a node does with an ``imagePullSecret``) pulls
  and unpacks with a pull token, and refuses a wrong one.
- podman logs in, pulls and pushes; a wrong token cannot log in.

Each peer runs with private state under a temp dir (containerd as root, with its own config,
root, state and socket). Failure messages quote the client's stderr and the origin's log.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import trio

from tests.interop.oci_layout import OCI_MANIFEST, Image, LayoutWriter, read_blob, read_layout
from tests.peers import require_program
from tests.processes import stop_process, tail

if TYPE_CHECKING:
    from tests.interop.conftest import AuthEdge, AuthOrigin, Skopeo

pytestmark = pytest.mark.interop

#: Small layers keep the file fast; more than one so every client handles a layer chain.
LAYER_SIZES = (16 * 1024, 256 * 1024, 1024 * 1024)
CLIENT_SECONDS = 60
CONTAINERD_START_SECONDS = 30
#: What a client prints when the registry refuses its credentials.
AUTH_ERROR = re.compile(
    r"unauthorized|invalid username/password|authentication required|denied|\b401\b|\b403\b",
    re.IGNORECASE,
)
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def host_platform() -> tuple[str, str]:
    """(os, architecture) as OCI spells them for this machine, so containerd unpacks."""
    machine = platform.machine().lower()
    return "linux", GO_ARCH.get(machine, machine)


def wrong(token: str) -> str:
    """``token`` with its last characters changed: well-formed, but no such secret."""
    return token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")


def text_tail(data: bytes, lines: int = 40) -> str:
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def describe(
    result: subprocess.CompletedProcess[bytes],
    server: AuthOrigin | AuthEdge,
    logs: Sequence[Path] = (),
) -> str:
    """The command, its output tails and the server logs (an edge's origin's too)."""
    command = " ".join(str(arg) for arg in result.args)
    parts = [
        f"{command}\nexited {result.returncode}",
        f"stdout tail:\n{text_tail(result.stdout, 10)}",
        f"stderr tail:\n{text_tail(result.stderr, 60)}",
        f"{server.registry.kind} log tail:\n{server.log_tail(40)}",
    ]
    origin = getattr(server, "origin", None)
    if origin is not None:
        parts.append(f"origin log tail:\n{origin.log_tail(30)}")
    parts += [f"{log.name} tail:\n{tail(log, 40)}" for log in logs]
    return "\n".join(parts)


def succeeded(
    result: subprocess.CompletedProcess[bytes],
    server: AuthOrigin | AuthEdge,
    logs: Sequence[Path] = (),
) -> bytes:
    assert result.returncode == 0, describe(result, server, logs)
    return result.stdout


def refused(
    result: subprocess.CompletedProcess[bytes],
    origin: AuthOrigin,
    logs: Sequence[Path] = (),
) -> None:
    """The client failed, saying why: an auth error, not a crash or a timeout."""
    assert result.returncode != 0, "expected a refusal:\n" + describe(result, origin, logs)
    assert result.returncode > 0, "killed by a signal:\n" + describe(result, origin, logs)
    assert AUTH_ERROR.search(result.stderr.decode(errors="replace")), (
        "no auth error in stderr:\n" + describe(result, origin, logs)
    )


async def run(
    command: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(CLIENT_SECONDS):
        return await trio.run_process(
            list(command),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )


async def registry_has(origin: AuthOrigin, repository: str, image: Image, tag: str) -> set[str]:
    """What of ``image`` the registry holds in ``repository``, asked with the pull token as
    Basic credentials: the tag and blob digests found (404 means absent, anything else fails)."""
    found: set[str] = set()
    auth = ("x-token", origin.pull_token)
    paths = {tag: f"manifests/{tag}", **{d: f"blobs/{d}" for d in image.blob_digests()}}
    async with httpx.AsyncClient(
        base_url=f"http://{origin.host}", auth=auth, trust_env=False, timeout=10
    ) as http:
        for key, path in paths.items():
            response = await http.head(f"/v2/{repository}/{path}", headers={"Accept": OCI_MANIFEST})
            assert response.status_code in (200, 404), (response, origin.log_tail())
            if response.status_code == 200:
                found.add(key)
    return found


def new_image(tmp_path: Path) -> tuple[Image, str]:
    """A fresh multi-layer image for this machine's platform, and its ``oci:`` reference."""
    layout = LayoutWriter(tmp_path / "source")
    image = layout.image(layer_sizes=LAYER_SIZES, platform=host_platform())
    layout.tag(image, "latest")
    return image, f"oci:{layout.root}:latest"


async def push_with(
    skopeo: Skopeo, token: str, source: str, destination: str
) -> subprocess.CompletedProcess[bytes]:
    creds = f"x-token:{token}"
    return await skopeo.attempt(
        "copy", "--dest-tls-verify=false", "--dest-creds", creds, source, destination
    )


async def push_image(tmp_path: Path, skopeo: Skopeo, origin: AuthOrigin, destination: str) -> Image:
    """A fresh image pushed with the org token."""
    image, source = new_image(tmp_path)
    succeeded(await push_with(skopeo, origin.org_token, source, destination), origin)
    return image


# -- skopeo -----------------------------------------------------------------------------------


async def test_skopeo_push_with_org_token_pull_with_pull_token(
    tmp_path: Path, skopeo: Skopeo, auth_origin: AuthOrigin
) -> None:
    origin = auth_origin
    image = await push_image(tmp_path, skopeo, origin, origin.ref("acme/app", "v1"))

    creds = f"x-token:{origin.pull_token}"
    raw = succeeded(
        await skopeo.attempt(
            "inspect", "--raw", "--tls-verify=false", "--creds", creds, origin.ref("acme/app", "v1")
        ),
        origin,
    )
    assert raw == image.manifest

    out = tmp_path / "out"
    result = await skopeo.attempt(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        creds,
        origin.ref("acme/app", "v1"),
        f"oci:{out}:v1",
    )
    succeeded(result, origin)
    ref = read_layout(out, "v1")
    assert ref.digest == image.manifest_digest
    assert ref.content == image.manifest
    for digest in image.blob_digests():
        read_blob(out, digest)  # present, and its bytes hash to its digest
    assert await registry_has(origin, "acme/app", image, "v1") == {"v1", *image.blob_digests()}


@pytest.mark.parametrize("credential", ["wrong token", "pull token"])
async def test_skopeo_push_refused(
    tmp_path: Path, skopeo: Skopeo, auth_origin: AuthOrigin, credential: str
) -> None:
    origin = auth_origin
    token = wrong(origin.org_token) if credential == "wrong token" else origin.pull_token
    image, source = new_image(tmp_path)

    refused(await push_with(skopeo, token, source, origin.ref("acme/app", "v1")), origin)
    # Nothing landed: neither the tag nor any blob (asked with a valid token).
    assert await registry_has(origin, "acme/app", image, "v1") == set(), origin.log_tail()


# -- containerd -------------------------------------------------------------------------------

CONTAINERD_CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{root}/grpc.sock"

[ttrpc]
  address = "{root}/ttrpc.sock"

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"""


@dataclass(frozen=True)
class Containerd:
    ctr_program: str
    socket: Path
    log: Path
    env: dict[str, str]

    async def ctr(self, namespace: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``ctr`` on this containerd; it fetches images itself (client side)."""
        command = [self.ctr_program, "--address", str(self.socket), "--namespace", namespace]
        return await run([*command, *args], self.env)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        message = f"{what} needs root"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@asynccontextmanager
async def containerd_process(log: Path) -> AsyncIterator[Containerd]:
    """containerd with config, root, state and sockets of its own under a short /tmp dir
    (unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer)."""
    program = require_program("containerd")
    ctr_program = require_program("ctr")
    require_root("containerd")
    workdir = Path(tempfile.mkdtemp(prefix="ctd", dir="/tmp"))
    try:
        config = workdir / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(root=workdir))
        # No proxy settings: every request goes straight to the origin on 127.0.0.1.
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        with log.open("wb") as output:
            process = await trio.lowlevel.open_process(
                [program, "--config", str(config)],
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        try:
            running = Containerd(ctr_program, workdir / "grpc.sock", log, env)
            await _wait_containerd(process, running)
            yield running
        finally:
            with trio.CancelScope(shield=True):
                await stop_process(process)
    finally:
        with trio.CancelScope(shield=True):
            await _unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


async def _wait_containerd(process: trio.Process, containerd: Containerd) -> None:
    last = b""
    with trio.move_on_after(CONTAINERD_START_SECONDS):
        while process.poll() is None:
            if containerd.socket.exists():
                result = await containerd.ctr("default", "version")
                if result.returncode == 0:
                    return
                last = result.stderr
            await trio.sleep(0.1)
    raise AssertionError(
        f"containerd not ready within {CONTAINERD_START_SECONDS}s (exit code {process.poll()})"
        f"\nlast ctr error: {text_tail(last, 5)}\nlog tail:\n{tail(containerd.log, 40)}"
    )


async def _unmount_under(directory: Path) -> None:
    """Best effort: containerd may leave snapshot mounts behind; ignore every error."""
    for point in mount_points_under(directory):
        with trio.move_on_after(10):
            await trio.run_process(
                ["umount", "-R", point],
                check=False,
                capture_stdout=True,
                capture_stderr=True,
                stdin=subprocess.DEVNULL,
            )


def mount_points_under(directory: Path) -> list[str]:
    """Mount points inside ``directory``, deepest first."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    # Fields are space separated; a space inside a path is written as \\040.
    points = [line.split()[1].encode().decode("unicode_escape") for line in lines if " " in line]
    inside = [p for p in points if p == str(directory) or p.startswith(f"{directory}/")]
    return sorted(inside, key=len, reverse=True)


async def test_containerd_pulls_and_unpacks_with_pull_token(
    tmp_path: Path, skopeo: Skopeo, auth_origin: AuthOrigin
) -> None:
    origin = auth_origin
    image = await push_image(tmp_path, skopeo, origin, origin.ref("acme/app", "v1"))
    reference = f"{origin.host}/acme/app:v1"

    async with containerd_process(tmp_path / "containerd.log") as containerd:
        logs = [containerd.log]
        pull = "images", "pull", "--plain-http"
        result = await containerd.ctr(
            "test", *pull, "--user", f"x-token:{origin.pull_token}", reference
        )
        succeeded(result, origin, logs)

        listed = succeeded(await containerd.ctr("test", "images", "ls"), origin, logs).decode()
        row = next((line for line in listed.splitlines() if line.startswith(reference)), "")
        assert image.manifest_digest in row, listed
        checked = succeeded(await containerd.ctr("test", "images", "check"), origin, logs).decode()
        row = next((line for line in checked.splitlines() if line.startswith(reference)), "")
        layers = len(image.layer_digests)
        assert f"complete ({layers + 1}/{layers + 1})" in row, checked  # config + layers
        assert row.split()[-1] == "true", f"not unpacked:\n{checked}"
        snapshots = succeeded(await containerd.ctr("test", "snapshots", "ls"), origin, logs)
        committed = [line for line in snapshots.decode().splitlines() if "Committed" in line]
        assert len(committed) == layers, snapshots.decode()

        # A wrong token, in a namespace of its own so nothing pulled above can be reused.
        bad = f"x-token:{wrong(origin.pull_token)}"
        refused(await containerd.ctr("wrong", *pull, "--user", bad, reference), origin, logs)
        left = succeeded(await containerd.ctr("wrong", "images", "ls", "-q"), origin, logs)
        assert left.strip() == b"", left


# -- podman -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Podman:
    program: str
    workdir: Path
    env: dict[str, str]

    async def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        command = [
            self.program,
            *("--root", str(self.workdir / "root"), "--runroot", str(self.workdir / "runroot")),
            *("--storage-driver", "vfs", "--tmpdir", str(self.workdir / "libpod")),
            *("--cgroup-manager", "cgroupfs", "--events-backend", "file"),
            "--log-level=debug",
            *args,
        ]
        return await run(command, self.env)


@pytest.fixture
async def podman() -> AsyncIterator[Podman]:
    """podman with storage, config, auth file and temp files in a short /tmp dir of its own
    (podman refuses a runroot longer than 50 characters; pytest's tmp_path can be longer)."""
    program = require_program("podman")
    workdir = Path(tempfile.mkdtemp(prefix="pod", dir="/tmp"))
    try:
        yield podman_in(program, workdir)
    finally:
        with trio.CancelScope(shield=True):
            await _unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def podman_in(program: str, workdir: Path) -> Podman:
    for sub in ("root", "runroot", "libpod", "home", "run", "tmp"):
        (workdir / sub).mkdir(parents=True)
    (workdir / "registries.conf").write_text("")
    (workdir / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{workdir}/runroot"\ngraphroot = "{workdir}/root"\n'
    )
    (workdir / "containers.conf").write_text(
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{workdir}/events.log"\n'
        f'image_copy_tmp_dir = "{workdir}/tmp"\n'
    )
    home = workdir / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(workdir / "run"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "TMPDIR": str(workdir / "tmp"),
        "CONTAINERS_CONF": str(workdir / "containers.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(workdir / "registries.conf"),
        "CONTAINERS_STORAGE_CONF": str(workdir / "storage.conf"),
        "REGISTRY_AUTH_FILE": str(workdir / "auth.json"),
    }
    return Podman(program, workdir, env)


async def test_podman_login_pull_push(
    tmp_path: Path, skopeo: Skopeo, auth_origin: AuthOrigin, podman: Podman
) -> None:
    origin = auth_origin
    image = await push_image(tmp_path, skopeo, origin, origin.ref("acme/app", "v1"))
    authfile = str(podman.workdir / "auth.json")
    registry = ("--tls-verify=false", "--authfile", authfile)

    login = await podman.run(
        "login", *registry, "--username", "x-token", "--password", origin.org_token, origin.host
    )
    assert b"Login Succeeded" in succeeded(login, origin), describe(login, origin)
    assert origin.host in logged_in(Path(authfile))

    pulled = await podman.run("pull", *registry, f"{origin.host}/acme/app:v1")
    succeeded(pulled, origin)
    inspected = await podman.run("image", "inspect", f"{origin.host}/acme/app:v1")
    details = json.loads(succeeded(inspected, origin))[0]
    assert details["Id"] == image.config_digest.removeprefix("sha256:"), details
    assert details["Digest"] == image.manifest_digest, details

    target = f"{origin.host}/acme/podman:v1"
    succeeded(await podman.run("tag", f"{origin.host}/acme/app:v1", target), origin)
    digest_file = podman.workdir / "pushed.digest"
    pushed = await podman.run("push", *registry, "--digestfile", str(digest_file), target)
    succeeded(pushed, origin)
    found = await skopeo.attempt(
        "inspect",
        "--tls-verify=false",
        "--creds",
        f"x-token:{origin.pull_token}",
        origin.ref("acme/podman", "v1"),
    )
    assert (
        json.loads(succeeded(found, origin))["Digest"]
        == (await trio.Path(digest_file).read_text()).strip()
    )

    # A wrong token cannot log in, and leaves no credentials behind.
    bad_authfile = podman.workdir / "bad-auth.json"
    bad = "--tls-verify=false", "--authfile", str(bad_authfile), "--username", "x-token"
    refused(
        await podman.run("login", *bad, "--password", wrong(origin.org_token), origin.host), origin
    )
    assert origin.host not in logged_in(bad_authfile)


def logged_in(authfile: Path) -> set[str]:
    """The registries an auth file holds credentials for."""
    if not authfile.exists():
        return set()
    return set(json.loads(authfile.read_text()).get("auths", {}))
