"""Real clients pulling over verified TLS from a registry with a non-loopback name.

Origin and edge serve HTTPS (``--tls-cert``/``--tls-key``) with a certificate for
``registry.test`` from a throwaway CA (tests/tls_ca.py); the edge reaches origin at
``https://registry.test:PORT`` and verifies it with ``--upstream-ca``. The name resolves to
127.0.0.1 through an ``/etc/hosts`` line this module adds and removes (every peer resolves
through the system resolver; a name on 127.0.0.0/8 would let Docker and containerd fall back
to plain HTTP, and no peer gets an insecure flag). Each peer is given only the CA:

- skopeo pushes (through the edge to origin) and inspects with ``--cert-dir``;
- podman pulls with ``--cert-dir``;
- containerd pulls with a ``hosts.toml`` naming the CA (``ca = ...``);
- the Docker engine pulls with ``/etc/docker/certs.d/registry.test:PORT/ca.crt``.

And with no CA given, a client refuses the certificate (the test can fail).
Needs root (``/etc/hosts``, containerd, dockerd); skipped locally without it, failed on CI.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.docker_engine import docker_engine
from tests.interop.conftest import Registry, run_cli
from tests.interop.oci_layout import Image, LayoutWriter
from tests.interop.test_auth_clients import (
    containerd_process,
    host_platform,
    podman_in,
    require_root,
)
from tests.peers import require_program
from tests.processes import edge_process, origin_process, tail
from tests.tls_ca import REGISTRY_NAME, TlsFiles, make_tls_files

if TYPE_CHECKING:
    from tests.interop.conftest import Skopeo

pytestmark = pytest.mark.interop

HOSTS_FILE = Path("/etc/hosts")
DOCKER_CERTS = Path("/etc/docker/certs.d")
#: One small layer: these tests are about the transport, not the image.
LAYER_SIZES = (64 * 1024,)


def non_loopback_address() -> str:
    """This machine's IPv4 address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))
            address: str = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if ipaddress.ip_address(address).is_loopback:
        message = "no non-loopback IPv4 address to serve registry.test on"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return address


@contextmanager
def hosts_entry(address: str, name: str) -> Iterator[None]:
    """``address name`` in /etc/hosts for the block's duration (a line tagged with this
    process id, so concurrent runs add and remove only their own)."""
    line = f"{address} {name} # depot-registry tls test {os.getpid()}\n"
    original = HOSTS_FILE.read_text()
    # In place, not by rename: /etc/hosts is often a bind mount.
    with HOSTS_FILE.open("a") as hosts:
        hosts.write(line if original.endswith("\n") or not original else "\n" + line)
    try:
        yield
    finally:
        kept = [x for x in HOSTS_FILE.read_text().splitlines(keepends=True) if x != line]
        HOSTS_FILE.write_text("".join(kept))


@dataclass(frozen=True)
class TlsSystem:
    """Origin and edge on HTTPS; clients use ``host`` (the edge, as registry.test:PORT)."""

    tls: TlsFiles
    cert_dir: Path  # a directory holding only ca.crt (skopeo's and podman's --cert-dir)
    edge: Registry
    origin: Registry
    org_token: str
    pull_token: str

    @property
    def host(self) -> str:
        return self.edge.host

    def logs(self) -> str:
        return f"origin:\n{self.origin.log_tail(20)}\nedge:\n{self.edge.log_tail(20)}"


def named(url: str) -> str:
    """``https://ADDRESS:PORT`` → ``registry.test:PORT``."""
    return f"{REGISTRY_NAME}:{url.rpartition(':')[2]}"


@pytest.fixture
async def tls_system(tmp_path: Path) -> AsyncIterator[TlsSystem]:
    require_root("an /etc/hosts entry for registry.test")
    tls = make_tls_files(tmp_path / "tls")
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    shutil.copy(tls.ca_cert, cert_dir / "ca.crt")
    address = non_loopback_address()
    serve_tls = (
        *("--listen", f"{address}:0"),  # after the helpers' own --listen: this one wins
        *("--tls-cert", str(tls.cert), "--tls-key", str(tls.key)),
    )
    data_dir = tmp_path / "origin-data"
    with hosts_entry(address, REGISTRY_NAME):
        async with origin_process(data_dir, tmp_path / "origin.log", serve_tls) as origin:
            assert origin.url.startswith("https://"), origin.url
            org = await run_cli(data_dir, "org", "create", "acme")
            pull = await run_cli(data_dir, "token", "create", "--kind", "pull", "--org", "acme")
            edge_token = await run_cli(data_dir, "token", "create", "--kind", "edge")
            token_file = tmp_path / "edge.token"
            token_file.write_text(edge_token["token"])
            async with edge_process(
                f"https://{named(origin.url)}",
                token_file,
                tmp_path / "edge-cache",
                tmp_path / "edge.log",
                (*serve_tls, "--upstream-ca", str(tls.ca_cert)),
            ) as edge:
                yield TlsSystem(
                    tls,
                    cert_dir,
                    Registry("edge", named(edge.url), edge.log),
                    Registry("origin", named(origin.url), origin.log),
                    org["token"],
                    pull["token"],
                )


