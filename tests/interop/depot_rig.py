"""A project on a real origin, reached through a real edge, and the ``depot`` CLI as a process
pointed at the edge (the one URL a user has): for the ``depot pull`` and CI action tests.

``DepotRig.save(image_or_index, save_tags)`` writes the image as an OCI layout and saves it
with ``depot save`` through the edge (the builds API is forwarded by the edge to origin).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tests.integration.test_depot_cli import depot_command
from tests.interop.conftest import AuthEdge
from tests.interop.oci_layout import Image, ImageIndex, LayoutWriter

COMMAND_SECONDS = 180
LAYER_SIZES = (1000, 200_000)


@dataclass
class DepotRig:
    edge: AuthEdge
    project: str
    home: Path
    tmp: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def registry(self) -> str:
        return f"http://{self.edge.host}"

    @property
    def token(self) -> str:
        return self.edge.origin.org_token

    def env(self, **extra: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
        environ.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"))
        environ.update(DEPOT_REGISTRY=self.registry, DEPOT_TOKEN=self.token)
        environ.update(self.extra_env)
        environ.update(extra)
        return environ

    async def run(
        self,
        *args: str | Path,
        stdin: bytes = b"",
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        command = [*depot_command(), *map(str, args)]
        with trio.fail_after(COMMAND_SECONDS):
            result = await trio.run_process(
                command,
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env if env is not None else self.env(),
                cwd=cwd,
                start_new_session=True,  # no controlling terminal, as in CI
            )
        output = result.stdout + result.stderr
        assert self.token.encode() not in output, "depot printed the token"
        if check:
            assert result.returncode == 0, (
                f"depot {' '.join(map(str, args))} exited {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')[-3000:]}\n"
                f"edge log tail:\n{self.edge.log_tail(20)}"
            )
        return result

    async def save(self, image: Image | ImageIndex, *save_tags: str) -> str:
        """Save ``image`` (written here as a layout) as a build; its build id."""
        root = self.tmp / f"layout-{len(list(self.tmp.glob('layout-*')))}"
        writer = LayoutWriter(root)
        _copy_into(writer, image, self.tmp)
        flags = [f"--save-tag={tag}" for tag in save_tags]
        result = await self.run("save", root, "--project", self.project, *flags)
        return result.stdout.decode().strip()


def _copy_into(writer: LayoutWriter, image: Image | ImageIndex, tmp: Path) -> None:
    """Tag ``image`` (whose blobs are in the source layout ``tmp/source``) in ``writer``."""
    source = tmp / "source" / "blobs" / "sha256"
    for blob in source.iterdir():
        target = writer.root / "blobs" / "sha256" / blob.name
        if not target.exists():
            target.write_bytes(blob.read_bytes())
    writer.tag(image, "latest")


async def make_rig(edge: AuthEdge, tmp: Path) -> DepotRig:
    created = await edge.origin.cli("project", "create", "--org", edge.origin.org, "web")
    home = tmp / "home"
    home.mkdir()
    return DepotRig(edge, created["project_id"], home, tmp)


def source(tmp: Path) -> LayoutWriter:
    """The layout images are generated into (``DepotRig.save`` copies from it)."""
    return LayoutWriter(tmp / "source")


def read_json(data: bytes) -> dict[str, object]:
    document: dict[str, object] = json.loads(data)
    return document
