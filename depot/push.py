"""Pushing a :class:`~depot.image_source.SourceImage` to a repository, and ``depot save``.

Blobs first, only those the registry lacks (``HEAD`` each; a 200 skips it), each uploaded
monolithically: ``POST /blobs/uploads/`` then one ``PUT ?digest=`` whose body streams from
disk 1 MiB at a time (a few uploads run at once). Then the manifests, children of an index
before the index (by digest), and the top manifest under every reference asked for.

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
from typing import Any

import httpx
import trio

from core.client.http import request_with_retry
from depot import api
from depot.api import ApiError, segment
from depot.image_source import CHUNK_SIZE, Blob, Manifest, SourceImage

#: Blob uploads running at once.
UPLOAD_CONCURRENCY = 4
#: Attempts per blob upload: a transport failure (reset, timeout) starts a new upload once.
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


async def blob_exists(client: httpx.AsyncClient, repository: str, digest: str) -> bool:
    response = await request_with_retry(client, "HEAD", f"/v2/{repository}/blobs/{digest}")
    if response.status_code == 200:
        return True
    if response.status_code == 404:
        return False
    raise api.error_from(response, f"checking blob {digest}")


async def _chunks(blob: Blob) -> AsyncIterator[bytes]:
    async with await trio.open_file(blob.path, "rb") as file:
        await file.seek(blob.offset)
        remaining = blob.size
        while remaining > 0:
            chunk = await file.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise ApiError(f"{blob.path} ends inside blob {blob.digest}")
            remaining -= len(chunk)
            yield chunk


async def upload_blob(client: httpx.AsyncClient, repository: str, blob: Blob) -> None:
    """``POST`` an upload session, then ``PUT`` the whole blob into it, streamed from disk."""
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            await _upload_once(client, repository, blob)
            return
        except httpx.TransportError:
            if attempt == UPLOAD_ATTEMPTS:
                raise


async def _upload_once(client: httpx.AsyncClient, repository: str, blob: Blob) -> None:
    action = f"uploading blob {blob.digest}"
    started = await client.post(f"/v2/{repository}/blobs/uploads/")
    if started.status_code != 202 or "location" not in started.headers:
        raise api.error_from(started, action)
    location = started.headers["location"]
    separator = "&" if "?" in location else "?"
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
    body: Any = _chunks(blob) if blob.size else b""
    done = await client.put(
        f"{location}{separator}digest={blob.digest}", content=body, headers=headers
    )
    if done.status_code != 201:
        raise api.error_from(done, action)


async def push_blobs(
    client: httpx.AsyncClient,
    repository: str,
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
                if await blob_exists(client, repository, blob.digest):
                    stats.skipped += 1
                    uploaded = False
                else:
                    await upload_blob(client, repository, blob)
                    stats.uploaded += 1
                    stats.uploaded_bytes += blob.size
                    uploaded = True
            except (ApiError, httpx.HTTPError, OSError) as exc:
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
    client: httpx.AsyncClient, repository: str, manifest: Manifest, reference: str
) -> None:
    response = await client.put(
        f"/v2/{repository}/manifests/{segment(reference)}",
        content=manifest.content,
        headers={"Content-Type": manifest.media_type},
    )
    if response.status_code != 201:
        raise api.error_from(response, f"pushing manifest {manifest.digest} as {reference}")
    answered = response.headers.get("docker-content-digest")
    if answered is not None and answered != manifest.digest:
        raise ApiError(f"pushing manifest {manifest.digest}: the registry stored it as {answered}")


async def push_image(
    client: httpx.AsyncClient,
    repository: str,
    image: SourceImage,
    references: Sequence[str],
    on_blob: Callable[[Blob, bool], None] | None = None,
) -> PushStats:
    """Push ``image`` to ``repository``: missing blobs, child manifests by digest, then the
    top manifest under each of ``references`` (by digest when there are none)."""
    stats = await push_blobs(client, repository, image.blobs(), on_blob)
    for manifest in image.manifests():
        if manifest is not image.root:
            await put_manifest(client, repository, manifest, manifest.digest)
            stats.manifests += 1
    for reference in references or [image.root.digest]:
        await put_manifest(client, repository, image.root, reference)
        stats.manifests += 1
    return stats


def write_metadata(path: Path, build_id: str, project_id: str) -> None:
    document = {"depot.build": {"buildID": build_id, "projectID": project_id}}
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(document) + "\n")
    os.replace(temp, path)


async def save_build(
    client: httpx.AsyncClient,
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
        stats = await push_image(
            client, segment(project_id), image, [build_id, *save_tags], on_blob
        )
    except BaseException:
        with trio.move_on_after(10) as scope:
            scope.shield = True
            try:
                await api.delete_build(client, project_id, build_id)
            except (ApiError, httpx.HTTPError):
                pass
        raise
    return SavedBuild(build_id, project_id, image.root.digest, stats)
