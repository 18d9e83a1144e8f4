"""``depot-registry edge serve``'s mirror flags, through the real parser (the interop tests run
the edge in-process; this is its command line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import MirrorSettings
from core.cli import build_parser, main
from edge import cli


def serve_args(tmp_path: Path, *flags: str) -> list[str]:
    token = tmp_path / "edge.token"
    token.write_text("dpe_test\n")
    return [
        *("edge", "serve", "--listen", "127.0.0.1:0", "--upstream", "http://origin.example"),
        *("--upstream-token-file", str(token), "--cache-dir", str(tmp_path / "cache")),
        *flags,
    ]


def test_mirror_flags_make_mirrors(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[[mirrors]]\nname = "ghcr.io"\nurl = "https://ghcr.io"\n')
    args = build_parser([cli.register]).parse_args(
        serve_args(
            tmp_path,
            *("--config", str(config)),
            *("--mirror", "docker.io=https://registry-1.docker.io"),
            *("--mirror-access", "docker.io=anonymous", "--mirror-access", "ghcr.io=anonymous"),
        )
    )
    settings = cli._settings(args)
    assert settings.mirrors == (
        MirrorSettings("ghcr.io", "https://ghcr.io", access="anonymous"),
        MirrorSettings("docker.io", "https://registry-1.docker.io", access="anonymous"),
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--mirror", "dockerhub=https://registry-1.docker.io"), "with a dot"),
        (("--mirror", "docker.io"), "NAME=VALUE"),
        (
            ("--mirror", "docker.io=https://h.example", "--mirror-access", "docker.io=open"),
            "access",
        ),
        (("--mirror-access", "docker.io=anonymous"), "no mirror named"),
    ],
)
def test_bad_mirror_flags_exit_2_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    assert main(serve_args(tmp_path, *flags), [cli.register]) == 2
    assert message in capsys.readouterr().err
