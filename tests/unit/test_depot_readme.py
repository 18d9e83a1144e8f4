"""``depot/README.md`` shows only what exists: every ``depot`` command in its shell blocks
parses with the real CLI, and its workflow uses the GitHub Action with the inputs the action
declares (every required one) and its ``build-id`` output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from depot.main import build_parser
from tests.github_actions import load_action
from tests.unit.test_deploy_readme import shell_commands

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "depot" / "README.md"
ACTION = ROOT / "deploy" / "github-action" / "action.yml"


def depot_arguments() -> list[list[str]]:
    found = []
    for words in shell_commands(README):
        if words and words[0] == "depot":
            found.append(words[1:])
    return found


def test_the_readme_shows_the_commands() -> None:
    commands = {args[0] for args in depot_arguments() if args}
    assert {"login", "save", "pull", "builds", "org", "projects", "pull-token"} <= commands


@pytest.mark.parametrize("arguments", depot_arguments(), ids=" ".join)
def test_depot_commands_parse(arguments: list[str]) -> None:
    try:
        build_parser().parse_args(arguments)
    except SystemExit as exc:  # --version exits 0 after printing
        assert exc.code == 0, f"depot refuses: {arguments}"


def test_the_workflow_uses_the_action_as_declared() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1
    workflow = yaml.safe_load(blocks[0])
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    uses = [s for s in steps if str(s.get("uses", "")).endswith("/deploy/github-action@main")]
    assert len(uses) == 1
    action = load_action(ACTION)
    given = set(uses[0]["with"])
    assert given <= set(action["inputs"])
    assert {n for n, spec in action["inputs"].items() if spec.get("required")} <= given
    later = " ".join(str(s.get("run", "")) for s in steps)
    assert f"steps.{uses[0]['id']}.outputs.build-id" in later
    assert "depot pull" in later and "depot push" in later