async def push(tmp_path: Path, skopeo: Skopeo, system: TlsSystem) -> Image:
    """A small image for this platform, pushed through the edge with skopeo over TLS."""
    layout = LayoutWriter(tmp_path / "source")
    image = layout.image(layer_sizes=LAYER_SIZES, platform=host_platform())
    layout.tag(image, "latest")
    result = await skopeo.attempt(
        "copy", "--dest-cert-dir", str(system.cert_dir),
        "--dest-creds", f"x-token:{system.org_token}",
        f"oci:{layout.root}:latest", f"docker://{system.host}/acme/app:v1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:] + system.logs()
    return image


async def test_skopeo_pushes_and_inspects_over_tls(
    tmp_path: Path, skopeo: Skopeo, tls_system: TlsSystem
) -> None:
    image = await push(tmp_path, skopeo, tls_system)
    reference = f"docker://{tls_system.host}/acme/app:v1"
    creds = ("--creds", f"x-token:{tls_system.pull_token}")
    inspected = await skopeo.run(
        "inspect", "--cert-dir", str(tls_system.cert_dir), *creds, reference
    )
    assert json.loads(inspected)["Digest"] == image.manifest_digest
    # Without the CA the same command refuses the certificate: nothing here is insecure.
    refused = await skopeo.attempt("inspect", *creds, reference)
    assert refused.returncode != 0
    assert b"certificate" in refused.stderr, refused.stderr[-2000:]


async def test_podman_pulls_over_tls(tmp_path: Path, skopeo: Skopeo, tls_system: TlsSystem) -> None:
    image = await push(tmp_path, skopeo, tls_system)
    # A short path: podman refuses a runroot longer than 50 characters.
    podman_dir = Path(tempfile.mkdtemp(prefix="pod", dir="/tmp"))
    try:
        podman = podman_in(require_program("podman"), podman_dir)
        (podman_dir / "auth.json").write_text('{"auths": {}}')
        reference = f"{tls_system.host}/acme/app:v1"
        pulled = await podman.run(
            "pull", "--cert-dir", str(tls_system.cert_dir),
            "--creds", f"x-token:{tls_system.pull_token}", reference,
        )  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr.decode(errors="replace")[-3000:]
        details = json.loads((await podman.run("image", "inspect", reference)).stdout)[0]
        assert details["Digest"] == image.manifest_digest, details
    finally:
        shutil.rmtree(podman_dir, ignore_errors=True)


async def test_containerd_pulls_over_tls_with_hosts_toml(
    tmp_path: Path, skopeo: Skopeo, tls_system: TlsSystem
) -> None:
    image = await push(tmp_path, skopeo, tls_system)
    hosts_dir = tmp_path / "hosts.d"
    (hosts_dir / tls_system.host).mkdir(parents=True)
    (hosts_dir / tls_system.host / "hosts.toml").write_text(
        f'server = "https://{tls_system.host}"\n\n'
        f'[host."https://{tls_system.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        f'  ca = "{tls_system.tls.ca_cert}"\n'
    )
    reference = f"{tls_system.host}/acme/app:v1"
    async with containerd_process(tmp_path / "containerd.log") as containerd:
        result = await containerd.ctr(
            "tls", "images", "pull", "--hosts-dir", str(hosts_dir),
            "--user", f"x-token:{tls_system.pull_token}", reference,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:] + tail(
            containerd.log, 20
        )
        listed = (await containerd.ctr("tls", "images", "ls")).stdout.decode()
        row = next((x for x in listed.splitlines() if x.startswith(reference)), "")
        assert image.manifest_digest in row, listed


@asynccontextmanager
async def docker_trusts(host: str, ca_cert: Path) -> AsyncIterator[None]:
    """The engine's per-registry trust: /etc/docker/certs.d/<host:port>/ca.crt (dockerd reads
    only that directory, for every engine on the machine: a port of our own keeps it ours)."""
    directory = DOCKER_CERTS / host
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca_cert, directory / "ca.crt")
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_docker_engine_pulls_over_tls_with_certs_d(
    tmp_path: Path, skopeo: Skopeo, tls_system: TlsSystem
) -> None:
    image = await push(tmp_path, skopeo, tls_system)
    reference = f"{tls_system.host}/acme/app:v1"
    async with docker_engine() as engine:
        untrusted = await engine.docker("pull", reference, check=False)
        assert untrusted.returncode != 0
        assert b"certificate" in untrusted.stderr, untrusted.stderr
        async with docker_trusts(tls_system.host, tls_system.tls.ca_cert):
            login = await engine.docker(
                "login", "--username", "x-token", "--password-stdin", tls_system.host,
                stdin=tls_system.pull_token.encode(),
            )  # fmt: skip
            assert b"Login Succeeded" in login.stdout, login
            await engine.docker("pull", reference)
            inspected = json.loads((await engine.docker("image", "inspect", reference)).stdout)
            assert inspected[0]["Id"] == image.config_digest, inspected
