"""``depot pull`` as a user runs it: the CLI pointed at a real edge in front of a real origin
(``depot save`` went through the same edge), loading into a real Docker engine started by the
test (and ``depot save docker://IMAGE`` from it), into podman when no engine answers, or to
disk (OCI layout, docker-archive that ``docker load`` takes); the build picker driven through
a pseudo-terminal; the error listing builds when there is no terminal; ``depot login`` from a
pipe; orgs, projects and pull tokens through the edge.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pexpect
import pytest
import trio

from tests.docker_engine import DockerEngine, docker_engine
from tests.integration.test_depot_cli import depot_command
from tests.interop.depot_rig import LAYER_SIZES, DepotRig, make_rig, source
from tests.interop.oci_layout import read_blob, read_layout
from tests.interop.test_auth_clients import Podman, host_platform
from tests.interop.test_auth_clients import podman as podman
from tests.interop.test_edge_clients import bytes_from_upstream

if TYPE_CHECKING:
    from tests.interop.conftest import AuthEdge, Skopeo

pytestmark = pytest.mark.interop

PTY_SECONDS = 120


@pytest.fixture
async def rig(auth_edge: AuthEdge, tmp_path: Path) -> DepotRig:
    return await make_rig(auth_edge, tmp_path)


def other_platform() -> tuple[str, str]:
    return ("linux", "arm64" if host_platform()[1] != "arm64" else "amd64")


async def inspect(engine: DockerEngine, name: str) -> dict[str, Any] | None:
    result = await engine.docker("image", "inspect", name, check=False)
    if result.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(result.stdout)[0]
    return found


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


# -- the Docker engine ------------------------------------------------------------------------


async def test_pull_into_docker_through_the_edge(rig: DepotRig, tmp_path: Path) -> None:
    src = source(tmp_path)
    image = src.image(LAYER_SIZES, host_platform())
    build = await rig.save(image, "main")
    index = src.index(platforms=(host_platform(), other_platform()), layer_sizes=LAYER_SIZES)
    await rig.save(index, "multi")
    mine, theirs = index.children
    project = rig.project

    async with docker_engine() as engine:
        rig.extra_env["DOCKER_HOST"] = engine.host
        # By save-tag, two local names; no terminal: one line per layer.
        result = await rig.run(
            "pull", "main", "--project", project, "-t", "app:v1", "-t", "x.test/app:v2"
        )
        assert result.stdout.decode().split() == ["app:v1", "x.test/app:v2"]
        stderr = result.stderr.decode()
        for layer in image.layer_digests:
            assert f"{short(layer)}: pull complete" in stderr, stderr
        for name in ("app:v1", "x.test/app:v2"):
            found = await inspect(engine, name)
            assert found is not None and found["Id"] == image.config_digest, (name, found)
        # The engine pulled through the edge, under the registry's name, which is dropped.
        assert await inspect(engine, f"{rig.edge.host}/{project}:{build}") is None
        assert await bytes_from_upstream(rig.edge) > 0, rig.edge.log_tail()

        # PROJECT:BUILD, the default name <project>:<build id>, --json for scripts.
        result = await rig.run("pull", f"{project}:{build}", "--json")
        document = json.loads(result.stdout)
        assert document["names"] == [f"{project}:{build}"]
        assert document["build_id"] == build and document["loaded_into"] == "docker"
        assert document["config_digest"] == image.config_digest
        assert document["digest"] == image.manifest_digest
        assert result.stderr == b""
        found = await inspect(engine, f"{project}:{build}")
        assert found is not None and found["Id"] == image.config_digest

        # Multi-platform: this machine's platform, unless --platform.
        await rig.run("pull", "multi", "--project", project, "-q")
        found = await inspect(engine, f"{project}:multi")
        assert found is not None and found["Id"] == mine.config_digest, found
        other = "/".join(other_platform())
        result = await rig.run(
            "pull", "multi", "--project", project, "-t", "multi:other", "--platform", other
        )
        found = await inspect(engine, "multi:other")
        assert found is not None and found["Id"] == theirs.config_digest, found
        assert found["Architecture"] == other_platform()[1]

        # docker-archive written by depot (not the engine), and docker load takes it.
        archive = tmp_path / "out" / "image.tar"
        await rig.run(
            "pull", "main", "--project", project, "--output", f"docker-archive:{archive}",
            "-t", "archived:v1",
        )  # fmt: skip
        await engine.docker("load", "--input", str(archive))
        found = await inspect(engine, "archived:v1")
        assert found is not None and found["Id"] == image.config_digest, found

        # `docker build` then `depot save docker://IMAGE`: the engine's image becomes a build.
        for prefix, tag in (("docker://", "from-docker"), ("docker-daemon:", "from-daemon")):
            saved = await rig.run(
                "save", f"{prefix}archived:v1", "--project", project, "--save-tag", tag
            )
            build_id = saved.stdout.decode().strip()
            result = await rig.run(
                "pull", build_id, "--project", project, "--output", f"oci:{tmp_path / tag}",
                "--json",
            )  # fmt: skip
            assert json.loads(result.stdout)["config_digest"] == image.config_digest
        missing = await rig.run("save", "docker://nosuch:v1", "--project", project, check=False)
        assert missing.returncode == 1 and b"nosuch" in missing.stderr, missing.stderr


# -- podman -----------------------------------------------------------------------------------


async def test_pull_into_podman_when_no_docker_engine_answers(
    rig: DepotRig,
    tmp_path: Path,
    podman: Podman,
) -> None:
    src = source(tmp_path)
    image = src.image(LAYER_SIZES, host_platform())
    await rig.save(image, "main")
    # depot runs plain `podman pull`: its settings come from the environment only, so the
    # temp dir the test's own podman calls pass as a flag goes into containers.conf too.
    conf = podman.workdir / "containers.conf"
    conf.write_text(conf.read_text() + f'tmp_dir = "{podman.workdir}/libpod"\n')
    env = rig.env(**podman.env, DOCKER_HOST=f"unix://{podman.workdir}/no-docker.sock")

    result = await rig.run(
        "pull", "main", "--project", rig.project, "-t", "localhost/app:v1", env=env
    )
    assert b"pulling with podman" in result.stderr, result.stderr
    assert result.stdout.decode().split() == ["localhost/app:v1"]
    inspected = await podman.run("image", "inspect", "localhost/app:v1")
    assert inspected.returncode == 0, inspected.stderr.decode(errors="replace")[-2000:]
    details = json.loads(inspected.stdout)[0]
    assert details["Id"] == image.config_digest.removeprefix("sha256:"), details


# -- to disk ----------------------------------------------------------------------------------


async def test_pull_writes_a_verified_oci_layout(rig: DepotRig, tmp_path: Path) -> None:
    src = source(tmp_path)
    image = src.image(LAYER_SIZES, host_platform())
    await rig.save(image, "main")
    index = src.index(platforms=(host_platform(), other_platform()), layer_sizes=LAYER_SIZES)
    await rig.save(index, "multi")
    out = tmp_path / "layout"

    await rig.run("pull", "main", "--project", rig.project, "--output", f"oci:{out}")
    other = "/".join(other_platform())
    await rig.run(
        "pull", "multi", "--project", rig.project, "--output", f"oci:{out}:other",
        "--platform", other,
    )  # fmt: skip
    for name, expected in (("main", image), ("other", index.children[1])):
        found = read_layout(out, name)
        assert found.digest == expected.manifest_digest
        document = json.loads(found.content)
        for descriptor in [document["config"], *document["layers"]]:
            data = read_blob(out, descriptor["digest"])
            assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
    assert json.loads((out / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    assert not list(out.glob(".depot-pull-*"))  # no staging left behind

    # A build without the platform asked for: the error names what it has.
    refused = await rig.run(
        "pull", "multi", "--project", rig.project, "--output", f"oci:{out}",
        "--platform", "linux/s390x", check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert b"no image for linux/s390x" in refused.stderr, refused.stderr


# -- choosing a build -------------------------------------------------------------------------


def drive_picker(rig: DepotRig, out: Path, keys: list[bytes], expect: list[str]) -> tuple[int, str]:
    """Run ``depot pull --output`` on a pseudo-terminal; send ``keys`` (waiting for each of
    ``expect`` after the key at the same index); the exit status and everything shown."""
    command = [*depot_command(), "pull", "--project", rig.project, "--output", f"oci:{out}"]
    child = pexpect.spawn(
        command[0],
        command[1:],
        env=rig.env(),
        dimensions=(30, 160),
        timeout=PTY_SECONDS,
        encoding="utf-8",
        codec_errors="replace",
    )
    seen: list[str] = []
    try:
        child.expect("filter:")
        seen.append(child.before + child.after)
        for i, key in enumerate(keys):
            child.send(key.decode())
            if i < len(expect) and expect[i]:
                child.expect(re.escape(expect[i]))
                seen.append(child.before + child.after)
        child.expect(pexpect.EOF)
        seen.append(child.before)
    finally:
        child.close()
    return child.exitstatus if child.exitstatus is not None else -1, "".join(seen)


async def test_choosing_a_build_on_a_terminal_or_without_one(rig: DepotRig, tmp_path: Path) -> None:
    src = source(tmp_path)
    images = [src.image(LAYER_SIZES, host_platform()) for _ in range(3)]
    tags = ("alpha", "beta", "gamma")
    ids = [await rig.save(image, tag) for image, tag in zip(images, tags, strict=True)]
    # Shown newest first: gamma, beta, alpha.

    # No terminal: an error listing the builds, newest first, and how to name one.
    result = await rig.run("pull", "--project", rig.project, check=False)
    assert result.returncode == 1
    text = result.stderr.decode()
    assert "no terminal" in text and "depot pull BUILD_ID" in text, text
    assert text.index(ids[2]) < text.index(ids[1]) < text.index(ids[0]), text
    assert all(tag in text for tag in tags)
    # The project from depot.json in the current directory, or DEPOT_PROJECT_ID.
    here = tmp_path / "checkout"
    here.mkdir()
    (here / "depot.json").write_text(json.dumps({"id": rig.project}))
    from_file = await rig.run("pull", check=False, cwd=here)
    assert ids[2] in from_file.stderr.decode(), from_file.stderr
    from_env = await rig.run("pull", check=False, env=rig.env(DEPOT_PROJECT_ID=rig.project))
    assert ids[2] in from_env.stderr.decode(), from_env.stderr
    nothing = await rig.run("pull", "main", check=False)
    assert b"no project" in nothing.stderr, nothing.stderr

    # Arrow down once, Enter: the second newest.
    out = tmp_path / "down"
    with trio.fail_after(PTY_SECONDS):
        status, shown = await trio.to_thread.run_sync(
            drive_picker, rig, out, [b"\x1b[B", b"\r"], ["(3 of 3)"]
        )
    assert status == 0, shown
    assert all(build in shown for build in ids), shown
    assert read_layout(out, ids[1]).digest == images[1].manifest_digest

    # Type to filter (one build left), Enter.
    out = tmp_path / "filtered"
    with trio.fail_after(PTY_SECONDS):
        status, shown = await trio.to_thread.run_sync(
            drive_picker, rig, out, [b"alp", b"\r"], ["(1 of 3)"]
        )
    assert status == 0, shown
    assert read_layout(out, ids[0]).digest == images[0].manifest_digest

    # Esc: nothing pulled, a clear message.
    out = tmp_path / "cancelled"
    with trio.fail_after(PTY_SECONDS):
        status, shown = await trio.to_thread.run_sync(drive_picker, rig, out, [b"\x1b"], [])
    assert status == 1, shown
    assert "no build picked" in shown
    assert not out.exists()


# -- the rest of the CLI through the edge -----------------------------------------------------


async def test_login_orgs_projects_and_pull_tokens_through_the_edge(
    rig: DepotRig, tmp_path: Path, skopeo: Skopeo
) -> None:
    src = source(tmp_path)
    image = src.image(LAYER_SIZES, host_platform())
    build = await rig.save(image, "main")
    org = rig.edge.origin.org

    env = {k: v for k, v in rig.env().items() if k not in ("DEPOT_REGISTRY", "DEPOT_TOKEN")}
    # No --token-stdin and no terminal: the token is read from the pipe (no termios error).
    login = await rig.run("login", rig.registry, stdin=f"{rig.token}\n".encode(), env=env)
    assert b"Login succeeded" in login.stdout, login
    listed = await rig.run("builds", "list", "--project", rig.project, env=env)
    assert build.encode() in listed.stdout and b"BUILD ID" in listed.stdout
    version = await rig.run("--version", env=env)
    assert re.fullmatch(rb"depot \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout

    orgs = json.loads((await rig.run("org", "list", "--json")).stdout)["orgs"]
    assert [o["name"] for o in orgs] == [org]
    org_id = orgs[0]["id"]
    assert re.fullmatch(r"org[a-z0-9]{16}", org_id), org_id  # a DNS label: a subdomain
    table = (await rig.run("org", "list")).stdout.decode().splitlines()
    assert table[0].split() == ["ID", "NAME"] and table[1].split() == [org_id, org]

    projects = (await rig.run("projects", "list")).stdout.decode()
    assert rig.project in projects and "web" in projects
    by_id = json.loads((await rig.run("projects", "list", "--org", org_id, "--json")).stdout)
    assert [p["id"] for p in by_id["projects"]] == [rig.project]

    made = await rig.run("pull-token", "--project", rig.project, "--expires", "10m")
    line = made.stdout.decode().strip()
    words = shlex.split(line)
    assert words[:4] == ["kubectl", "create", "secret", "docker-registry"], line
    flags = dict(w.removeprefix("--").split("=", 1) for w in words[5:])
    assert flags["docker-server"] == rig.edge.host and flags["docker-username"] == "x-token"
    assert b"valid until" in made.stderr
    pull_token = flags["docker-password"]
    # The new token pulls the build through the edge, and only pulls.
    raw = await skopeo.run(
        "inspect", "--raw", "--tls-verify=false", "--creds", f"x-token:{pull_token}",
        rig.edge.ref(rig.project, build),
    )  # fmt: skip
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == image.manifest_digest
    pushed = await skopeo.attempt(
        "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
        "--src-creds", f"x-token:{pull_token}", "--dest-creds", f"x-token:{pull_token}",
        rig.edge.ref(rig.project, build), rig.edge.ref(rig.project, "pushed"),
    )  # fmt: skip
    assert pushed.returncode != 0
