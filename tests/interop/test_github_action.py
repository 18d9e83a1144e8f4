"""The GitHub Actions composite action (``deploy/github-action/action.yml``) run as the runner
runs it (:mod:`tests.github_actions`) against a real edge in front of a real origin: it logs
in, saves an OCI layout as a build with save-tags, writes ``build-id=<id>`` to
``$GITHUB_OUTPUT``, and a later step of the same job pulls that build with the credentials
the action left behind. With ``save: false`` it only installs and logs in.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from tests.github_actions import load_action, run_action
from tests.interop.depot_rig import LAYER_SIZES, make_rig, source
from tests.interop.oci_layout import read_layout
from tests.interop.test_auth_clients import host_platform

if TYPE_CHECKING:
    from tests.interop.conftest import AuthEdge

pytestmark = pytest.mark.interop

ACTION = Path(__file__).resolve().parents[2] / "deploy" / "github-action" / "action.yml"
TIMEOUT = 300


def job_env(tmp_path: Path) -> dict[str, str]:
    """What a job step sees: the runner's variables, depot on PATH, no DEPOT_* settings."""
    for name in ("runner-home", "runner-temp", "workspace"):
        (tmp_path / name).mkdir()
    bin_dir = str(Path(sys.executable).parent)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path / "runner-home"),
        "RUNNER_TEMP": str(tmp_path / "runner-temp"),
        "GITHUB_WORKSPACE": str(tmp_path / "workspace"),
        "GITHUB_ACTIONS": "true",
        "CI": "true",
        "LANG": "C.UTF-8",
    }


def test_the_action_declares_what_the_docs_say() -> None:
    action = load_action(ACTION)
    assert set(action["inputs"]) == {"project", "save", "save-tag", "image", "registry", "token"}
    assert action["inputs"]["save"]["default"] == "true"
    assert action["inputs"]["registry"]["required"] and action["inputs"]["token"]["required"]
    assert action["outputs"]["build-id"]["value"] == "${{ steps.save.outputs.build-id }}"
    for step in action["runs"]["steps"]:
        # Inputs reach scripts through env only: never pasted into the script text.
        assert "inputs." not in step["run"], step["name"]


async def test_the_action_saves_a_build_that_a_later_step_pulls(
    auth_edge: AuthEdge, tmp_path: Path
) -> None:
    rig = await make_rig(auth_edge, tmp_path)
    src = source(tmp_path)
    image = src.image(LAYER_SIZES, host_platform())
    src.tag(image, "ci")
    env = job_env(tmp_path)
    workdir = tmp_path / "runner"
    workdir.mkdir()

    with trio.fail_after(TIMEOUT):
        run = await run_action(
            ACTION,
            {
                "registry": rig.registry,
                "token": rig.token,
                "project": rig.project,
                "image": str(src.root),
                "save-tag": "main, ci-42\nnightly",
            },
            env,
            workdir,
        )
    assert run.succeeded, run.log()
    assert rig.token not in run.log()
    save = run.steps[-1]
    lines = [line for line in save.output_file.splitlines() if line.startswith("build-id=")]
    assert len(lines) == 1 and re.fullmatch(r"build-id=[a-z0-9]{12}", lines[0]), save.output_file
    build_id = lines[0].removeprefix("build-id=")
    assert run.outputs == {"build-id": build_id}

    listed = await rig.run("builds", "list", "--project", rig.project, "--json")
    builds = json.loads(listed.stdout)["builds"]
    assert [(b["id"], b["save_tags"]) for b in builds] == [(build_id, ["main", "ci-42", "nightly"])]

    # A later step of the job: `depot pull` with what the action's login left in HOME.
    out = tmp_path / "pulled"
    pulled = await rig.run(
        "pull", build_id, "--project", rig.project, "--output", f"oci:{out}", "-q", env=env
    )
    assert pulled.stdout.decode().split() == [f"{rig.project}:{build_id}"]
    assert read_layout(out, build_id).digest == image.manifest_digest

    # save: false installs and logs in, saves nothing, outputs an empty build id.
    again = tmp_path / "runner-again"
    again.mkdir()
    with trio.fail_after(TIMEOUT):
        quiet = await run_action(
            ACTION, {"registry": rig.registry, "token": rig.token, "save": "false"}, env, again
        )
    assert quiet.succeeded, quiet.log()
    assert quiet.outputs == {"build-id": ""}
    listed = await rig.run("builds", "list", "--project", rig.project, "--json")
    assert len(json.loads(listed.stdout)["builds"]) == 1
