"""What ``depot-registry --help`` and friends tell a person: a real description (not an
internal docstring), no internal commands, a help text on ``token create --kind``, and
``--version`` on both CLIs."""

from __future__ import annotations

import argparse

import pytest

from core.cli import build_parser, main
from depot.main import main as depot_main


def subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_the_description_says_what_the_tool_does() -> None:
    text = build_parser().format_help()
    assert "Operate a depot registry" in text
    assert "entry-point" not in text and "registrar" not in text.lower()
    assert "depot-registry COMMAND --help" in text


def test_internal_commands_are_not_listed() -> None:
    text = subparser(build_parser(), "origin").format_help()
    assert "SUPPRESS" not in text
    assert "worker" not in text
    # ... and still parse: `origin serve --workers N` starts them.
    args = build_parser().parse_args(["origin", "worker", "--fd", "3"])
    assert args.command == "worker" and args.fd == 3
    edge = subparser(build_parser(), "edge").format_help()
    assert "worker" not in edge and "serve" in edge and "cache" in edge
    args = build_parser().parse_args(["edge", "worker", "--fd", "3", "--upstream", "http://o"])
    assert args.command == "worker" and args.fd == 3


def test_token_kinds_are_explained() -> None:
    parser = subparser(build_parser(), "token", "create")
    kind = next(a for a in parser._actions if a.dest == "kind")
    assert kind.help is not None
    for name in ("org", "pull", "project", "user", "edge"):
        assert f"{name}:" in kind.help


@pytest.mark.parametrize(
    ("entry", "program"), [(main, "depot-registry"), (depot_main, "depot")], ids=["ops", "user"]
)
def test_version(entry: object, program: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        entry(["--version"])  # type: ignore[operator]
    assert exited.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{program} ") and out.split()[1][0].isdigit(), out
