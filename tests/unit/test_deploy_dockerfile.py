"""The image's Dockerfile (``deploy/Dockerfile``), checked statically.

No image can be built here (no network for the base image), so these tests read the
instructions: what they copy exists and is all the wheel needs, the context admits it,
the user is not root and is the one the Kubernetes manifests run as, and the entrypoint,
volumes and ports are the ones the manifests use.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy_local import DEPLOY, KUBERNETES, OVERLAYS
from tests.kustomize import pod_containers, pod_spec, render

ROOT = DEPLOY.parent
Instruction = tuple[str, str]


def instructions(path: Path) -> list[Instruction]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        pending += " " + stripped.removesuffix("\\").strip() if pending else stripped
        if stripped.endswith("\\"):
            pending = pending.removesuffix("\\")
            continue
        keyword, _, rest = pending.partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "a continued line runs off the end"
    return result


DOCKERFILE = instructions(DEPLOY / "Dockerfile")


def stages() -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for keyword, rest in DOCKERFILE:
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def values(keyword: str, stage: list[Instruction] | None = None) -> list[str]:
    return [rest for k, rest in (stage or DOCKERFILE) if k == keyword]


def pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_runtime_is_slim_python_3_11_from_a_separate_build_stage() -> None:
    args = dict(a.split("=", 1) for a in values("ARG") if "=" in a)
    build, runtime = stages()
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], values("FROM", runtime)[0])
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    assert values("FROM", build)[0].endswith(" AS build")
    assert any("pip wheel" in run for run in values("RUN", build))
    assert any("--no-index" in run and "from=build" in run for run in values("RUN", runtime))


def test_build_stage_copies_every_package_of_the_wheel() -> None:
    project = pyproject()
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set()
    for copy in values("COPY", stages()[0]):
        sources = copy.split()[:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            copied.add(source.rstrip("/"))
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= copied


def test_the_build_context_admits_what_is_copied_and_nothing_else() -> None:
    rules = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        verdict = True
        for rule in rules:
            negated = rule.startswith("!")
            pattern = rule.removeprefix("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                verdict = negated
        return verdict

    for copy in values("COPY", stages()[0]):
        for source in copy.split()[:-1]:
            assert included(source.rstrip("/")), source
            assert included(source.rstrip("/") + "/x.py") or Path(ROOT / source).is_file()
    for private in (".venv", ".git", "data", "tests", "deploy", "core/__pycache__"):
        assert not included(private), private


def test_runs_as_the_non_root_user_the_manifests_expect() -> None:
    (user,) = values("USER", stages()[-1])
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) != 0
    for overlay in OVERLAYS:
        for obj in render(KUBERNETES / "overlays" / overlay):
            spec = pod_spec(obj)
            if spec and "depot-registry" in pod_containers(obj)[0]["image"]:
                security = spec["securityContext"]
                assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))


def test_entrypoint_is_the_cli_and_volumes_and_ports_are_the_manifests() -> None:
    (entrypoint,) = values("ENTRYPOINT")
    assert json.loads(entrypoint) == ["depot-registry"]
    assert "depot-registry" in pyproject()["project"]["scripts"]
    (volume,) = values("VOLUME")
    volumes = set(json.loads(volume))
    exposed = {int(port) for line in values("EXPOSE") for port in line.split()}
    used_paths, used_ports = set(), set()
    for overlay in OVERLAYS:
        for obj in render(KUBERNETES / "overlays" / overlay):
            for container in pod_containers(obj):
                if "command" in container or "depot-registry" not in container["image"]:
                    continue
                args = container["args"]
                flag = "--data-dir" if args[0] == "origin" else "--cache-dir"
                used_paths.add(args[args.index(flag) + 1])
                used_ports |= {p["containerPort"] for p in container["ports"]}
    assert used_paths == volumes
    assert used_ports == exposed


@pytest.mark.parametrize("keyword", ["ADD", "ONBUILD"])
def test_no_remote_or_deferred_instructions(keyword: str) -> None:
    assert values(keyword) == []
