"""Runs a composite GitHub Action's steps as the runner does, for tests.

What the runner does for a composite action, and this does too: each ``run:`` step with
``shell: bash`` becomes a script file run as ``bash --noprofile --norc -eo pipefail FILE``;
``${{ ... }}`` expressions in ``env:`` values, ``run:`` and ``outputs.*.value`` are
substituted first (``inputs.*`` with the action's defaults, ``github.action_path``,
``steps.<id>.outputs.*``, ``env.*``); every step gets fresh ``GITHUB_OUTPUT``, ``GITHUB_ENV``,
``GITHUB_PATH`` and ``GITHUB_STEP_SUMMARY`` files, read back after it (``name=value`` and
``name<<DELIMITER`` blocks; paths prepended to ``PATH`` for the steps after it). An
expression it does not know fails the test rather than being guessed at.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import yaml

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
STEP_SECONDS = 300


@dataclass
class StepResult:
    name: str
    returncode: int
    stdout: str
    stderr: str
    output_file: str  # the GITHUB_OUTPUT file's text
    outputs: dict[str, str]


@dataclass
class ActionRun:
    steps: list[StepResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return all(step.returncode == 0 for step in self.steps)

    def log(self) -> str:
        return "\n".join(
            f"--- {s.name} (exit {s.returncode})\n{s.stdout}\n{s.stderr}" for s in self.steps
        )


def load_action(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    assert document["runs"]["using"] == "composite", document["runs"]
    return document


def parse_file_commands(text: str) -> dict[str, str]:
    """``GITHUB_OUTPUT`` / ``GITHUB_ENV`` content: ``name=value`` lines and
    ``name<<DELIMITER`` … ``DELIMITER`` blocks."""
    found: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, _, delimiter = line.partition("<<")
            block: list[str] = []
            while i < len(lines) and lines[i] != delimiter:
                block.append(lines[i])
                i += 1
            assert i < len(lines), f"unterminated {name}<<{delimiter} block"
            i += 1
            found[name] = "\n".join(block)
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not a file command: {line!r}"
        found[name] = value
    return found


class Context:
    def __init__(self, inputs: dict[str, str], action_path: Path, env: dict[str, str]) -> None:
        self.inputs = inputs
        self.action_path = action_path
        self.env = env
        self.steps: dict[str, dict[str, str]] = {}

    def value(self, expression: str) -> str:
        parts = expression.split(".")
        if parts[0] == "inputs" and len(parts) == 2:
            return self.inputs[parts[1]]
        if parts == ["github", "action_path"]:
            return str(self.action_path)
        if parts[0] == "env" and len(parts) == 2:
            return self.env.get(parts[1], "")
        if parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
            return self.steps.get(parts[1], {}).get(parts[3], "")
        raise AssertionError(f"the runner emulation does not know ${{{{ {expression} }}}}")

    def substitute(self, text: str) -> str:
        return EXPRESSION.sub(lambda m: self.value(m.group(1)), text)


async def run_action(
    action_file: Path,
    with_inputs: dict[str, str],
    env: dict[str, str],
    workdir: Path,
) -> ActionRun:
    """Run the composite action at ``action_file`` with ``with_inputs`` (its ``with:``) in an
    environment ``env`` (the job's), files under ``workdir``; stops after a failing step."""
    action = load_action(action_file)
    declared = action.get("inputs") or {}
    unknown = set(with_inputs) - set(declared)
    assert not unknown, f"inputs the action does not declare: {unknown}"
    inputs = {}
    for name, spec in declared.items():
        if name in with_inputs:
            inputs[name] = with_inputs[name]
        else:
            assert not (spec or {}).get("required"), f"required input {name} not given"
            inputs[name] = str((spec or {}).get("default", ""))
    job_env = dict(env)
    context = Context(inputs, action_file.parent, job_env)
    run = ActionRun()
    for i, step in enumerate(action["runs"]["steps"]):
        assert step.get("shell") == "bash", f"step {i} runs no bash: {step}"
        assert "if" not in step, "the runner emulation does not evaluate if:"
        result = await _run_step(i, step, context, job_env, workdir)
        run.steps.append(result)
        if step.get("id"):
            context.steps[step["id"]] = result.outputs
        if result.returncode != 0:
            return run
    for name, spec in (action.get("outputs") or {}).items():
        run.outputs[name] = context.substitute(str(spec["value"]))
    return run


async def _run_step(
    index: int, step: dict[str, Any], context: Context, job_env: dict[str, str], workdir: Path
) -> StepResult:
    files = {
        name: workdir / f"step{index}-{name.lower()}"
        for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY")
    }
    for path in files.values():
        path.write_text("")
    script = workdir / f"step{index}.sh"
    script.write_text(context.substitute(step["run"]))
    env = dict(job_env)
    env.update({k: context.substitute(str(v)) for k, v in (step.get("env") or {}).items()})
    env.update({name: str(path) for name, path in files.items()})
    env["GITHUB_ACTION_PATH"] = str(context.action_path)
    with trio.fail_after(STEP_SECONDS):
        done = await trio.run_process(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            env=env,
            cwd=job_env.get("GITHUB_WORKSPACE") or str(workdir),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output_file = files["GITHUB_OUTPUT"].read_text()
    job_env.update(parse_file_commands(files["GITHUB_ENV"].read_text()))
    for line in reversed(files["GITHUB_PATH"].read_text().splitlines()):
        if line.strip():
            job_env["PATH"] = f"{line.strip()}{os.pathsep}{job_env.get('PATH', '')}"
    return StepResult(
        str(step.get("name") or f"step {index}"),
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
        output_file,
        parse_file_commands(output_file),
    )
