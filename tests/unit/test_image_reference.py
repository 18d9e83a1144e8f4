"""Image references read as Docker reads them (core/image_reference.py)."""

from __future__ import annotations

import pytest

from core.digest import parse_digest
from core.image_reference import (
    ImageReferenceInvalid,
    normalise_registry,
    parse_image_reference,
)
from core.reference import Tag

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
        ("team/app:v1", "docker.io", "team/app", "v1", None),
        ("docker.io/library/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("index.docker.io/team/app:v1", "docker.io", "team/app", "v1", None),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("Registry.Example/a/b/c:x", "registry.example", "a/b/c", "x", None),
        (f"ghcr.io/o/app@{DIGEST}", "ghcr.io", "o/app", None, DIGEST),
        (f"ghcr.io/o/app:v1@{DIGEST}", "ghcr.io", "o/app", "v1", DIGEST),
        ("[::1]:5000/app:v1", "[::1]:5000", "app", "v1", None),
    ],
)
def test_parsed_as_docker_does(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    parsed = parse_image_reference(text)
    assert parsed.registry == registry
    assert parsed.repository.value == repository
    assert parsed.tag == (Tag(tag) if tag else None)
    assert parsed.digest == (parse_digest(digest) if digest else None)
    assert parse_image_reference(str(parsed)) == parsed


def test_docker_hub_is_reached_at_its_api_host() -> None:
    assert parse_image_reference("team/app").api_host == "registry-1.docker.io"
    assert parse_image_reference("r.example:5000/app").api_host == "r.example:5000"
    assert normalise_registry("Registry-1.Docker.IO") == "docker.io"


def test_no_default_tag_when_asked() -> None:
    assert parse_image_reference("r.example/app", default_tag=None).tag is None


@pytest.mark.parametrize(
    "text",
    ["", " ", "a b", "Team/App", "r.example/app:bad tag", "r.example/app@sha256:xyz",
     "r.example/app:-x", "r.example//app", "r.example/app:"],
)  # fmt: skip
def test_refused(text: str) -> None:
    with pytest.raises(ImageReferenceInvalid):
        parse_image_reference(text)
