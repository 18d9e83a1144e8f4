"""``deploy/README.md`` names only commands and files that exist: every ``depot-registry``
command in its shell blocks parses with the real CLI, and every ``deploy/...`` path in them
is in the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from core.cli import build_parser
from tests.deploy_local import DEPLOY

README = DEPLOY / "README.md"


def shell_commands(readme: Path = README) -> list[list[str]]:
    """Each simple command of the README's ```sh blocks, as words (pipes, &&, ; and &
    separate commands; backslash-newlines join lines)."""
    blocks = re.findall(r"```sh\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words: list[str] = []
            for word in lexer:
                if set(word) <= set("|&;"):
                    commands.append(words)
                    words = []
                else:
                    words.append(word)
            commands.append(words)
    return [c for c in commands if c]


def depot_registry_arguments() -> list[list[str]]:
    found = []
    for words in shell_commands():
        for i, word in enumerate(words):
            if word == "depot-registry" or word.endswith("/bin/depot-registry"):
                found.append(words[i + 1 :])
                break
    return found


def test_the_readme_shows_the_operator_commands() -> None:
    commands = [" ".join(args[:2]) for args in depot_registry_arguments()]
    assert {"org create", "token create"} <= set(commands)
    assert len(commands) >= 6


@pytest.mark.parametrize("arguments", depot_registry_arguments(), ids=" ".join)
def test_depot_registry_commands_parse(arguments: list[str]) -> None:
    try:
        build_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"depot-registry refuses: {arguments}")


def test_deploy_paths_exist() -> None:
    root = DEPLOY.parent
    paths = [
        word.split("=")[-1]
        for words in shell_commands()
        for word in words
        if "deploy/" in word and "://" not in word
    ]
    assert paths
    for path in paths:
        assert list(root.glob(path)), f"{path} does not exist"
