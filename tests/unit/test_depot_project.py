"""Which project and build ``depot`` means (depot/project.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from depot.project import ProjectError, resolve_build, resolve_project, split_build_reference


def test_project_from_flag_then_environment_then_depot_json(tmp_path: Path) -> None:
    (tmp_path / "depot.json").write_text('{"id": "fromfile0001"}')
    env = {"DEPOT_PROJECT_ID": "fromenv00001"}
    assert resolve_project("fromflag0001", env, tmp_path) == "fromflag0001"
    assert resolve_project(None, env, tmp_path) == "fromenv00001"
    assert resolve_project(None, {}, tmp_path) == "fromfile0001"
    with pytest.raises(ProjectError, match="no project"):
        resolve_project(None, {}, tmp_path / "elsewhere")
    (tmp_path / "depot.json").write_text('{"name": "x"}')
    with pytest.raises(ProjectError, match="no project id"):
        resolve_project(None, {}, tmp_path)
    (tmp_path / "depot.json").write_text("{")
    with pytest.raises(ProjectError, match="cannot read"):
        resolve_project(None, {}, tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("b1b2b3b4b5b6", (None, "b1b2b3b4b5b6")),
        ("main", (None, "main")),
        ("p1p2p3p4p5p6:b1b2b3b4b5b6", ("p1p2p3p4p5p6", "b1b2b3b4b5b6")),
        ("sha256:" + "a" * 64, (None, "sha256:" + "a" * 64)),
    ],
)
def test_build_references(text: str, expected: tuple[str | None, str]) -> None:
    assert split_build_reference(text) == expected


@pytest.mark.parametrize("text", ["", ":b", "p:"])
def test_malformed_build_references(text: str) -> None:
    with pytest.raises(ProjectError):
        split_build_reference(text)


def test_build_and_project_together(tmp_path: Path) -> None:
    assert resolve_build("p1:b1", None, {}) == ("p1", "b1")
    assert resolve_build("p1:b1", "p1", {}) == ("p1", "b1")
    with pytest.raises(ProjectError, match="not p2"):
        resolve_build("p1:b1", "p2", {})
    assert resolve_build("b1", None, {"DEPOT_PROJECT_ID": "p3"}) == ("p3", "b1")
