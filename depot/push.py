"""Pushing a :class:`~depot.image_source.SourceImage` to a repository, and ``depot save``.

Through the registry client (:class:`core.client.registry.RegistryClient`). Blobs first,
only those the registry lacks (``HEAD`` each; a 200 skips it), each uploaded monolithically:
``POST /blobs/uploads/`` then one ``PUT ?digest=`` whose body streams from disk 1 MiB at a time
(a few uploads run at once). Then the manifests, children of an index before the index (by
digest), and the top manifest under every reference asked for. The registry's errors become
:class:`~depot.api.ApiError` with what was being done and the registry's own message.

``depot save`` creates the build (``POST /api/v1/projects/{id}/builds``), pushes the image
to the project's own repository ``<project-id>`` under the build id and each save-tag,
prints the build id and writes the metadata file. If the push fails, the build it created is
deleted (best effort), so no build without an image is left behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from core.client.registry import RegistryClient
from core.client.uploads import BlobSource
from core.digest import parse_digest
from core.errors import RegistryError, Unavailable
from core.reference import RepositoryName, parse_manifest_reference, parse_repository_name
from depot import api
from depot.api import ApiError
from depot.image_source import CHUNK_SIZE, Blob, Manifest, SourceImage

#: Blob uploads running at once.
UPLOAD_CONCURRENCY = 4
#: Attempts per blob upload: a failure in transit (reset, timeout) starts a new upload once.
UPLOAD_ATTEMPTS = 2


@dataclass
class PushStats:
    uploaded: int = 0
    skipped: int = 0
    uploaded_bytes: int = 0
    manifests: int = 0


@dataclass(frozen=True)
class SavedBuild:
    build_id: str
    project_id: str
    manifest_digest: str
    stats: PushStats


def repository_name(text: str) -> RepositoryName:
    try:
        return parse_repository_name(text)
    except RegistryError as exc:
        raise api.registry_error(exc, f"using repository {text!r}") from exc


async def blob_exists(client: RegistryClient, repository: RepositoryName, blob: Blob) -> bool:
    try:
        return await client.blob_size(repository, parse_digest(blob.digest)) is not None
    except RegistryError as exc:
        raise api.registry_error(exc, f"checking blob {blob.digest}") from exc


def _source(blob: Blob) -> BlobSource:
    """The blob's bytes from an offset, read from its file 1 MiB at a time."""

    async def read(offset: int) -> AsyncIterator[bytes]:
        async with await trio.open_file(blob.path, "rb") as file:
            await file.seek(blob.offset + offset)
            remaining = blob.size - offset
            while remaining > 0:
                chunk = await file.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise ApiError(f"{blob.path} ends inside blob {blob.digest}")
                remaining -= len(chunk)
                yield chunk

    return read


async def upload_blob(client: RegistryClient, repository: RepositoryName, blob: Blob) -> None:
    """``POST`` an upload session, then ``PUT`` the whole blob into it, streamed from disk."""
    action = f"uploading blob {blob.digest}"
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            await client.upload_blob(
                repository, parse_digest(blob.digest), blob.size, _source(blob)
            )
            return
        except Unavailable as exc:
            if attempt == UPLOAD_ATTEMPTS:
                raise api.registry_error(exc, action) from exc
        except RegistryError as exc:
            raise api.registry_error(exc, action) from exc


async def push_blobs(
    client: RegistryClient,
    repository: RepositoryName,
    blobs: Sequence[Blob],
    on_blob: Callable[[Blob, bool], None] | None = None,
) -> PushStats:
    """Upload the ``blobs`` the repository lacks; ``on_blob(blob, uploaded)`` after each."""
    stats = PushStats()
    limiter = trio.CapacityLimiter(UPLOAD_CONCURRENCY)
    failures: list[Exception] = []

    async def one(blob: Blob) -> None:
        async with limiter:
            if failures:
                return
            try:
                if await blob_exists(client, repository, blob):
                    stats.skipped += 1
                    uploaded = False
                else:
                    await upload_blob(client, repository, blob)
                    stats.uploaded += 1
                    stats.uploaded_bytes += blob.size
                    uploaded = True
            except (ApiError, OSError) as exc:
                failures.append(exc)
                return
            if on_blob is not None:
                on_blob(blob, uploaded)

    async with trio.open_nursery() as nursery:
        for blob in blobs:
            nursery.start_soon(one, blob)
    if failures:
        raise failures[0]
    return stats


async def put_manifest(
    client: RegistryClient, repository: RepositoryName, manifest: Manifest, reference: str
) -> None:
    action = f"pushing manifest {manifest.digest} as {reference}"
    try:
        await client.put_manifest(
            repository,
            parse_manifest_reference(reference),
            manifest.content,
            manifest.media_type,
        )
    except RegistryError as exc:
        raise api.registry_error(exc, action) from exc


async def push_image(
    client: RegistryClient,
    repository: str,
    image: SourceImage,
    references: Sequence[str],
    on_blob: Callable[[Blob, bool], None] | None = None,
) -> PushStats:
    """Push ``image`` to ``repository``: missing blobs, child manifests by digest, then the
    top manifest under each of ``references`` (by digest when there are none)."""
    name = repository_name(repository)
    stats = await push_blobs(client, name, image.blobs(), on_blob)
    for manifest in image.manifests():
        if manifest is not image.root:
            await put_manifest(client, name, manifest, manifest.digest)
            stats.manifests += 1
    for reference in references or [image.root.digest]:
        await put_manifest(client, name, image.root, reference)
        stats.manifests += 1
    return stats


def write_metadata(path: Path, build_id: str, project_id: str) -> None:
    document = {"depot.build": {"buildID": build_id, "projectID": project_id}}
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(document) + "\n")
    os.replace(temp, path)


async def save_build(
    client: httpx.AsyncClient,
    registry: RegistryClient,
    image: SourceImage,
    project: str,
    save_tags: Sequence[str],
    on_blob: Callable[[Blob, bool], None] | None = None,
) -> SavedBuild:
    """Create a build of ``project`` and push ``image`` as it and each save-tag."""
    build = await api.create_build(client, project, list(save_tags))
    build_id: str = build["id"]
    project_id = build.get("project_id")
    if not isinstance(project_id, str) or not project_id:
        project_id = project
    try:
        stats = await push_image(registry, project_id, image, [build_id, *save_tags], on_blob)
    except BaseException:
        with trio.move_on_after(10) as scope:
            scope.shield = True
            try:
                await api.delete_build(client, project_id, build_id)
            except (ApiError, httpx.HTTPError):
                pass
        raise
    return SavedBuild(build_id, project_id, image.root.digest, stats)
