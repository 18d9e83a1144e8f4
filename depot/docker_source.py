"""``depot save docker://IMAGE`` (or ``docker-daemon:IMAGE``): an image of the local Docker
engine, exported as a ``docker save`` tar (``GET /images/{name}/get``) into a temporary
directory and read by :mod:`depot.image_source` like any other tar, so ``docker build`` then
``depot save`` is a two-line CI job."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from depot.engine import DockerEngine

PREFIXES = ("docker://", "docker-daemon:")
#: Bound of an export (images are local; a slow disk still finishes in this).
EXPORT_SECONDS = 1800


def engine_image(source: str) -> str | None:
    """The engine's image name when ``source`` names one, else None (a path)."""
    for prefix in PREFIXES:
        if source.startswith(prefix) and len(source) > len(prefix):
            return source[len(prefix) :]
    return None


def export(name: str, directory: Path) -> Path:
    """The image ``name`` of the engine (``DOCKER_HOST``) as a tar in ``directory``."""
    destination = directory / "image.tar"

    async def run() -> None:
        with trio.fail_after(EXPORT_SECONDS):
            async with DockerEngine.open(os.environ) as engine:
                await engine.ping()
                await engine.export(name, destination)

    trio.run(run)
    return destination
