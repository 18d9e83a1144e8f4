"""``depot pull --output``: a build written to disk through the registry client, every digest
verified, instead of loaded into an engine.

- ``oci:DIR[:REF]``: an OCI image layout (``oci-layout``, ``index.json``, ``blobs/``); the
  image is added to ``index.json`` under ``REF`` (an entry of the same name is replaced), so
  several pulls can share one layout.
- ``docker-archive:FILE``: the ``docker save`` format (``manifest.json``, the config JSON and
  one uncompressed ``layer.tar`` per layer), which ``docker load`` and ``podman load`` read.

The platform's manifest is fetched by digest (the registry client checks its bytes), each
blob streams to a staging file while it is hashed, and a blob whose size or digest differs
is an error. For docker-archive, gzip layers are decompressed and the result checked against
the config's ``rootfs.diff_ids``. Nothing appears at the destination until everything is
verified: blobs are renamed into the layout, the archive is renamed into place.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from core import mediatypes
from core.client.registry import FetchedManifest, RegistryClient
from core.digest import Digest, parse_digest
from core.errors import InputError, RegistryError
from core.manifest import Descriptor, ParsedManifest, parse_manifest
from core.reference import RepositoryName
from depot import api, platforms
from depot.progress import Progress

OCI, DOCKER_ARCHIVE = "oci", "docker-archive"
REF_NAME = "org.opencontainers.image.ref.name"
DOWNLOADS = 4
WRITE_BATCH = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class OutputError(InputError):
    """The destination cannot be written as asked, or what arrived is not what was named."""


@dataclass(frozen=True, slots=True)
class OutputTarget:
    kind: str  # OCI or DOCKER_ARCHIVE
    path: Path
    ref: str | None = None  # oci:DIR:REF

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse_output(text: str) -> OutputTarget:
    kind, sep, rest = text.partition(":")
    if not sep or not rest or kind not in (OCI, DOCKER_ARCHIVE):
        raise OutputError(
            f"not an output: {text!r} (expected oci:DIR[:REF] or docker-archive:FILE)"
        )
    if kind == OCI:
        directory, _, ref = rest.partition(":")
        return OutputTarget(OCI, Path(directory), ref or None)
    return OutputTarget(DOCKER_ARCHIVE, Path(rest))


@dataclass(frozen=True, slots=True)
class Written:
    digest: str  # of the image manifest written
    config_digest: str
    platform: str | None  # the index entry's, when the build is multi-platform


async def write_output(
    registry: RegistryClient,
    repository: RepositoryName,
    digest: str,
    target: OutputTarget,
    names: Sequence[str],
    platform: str | None,
    progress: Progress,
) -> Written:
    """Write the build ``repository@digest`` to ``target``; ``names`` are the docker-archive's
    ``RepoTags`` (an OCI layout's entry is named ``target.ref`` or the first name's tag)."""
    manifest, chosen = await _image_manifest(registry, repository, digest, platform)
    parsed = _parse(manifest)
    disk = trio.CapacityLimiter(1)  # the file work below, one thread at a time
    if target.kind == OCI:
        directory = target.path
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".depot-pull-", dir=directory))
    else:
        target.path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".depot-pull-", dir=target.path.parent))
    try:
        files = await _download(registry, repository, parsed.blobs, staging, progress)
        config = parsed.blobs[0]
        if target.kind == OCI:
            ref = target.ref or (names[0].rpartition(":")[2] if names else str(manifest.digest))
            await trio.to_thread.run_sync(
                _write_layout, target.path, manifest, files, ref, chosen, limiter=disk
            )
        else:
            await trio.to_thread.run_sync(
                _write_archive,
                target.path,
                staging,
                config,
                parsed.blobs[1:],
                files,
                list(names),
                limiter=disk,
            )
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, staging, True, limiter=disk)
    found = platforms.describe(chosen.get("platform")) if chosen else None
    return Written(str(manifest.digest), str(config.digest), found)


async def _image_manifest(
    registry: RegistryClient, repository: RepositoryName, digest: str, platform: str | None
) -> tuple[FetchedManifest, dict[str, Any] | None]:
    """The build's image manifest (its platform's, when it is an index) and the index entry."""
    root = await _get_manifest(registry, repository, parse_digest(digest))
    if root.media_type not in mediatypes.INDEXES:
        return root, None
    entry = platforms.choose(json.loads(root.payload), platform or platforms.local_platform())
    child = await _get_manifest(registry, repository, parse_digest(str(entry.get("digest"))))
    if child.media_type in mediatypes.INDEXES:
        raise OutputError(f"{repository}@{child.digest} is a nested index: not an image")
    return child, entry


async def _get_manifest(
    registry: RegistryClient, repository: RepositoryName, digest: Digest
) -> FetchedManifest:
    try:
        return await registry.get_manifest(repository, digest)
    except RegistryError as exc:
        raise api.registry_error(exc, f"fetching manifest {digest}") from exc


def _parse(manifest: FetchedManifest) -> ParsedManifest:
    try:
        parsed = parse_manifest(manifest.payload, manifest.media_type)
    except RegistryError as exc:
        raise OutputError(f"manifest {manifest.digest}: {exc.message}") from exc
    if not parsed.blobs:
        raise OutputError(f"manifest {manifest.digest} names no config")
    return parsed


async def _download(
    registry: RegistryClient,
    repository: RepositoryName,
    blobs: Sequence[Descriptor],
    staging: Path,
    progress: Progress,
) -> dict[str, Path]:
    """Every blob into ``staging``, verified; digest → file."""
    files: dict[str, Path] = {}
    limiter = trio.CapacityLimiter(DOWNLOADS)

    async def one(blob: Descriptor) -> None:
        async with limiter:
            path = staging / f"{blob.digest.algorithm}-{blob.digest.encoded}"
            await _fetch_blob(registry, repository, blob, path, progress)
            files[str(blob.digest)] = path

    for blob in blobs:
        progress.start(str(blob.digest), blob.size)
    async with trio.open_nursery() as nursery:
        for blob in {str(b.digest): b for b in blobs}.values():
            nursery.start_soon(one, blob)
    return files


async def _fetch_blob(
    registry: RegistryClient,
    repository: RepositoryName,
    blob: Descriptor,
    path: Path,
    progress: Progress,
) -> None:
    key = str(blob.digest)
    hasher = blob.digest.hasher()
    received = 0
    pending = bytearray()
    try:
        async with (
            registry.open_blob(repository, blob.digest) as stream,
            await trio.open_file(path, "wb") as file,
        ):
            async for chunk in stream.chunks:
                hasher.update(chunk)
                received += len(chunk)
                if received > blob.size:
                    raise OutputError(f"blob {key} is larger than its descriptor's {blob.size}")
                pending += chunk
                if len(pending) >= WRITE_BATCH:
                    await file.write(bytes(pending))
                    pending.clear()
                    progress.update(key, received, blob.size, "downloading")
            await file.write(bytes(pending))
    except RegistryError as exc:
        raise api.registry_error(exc, f"downloading blob {key}") from exc
    if received != blob.size or hasher.hexdigest() != blob.digest.encoded:
        raise OutputError(
            f"blob {key} does not match its digest ({received} bytes of {blob.size} received)"
        )
    progress.finish(key, "verified")


# -- OCI image layout (in a worker thread) --------------------------------------------------


def _write_layout(
    root: Path,
    manifest: FetchedManifest,
    files: dict[str, Path],
    ref: str,
    entry: dict[str, Any] | None,
) -> None:
    layout = root / "oci-layout"
    if not layout.exists():
        _atomic_write(layout, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    for digest, path in files.items():
        _move_blob(root, digest, path)
    _store_blob(root, str(manifest.digest), manifest.payload)
    index_path = root / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
    if index_path.exists():
        try:
            index = json.loads(index_path.read_bytes())
        except ValueError as exc:
            raise OutputError(f"{index_path} exists and is not JSON") from exc
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise OutputError(f"{index_path} exists and is not an image index")
    descriptor: dict[str, Any] = {
        "mediaType": manifest.media_type,
        "digest": str(manifest.digest),
        "size": len(manifest.payload),
        "annotations": {REF_NAME: ref},
    }
    if entry is not None and isinstance(entry.get("platform"), dict):
        descriptor["platform"] = entry["platform"]
    kept = [
        m
        for m in index["manifests"]
        if not (isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == ref)
    ]
    index["manifests"] = [*kept, descriptor]
    _atomic_write(index_path, json.dumps(index, indent=2).encode())


def _blob_path(root: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return root / "blobs" / algorithm / encoded


def _move_blob(root: Path, digest: str, path: Path) -> None:
    destination = _blob_path(root, digest)
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, destination)


def _store_blob(root: Path, digest: str, data: bytes) -> None:
    destination = _blob_path(root, digest)
    destination.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(destination, data)


def _atomic_write(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


# -- docker save format (in a worker thread) ------------------------------------------------


def _write_archive(
    destination: Path,
    staging: Path,
    config: Descriptor,
    layers: Sequence[Descriptor],
    files: dict[str, Path],
    names: list[str],
) -> None:
    config_path = files[str(config.digest)]
    try:
        diff_ids = json.loads(config_path.read_bytes())["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"config {config.digest} has no rootfs.diff_ids") from exc
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise OutputError(
            f"config {config.digest} lists {len(diff_ids) if isinstance(diff_ids, list) else 0} "
            f"layers, the manifest {len(layers)}"
        )
    members: list[tuple[str, Path]] = [(f"{config.digest.encoded}.json", config_path)]
    layer_names: list[str] = []
    for i, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        tar_path = _uncompressed(files[str(layer.digest)], layer, staging / f"layer-{i}.tar")
        _check_diff_id(tar_path, str(diff_id), layer)
        name = f"{str(diff_id).partition(':')[2]}/layer.tar"
        if name not in layer_names:
            members.append((name, tar_path))
        layer_names.append(name)
    manifest = [{"Config": members[0][0], "RepoTags": names, "Layers": layer_names}]
    temp = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
            for name, path in members:
                tar.add(path, arcname=name, recursive=False)
        os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _uncompressed(path: Path, layer: Descriptor, target: Path) -> Path:
    """The layer as a plain tar: gzip ones are decompressed into ``target``."""
    with path.open("rb") as file:
        head = file.read(4)
    if head[:2] == _GZIP_MAGIC:
        with gzip.open(path, "rb") as source, target.open("wb") as out:
            shutil.copyfileobj(source, out, WRITE_BATCH)
        return target
    if "zstd" in layer.media_type or head == b"\x28\xb5\x2f\xfd":
        raise OutputError(f"layer {layer.digest} is zstd-compressed: docker-archive cannot hold it")
    return path


def _check_diff_id(path: Path, diff_id: str, layer: Descriptor) -> None:
    algorithm, _, encoded = diff_id.partition(":")
    if algorithm != "sha256":
        raise OutputError(f"config diff_id {diff_id[:80]!r} is not a sha256 digest")
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(WRITE_BATCH):
            hasher.update(chunk)
    if hasher.hexdigest() != encoded:
        raise OutputError(f"layer {layer.digest} does not unpack to the config's {diff_id}")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
