"""``depot`` (the user CLI) as a real process against a real auth-enabled origin.

Images are generated here: an OCI layout with a 2-platform index, an OCI archive (a tar of
such a layout) and a ``docker save`` tar. ``depot save`` must print the build id, write the
metadata file, upload every blob once (a second save of the same image uploads none) and
leave an image that skopeo pulls with the same digests.

The tests of ``save``/``builds``/``usage`` need the builds API of the origin
(``POST|GET /api/v1/projects/{id}/builds``, ``DELETE .../builds/{id}``,
``GET /api/v1/orgs/{org}/usage``); login and the push of an image need only ``/v2/``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from depot import push
from depot.api import open_registry
from depot.image_source import DOCKER_ARCHIVE, OCI_ARCHIVE, OCI_LAYOUT, load_image
from tests.integration.tenants import Tenants, basic, start_tenants
from tests.interop.conftest import Skopeo
from tests.interop.oci_layout import LayoutWriter, read_layout, sha256_digest
from tests.peers import require_program
from tests.unit.test_image_source import tar_directory, write_docker_archive

#: Bound of one ``depot`` or skopeo run (the machine may be loaded: generous on purpose).
COMMAND_SECONDS = 180
LAYERS = (1000, 1_500_000)  # one layer above the 1 MiB upload chunk
SOURCE_KINDS = (OCI_LAYOUT, OCI_ARCHIVE, DOCKER_ARCHIVE)


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenants]:
    running = await start_tenants(nursery, tmp_path / "data")
    yield running
    running.origin.shutdown.set()


def depot_command() -> list[str]:
    script = Path(sys.executable).with_name("depot")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "depot.main"]


@dataclass
class Depot:
    """Runs ``depot`` with a private HOME/XDG_CONFIG_HOME and no DEPOT_* of the caller."""

    home: Path
    registry: str
    token: str
    #: More environment for every run (e.g. DEPOT_CA_FILE).
    more_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
        environ.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"))
        environ.update(self.more_env)
        environ.update(extra)
        return environ

    async def run(
        self,
        *args: str | Path,
        stdin: bytes = b"",
        with_credentials: bool = True,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        extra = {"DEPOT_REGISTRY": self.registry, "DEPOT_TOKEN": self.token}
        command = [*depot_command(), *map(str, args)]
        with trio.fail_after(COMMAND_SECONDS):
            result = await trio.run_process(
                command,
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env(**(extra if with_credentials else {})),
            )
        output = result.stdout + result.stderr
        assert self.token.encode() not in output, "depot printed the token"
        if check:
            assert result.returncode == 0, (
                f"depot {' '.join(map(str, args))} exited {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')[-3000:]}"
            )
        return result


@pytest.fixture
def depot(tenants: Tenants, tmp_path: Path) -> Depot:
    home = tmp_path / "home"
    home.mkdir()
    return Depot(home, tenants.url, tenants.acme)


def make_source(kind: str, tmp_path: Path) -> tuple[Path, str, int]:
    """An image of ``kind`` on disk: (path, top manifest digest, number of distinct blobs)."""
    if kind == DOCKER_ARCHIVE:
        path = tmp_path / "docker.tar"
        write_docker_archive(path, LAYERS)
    else:
        writer = LayoutWriter(tmp_path / "layout")
        writer.tag(writer.index(layer_sizes=LAYERS), "latest")
        path = writer.root if kind == OCI_LAYOUT else tar_directory(writer.root, tmp_path / "a.tar")
    image = load_image(path)
    assert image.kind == kind
    return path, image.root.digest, len(image.blobs())


async def manifest_digest(tenants: Tenants, repository: str, reference: str) -> str | None:
    async with httpx.AsyncClient(base_url=tenants.url, trust_env=False, timeout=60) as client:
        response = await client.get(
            f"/v2/{repository}/manifests/{reference}",
            headers={
                **basic(tenants.acme),
                "Accept": ",".join(
                    [
                        "application/vnd.oci.image.index.v1+json",
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                    ]
                ),
            },
        )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return sha256_digest(response.content)


# -- needs only /v2/ ----------------------------------------------------------------------


async def test_login_verifies_and_saves_the_token(depot: Depot, tenants: Tenants) -> None:
    refused = await depot.run(
        "login",
        tenants.url,
        "--token-stdin",
        stdin=b"dpo_wrong\n",
        with_credentials=False,
        check=False,
    )
    assert refused.returncode == 1
    assert b"401" in refused.stderr
    path = depot.home / ".config" / "depot" / "credentials.json"
    assert not path.exists()

    result = await depot.run(
        "login",
        tenants.url,
        "--token-stdin",
        stdin=f"{tenants.acme}\n".encode(),
        with_credentials=False,
    )
    assert b"Login succeeded" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["current"] == tenants.url
    assert document["registries"][tenants.url]["token"] == tenants.acme


@pytest.mark.parametrize("kind", SOURCE_KINDS)
async def test_push_uploads_only_missing_blobs(tenants: Tenants, tmp_path: Path, kind: str) -> None:
    """The push half of ``depot save`` (no builds API needed): to an org repository."""
    path, digest, blob_count = make_source(kind, tmp_path)
    image = load_image(path)
    with trio.fail_after(COMMAND_SECONDS):
        async with open_registry(tenants.url, tenants.acme) as client:
            first = await push.push_image(client, "acme/app", image, ["v1"])
            again = await push.push_image(client, "acme/app", image, ["v2"])
    assert (first.uploaded, first.skipped) == (blob_count, 0)
    assert (again.uploaded, again.skipped) == (0, blob_count)
    assert first.uploaded_bytes == sum(b.size for b in image.blobs())
    assert await manifest_digest(tenants, "acme/app", "v1") == digest
    assert await manifest_digest(tenants, "acme/app", "v2") == digest
    for child in image.root.children:
        assert await manifest_digest(tenants, "acme/app", child.digest) == child.digest


# -- need the builds API --------------------------------------------------------------------


@pytest.mark.parametrize("kind", SOURCE_KINDS)
async def test_save_each_source_kind(
    depot: Depot, tenants: Tenants, tmp_path: Path, kind: str
) -> None:
    path, digest, blob_count = make_source(kind, tmp_path)
    metadata = tmp_path / "build.json"

    first = await depot.run(
        "save",
        path,
        "--project",
        tenants.project,
        "--save-tag",
        "main",
        "--metadata-file",
        metadata,
        "-v",
    )
    build_id = first.stdout.decode().strip()
    assert build_id and "\n" not in build_id, first.stdout
    assert f"uploaded {blob_count} blobs, skipped 0".encode() in first.stderr, first.stderr
    assert json.loads(metadata.read_text()) == {
        "depot.build": {"buildID": build_id, "projectID": tenants.project}
    }
    assert await manifest_digest(tenants, tenants.project, build_id) == digest
    assert await manifest_digest(tenants, tenants.project, "main") == digest

    second = await depot.run("save", path, "--project", tenants.project, "-v")
    second_id = second.stdout.decode().strip()
    assert second_id != build_id
    assert f"uploaded 0 blobs, skipped {blob_count}".encode() in second.stderr, second.stderr
    assert await manifest_digest(tenants, tenants.project, second_id) == digest

    listed = await depot.run("builds", "list", "--project", tenants.project, "--json")
    builds = json.loads(listed.stdout)["builds"]
    assert [b["id"] for b in builds][:2] == [second_id, build_id]  # newest first
    assert "main" in builds[1]["tags"]
    table = await depot.run("builds", "list", "--project", tenants.project)
    assert build_id.encode() in table.stdout and b"BUILD ID" in table.stdout

    await depot.run("builds", "delete", "--project", tenants.project, build_id)
    listed = await depot.run("builds", "list", "--project", tenants.project, "--json")
    assert [b["id"] for b in json.loads(listed.stdout)["builds"]] == [second_id]


async def test_failed_save_leaves_no_build(depot: Depot, tenants: Tenants, tmp_path: Path) -> None:
    """A blob whose bytes do not match its digest: the registry refuses it, depot fails and
    deletes the build it created."""
    writer = LayoutWriter(tmp_path / "layout")
    image = writer.image(LAYERS)
    writer.tag(image, "latest")
    layer = writer.root / "blobs" / "sha256" / image.layer_digests[-1].removeprefix("sha256:")
    data = bytearray(layer.read_bytes())
    data[-1] ^= 0xFF
    layer.write_bytes(bytes(data))
    result = await depot.run("save", writer.root, "--project", tenants.project, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stdout == b""
    assert b"DIGEST_INVALID" in result.stderr, result.stderr
    listed = await depot.run("builds", "list", "--project", tenants.project, "--json")
    assert json.loads(listed.stdout)["builds"] == []


async def test_save_with_credentials_from_login(
    depot: Depot, tenants: Tenants, tmp_path: Path
) -> None:
    await depot.run(
        "login",
        tenants.url,
        "--token-stdin",
        stdin=f"{tenants.acme}\n".encode(),
        with_credentials=False,
    )
    path, digest, _ = make_source(DOCKER_ARCHIVE, tmp_path)
    result = await depot.run("save", path, "--project", tenants.project, with_credentials=False)
    build_id = result.stdout.decode().strip()
    assert await manifest_digest(tenants, tenants.project, build_id) == digest


async def test_usage(depot: Depot, tenants: Tenants, tmp_path: Path) -> None:
    path, _, _ = make_source(DOCKER_ARCHIVE, tmp_path)
    await depot.run("save", path, "--project", tenants.project)
    result = await depot.run("usage", "--org", "acme", "--json")
    usage = json.loads(result.stdout)
    assert usage["org"] in ("acme", tenants.acme_id)
    for key in ("stored_bytes", "byte_hours", "month_to_date_cost_usd"):
        assert isinstance(usage[key], int | float), usage
    assert usage["stored_bytes"] > 0
    text = await depot.run("usage", "--org", "acme")
    assert b"month-to-date cost (USD): $" in text.stdout


@pytest.mark.interop
@pytest.mark.parametrize("kind", SOURCE_KINDS)
async def test_skopeo_pulls_the_saved_build(
    depot: Depot, tenants: Tenants, tmp_path: Path, kind: str
) -> None:
    skopeo = make_skopeo(tmp_path)
    path, digest, _ = make_source(kind, tmp_path)
    result = await depot.run("save", path, "--project", tenants.project)
    build_id = result.stdout.decode().strip()
    host = tenants.url.removeprefix("http://")
    ref = f"docker://{host}/{tenants.project}:{build_id}"
    creds = ("--src-creds", f"x-token:{tenants.acme}")
    raw = await skopeo.run("inspect", "--raw", "--tls-verify=false", "--creds", creds[1], ref)
    assert sha256_digest(raw) == digest
    out = tmp_path / "pulled"
    if kind == DOCKER_ARCHIVE:
        # dir: keeps the manifest and blobs exactly as pulled.
        await skopeo.run("copy", "--src-tls-verify=false", *creds, ref, f"dir:{out}")
        manifest = (out / "manifest.json").read_bytes()
        assert sha256_digest(manifest) == digest
        document = json.loads(manifest)
        for descriptor in [document["config"], *document["layers"]]:
            blob = (out / descriptor["digest"].removeprefix("sha256:")).read_bytes()
            assert sha256_digest(blob) == descriptor["digest"]
    else:
        await skopeo.run("copy", "--all", "--src-tls-verify=false", *creds, ref, f"oci:{out}:x")
        pulled = read_layout(out, "x")
        assert pulled.digest == digest
        for child in json.loads(pulled.content)["manifests"]:
            assert (out / "blobs" / "sha256" / child["digest"].removeprefix("sha256:")).exists()


def make_skopeo(tmp_path: Path) -> Skopeo:
    """skopeo with a private policy, HOME and temp dir (as tests/interop's fixture)."""
    program = require_program("skopeo")
    workdir = tmp_path / "skopeo"
    for sub in ("home", "run", "tmp", "registries.d"):
        (workdir / sub).mkdir(parents=True)
    (workdir / "policy.json").write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    (workdir / "registries.conf").write_text("")
    home = workdir / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(workdir / "run"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "TMPDIR": str(workdir / "tmp"),
        "CONTAINERS_REGISTRIES_CONF": str(workdir / "registries.conf"),
    }
    return Skopeo(program, workdir, env)
