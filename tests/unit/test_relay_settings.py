"""The relay's edge settings: ``--insecure-registry`` (repeatable) and ``--relay-max-jobs``
flags, and the same from the environment."""

from __future__ import annotations

import argparse

import pytest

from edge import cli
from edge.relay.plan import parse_insecure


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="component"))
    return parser.parse_args(["edge", "serve", *argv])


def test_flags() -> None:
    settings = cli._settings(
        parse("--insecure-registry", "a.example:5000", "--insecure-registry", "b.example",
              "--relay-max-jobs", "3")
    )  # fmt: skip
    assert parse_insecure(settings.insecure_registries) == {"a.example:5000", "b.example"}
    assert settings.relay_max_jobs == 3
    defaults = cli._settings(parse())
    assert defaults.insecure_registries == "" and defaults.relay_max_jobs == 8


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOT_EDGE_INSECURE_REGISTRIES", "c.example")
    monkeypatch.setenv("DEPOT_EDGE_RELAY_CHUNK_BYTES", "32MiB")
    monkeypatch.setenv("DEPOT_EDGE_RELAY_GRACE_SECONDS", "2s")
    settings = cli._settings(parse())
    assert parse_insecure(settings.insecure_registries) == {"c.example"}
    assert settings.relay_chunk_bytes == 32 * 1024 * 1024
    assert settings.relay_grace_seconds == 2
