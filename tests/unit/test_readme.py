"""The top-level README says only what is true: every ``depot-registry`` and ``depot``
command in its shell blocks parses with the real CLIs, the operator commands use the data
directory ``./scripts/run`` keeps origin's data in, and the layout and settings it names
exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.cli import build_parser
from depot.main import build_parser as depot_parser
from tests.unit.test_deploy_readme import shell_commands

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN = ROOT / "scripts" / "run"


def arguments(program: str) -> list[list[str]]:
    found = []
    for words in shell_commands(README):
        for i, word in enumerate(words):
            if word == program or word.endswith(f"/bin/{program}"):
                # "..." stands for the flags shown before it
                found.append([w for w in words[i + 1 :] if w != "..."])
                break
    return found


def test_the_readme_shows_the_commands() -> None:
    operator = {" ".join(a[:2]) for a in arguments("depot-registry")}
    assert {"org create", "token create", "user create", "trust create", "trust list"} <= operator
    assert {"save", "builds", "pull", "login"} <= {a[0] for a in arguments("depot")}


@pytest.mark.parametrize("words", arguments("depot-registry"), ids=" ".join)
def test_operator_commands_parse(words: list[str]) -> None:
    try:
        build_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"depot-registry refuses: {words}")


@pytest.mark.parametrize("words", arguments("depot"), ids=" ".join)
def test_user_commands_parse(words: list[str]) -> None:
    try:
        depot_parser().parse_args(words)
    except SystemExit as exc:
        assert exc.code == 0, f"depot refuses: {words}"


def test_operator_commands_use_the_run_scripts_data_dir() -> None:
    """Followed literally, a command on another directory made a second, empty registry."""
    assert '"$data_dir/origin"' in RUN.read_text() or "origin_dir=" in RUN.read_text()
    for words in arguments("depot-registry"):
        if "--data-dir" in words:
            value = words[words.index("--data-dir") + 1]
            assert value == "./data/origin" or value.startswith("/var/lib/"), words


def test_the_readme_says_where_the_clis_are_and_how_to_run_them() -> None:
    text = README.read_text()
    assert ".venv/bin" in text
    for variable in re.findall(r"^#\s+(DEPOT_[A-Z_]+)", RUN.read_text(), flags=re.MULTILINE):
        assert variable in text, f"scripts/run reads {variable}; the README never says so"
    for section in ("## TLS", "## A TLS-terminating load balancer", "## Troubleshooting"):
        assert section in text


def test_the_layout_names_what_exists() -> None:
    text = README.read_text()
    layout = text[text.index("## Layout") :]
    assert "(later)" not in layout
    listed = re.findall(r"^([a-z]+)/ ", layout, flags=re.MULTILINE)
    assert listed, "no layout block"
    for directory in listed:
        assert (ROOT / directory).is_dir(), f"README's layout names {directory}/"
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(listed), f"missing from the layout: {packages - set(listed)}"
