"""``depot-registry edge serve``'s mirror flags, through the real parser (the interop tests run
the edge in-process; this is its command line)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from config.settings import MirrorSettings
from core.cli import build_parser, main
from edge import cli
from edge.cache.store import EdgeCache


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


@pytest.mark.parametrize("command", ["stats", "purge"])
def test_cache_commands_refuse_a_directory_without_a_cache(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "cahce"
    assert main(["edge", "cache", command, "--cache-dir", str(typo)], [cli.register]) == 2
    assert "no edge cache in" in capsys.readouterr().err
    assert not typo.exists()  # nothing created


def test_cache_stats_reads_an_edges_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    EdgeCache.open(tmp_path / "cache", 1 << 20).close()  # as an edge leaves it
    assert (
        main(
            ["edge", "cache", "stats", "--cache-dir", str(tmp_path / "cache"), "--json"],
            [cli.register],
        )
        == 0
    )
    assert '"entries": 0' in capsys.readouterr().out


def test_workers_get_the_serve_flags_they_were_started_with(tmp_path: Path) -> None:
    flags = ("--workers", "3", "--mirror", "docker.io=https://registry-1.docker.io")
    flags += ("--mirror", "ghcr.io=https://ghcr.io", "--insecure-registry", "10.0.0.1:5000")
    flags += ("--cache-size", "2GiB", "--region", "eu-1")
    parser = build_parser([cli.register])
    served = parser.parse_args(serve_args(tmp_path, *flags))
    worker = parser.parse_args(["edge", "worker", "--fd", "3", *cli._flags(served)])
    settings = cli._settings(served)
    assert settings.workers == 3 and len(settings.mirrors) == 2
    # All but the socket (a worker is given it) and the count (a worker starts none).
    assert cli._settings(worker) == replace(settings, workers=1, listen="127.0.0.1:5001")
