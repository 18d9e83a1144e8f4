"""Images on disk for ``depot save``: an OCI image layout directory, an OCI archive (a tar of
a layout) or a ``docker save`` tar.

Nothing is extracted or copied: a blob is located as (file, offset, size), in the layout
directory or inside the uncompressed tar, and the uploader streams it from there. Manifests
are small and are read (and checked against their digests) here.

``docker save`` tars (``manifest.json`` + the config JSON + one tar per layer) are turned into
a Docker v2 schema 2 manifest: the config blob as is (``application/vnd.docker.container.
image.v1+json``) and every layer exactly as it is in the tar. Layers ``docker save`` wrote
uncompressed are pushed uncompressed, as ``application/vnd.docker.image.rootfs.diff.tar``
(which docker, containerd, podman and skopeo all pull); a layer that is already gzip'd gets
the ``.tar.gzip`` type. Not recompressing keeps the layer digest equal to the config's
``diff_id``, costs no CPU, and makes the same image give the same digests on every machine
(gzip output depends on the zlib version), so a second save uploads nothing.

A tar holding both ``index.json`` and ``manifest.json`` (docker 25+ writes both) is read as an
OCI archive: its index keeps the digests docker itself reports.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import mediatypes
from core.errors import InputError, RegistryError
from core.manifest import parse_manifest

OCI_LAYOUT = "oci-layout"
OCI_ARCHIVE = "oci-archive"
DOCKER_ARCHIVE = "docker-archive"

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME_ANNOTATIONS = ("org.opencontainers.image.ref.name", "io.containerd.image.name")

CHUNK_SIZE = 1024 * 1024
_MAX_LINK_HOPS = 16
_GZIP_MAGIC = b"\x1f\x8b"


class ImageSourceError(InputError):
    """The path is not an image this module reads, or the image in it is incomplete."""


@dataclass(frozen=True, slots=True)
class Blob:
    """A config or layer blob: its descriptor fields and where its bytes are on disk."""

    digest: str
    size: int
    media_type: str
    path: Path
    offset: int = 0

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The blob's bytes, read from disk ``chunk_size`` at a time."""
        with self.path.open("rb") as file:
            file.seek(self.offset)
            remaining = self.size
            while remaining > 0:
                chunk = file.read(min(chunk_size, remaining))
                if not chunk:
                    raise ImageSourceError(f"{self.path} ends inside blob {self.digest}")
                remaining -= len(chunk)
                yield chunk


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (with its blobs) or an index (with its child manifests)."""

    digest: str
    media_type: str
    content: bytes
    blobs: tuple[Blob, ...] = ()
    children: tuple[Manifest, ...] = ()
    platform: str | None = None  # as the parent index's descriptor names it

    @property
    def is_index(self) -> bool:
        return self.media_type in mediatypes.INDEXES


@dataclass(frozen=True, slots=True)
class SourceImage:
    kind: str  # OCI_LAYOUT, OCI_ARCHIVE or DOCKER_ARCHIVE
    root: Manifest

    def manifests(self) -> list[Manifest]:
        """Every manifest once, children before the index naming them (push order)."""
        seen: dict[str, Manifest] = {}

        def visit(node: Manifest) -> None:
            for child in node.children:
                visit(child)
            seen.setdefault(node.digest, node)

        visit(self.root)
        return list(seen.values())

    def blobs(self) -> list[Blob]:
        """Every config and layer blob once, in manifest order."""
        unique: dict[str, Blob] = {}
        for manifest in self.manifests():
            for blob in manifest.blobs:
                unique.setdefault(blob.digest, blob)
        return list(unique.values())

    def platforms(self) -> list[str]:
        return [m.platform for m in self.root.children if m.platform] if self.root.is_index else []


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Files:
    """Files of a layout directory or of an uncompressed tar, by their path inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._members: dict[str, tarfile.TarInfo] | None = None
        if path.is_file():
            with path.open("rb") as file:
                if file.read(2) == _GZIP_MAGIC:
                    raise ImageSourceError(
                        f"{path} is gzip-compressed: decompress it first (gunzip, or "
                        "docker save without | gzip)"
                    )
            try:
                with tarfile.open(path, mode="r:") as tar:
                    self._members = {_normal(m.name): m for m in tar.getmembers()}
            except tarfile.TarError as exc:
                raise ImageSourceError(f"{path} is neither a directory nor a tar: {exc}") from exc

    @property
    def is_tar(self) -> bool:
        return self._members is not None

    def exists(self, name: str) -> bool:
        try:
            self.locate(name)
        except ImageSourceError:
            return False
        return True

    def locate(self, name: str) -> tuple[Path, int, int]:
        """(file, offset, size) of the regular file ``name``, following links in a tar."""
        name = _normal(name)
        if self._members is None:
            target = self.path / name
            if not target.is_file():
                raise ImageSourceError(f"{self.path} has no file {name}")
            return target, 0, target.stat().st_size
        for _ in range(_MAX_LINK_HOPS):
            member = self._members.get(name)
            if member is None:
                raise ImageSourceError(f"{self.path} has no member {name}")
            if member.issym():
                name = _normal(posixpath.join(posixpath.dirname(name), member.linkname))
            elif member.islnk():
                name = _normal(member.linkname)
            elif member.isfile() and not member.issparse():
                return self.path, member.offset_data, member.size
            else:
                raise ImageSourceError(f"{self.path}: {name} is not a regular file")
        raise ImageSourceError(f"{self.path}: too many links from {name}")

    def read(self, name: str, limit: int = 64 * 1024 * 1024) -> bytes:
        path, offset, size = self.locate(name)
        if size > limit:
            raise ImageSourceError(f"{self.path}: {name} is larger than {limit} bytes")
        with path.open("rb") as file:
            file.seek(offset)
            return file.read(size)

    def blob(self, digest: str, size: int, media_type: str) -> Blob:
        algorithm, _, encoded = digest.partition(":")
        path, offset, actual = self.locate(f"blobs/{algorithm}/{encoded}")
        if actual != size:
            raise ImageSourceError(
                f"{self.path}: blob {digest} has {actual} bytes, its descriptor says {size}"
            )
        return Blob(digest, size, media_type, path, offset)


def _normal(name: str) -> str:
    normal = posixpath.normpath(name.lstrip("/"))
    return "" if normal == "." else normal


def load_image(path: Path, ref: str | None = None) -> SourceImage:
    """Read the image at ``path``; ``ref`` picks one when the source names several."""
    if not path.exists():
        raise ImageSourceError(f"{path} does not exist")
    files = _Files(path)
    if files.exists("index.json"):
        kind = OCI_ARCHIVE if files.is_tar else OCI_LAYOUT
        return SourceImage(kind, _load_oci(files, ref))
    if files.is_tar and files.exists("manifest.json"):
        return SourceImage(DOCKER_ARCHIVE, _load_docker(files, ref))
    raise ImageSourceError(
        f"{path} is not an OCI image layout, an OCI archive or a docker save tar "
        "(no index.json or manifest.json)"
    )


def _json_object(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageSourceError(f"{where} is not valid JSON") from exc


def _ref_names(descriptor: dict[str, Any]) -> set[str]:
    annotations = descriptor.get("annotations") or {}
    return {annotations[key] for key in REF_NAME_ANNOTATIONS if key in annotations}


def _load_oci(files: _Files, ref: str | None) -> Manifest:
    index = _json_object(files.read("index.json"), f"{files.path}: index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ImageSourceError(f"{files.path}: index.json names no manifest")
    if ref is not None:
        entries = [e for e in entries if isinstance(e, dict) and ref in _ref_names(e)]
        if not entries:
            raise ImageSourceError(f"{files.path}: index.json names no image {ref!r}")
    if len({e.get("digest") for e in entries if isinstance(e, dict)}) != 1:
        names = sorted({n for e in entries if isinstance(e, dict) for n in _ref_names(e)})
        raise ImageSourceError(
            f"{files.path}: index.json names {len(entries)} images; pick one with --ref "
            f"(names: {', '.join(names) or 'none'})"
        )
    return _load_manifest(files, entries[0], "index.json")


def _load_manifest(files: _Files, descriptor: Any, where: str, depth: int = 0) -> Manifest:
    if depth > 4:
        raise ImageSourceError(f"{files.path}: indexes nested too deeply at {where}")
    if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
        raise ImageSourceError(f"{files.path}: {where} is not a descriptor")
    digest: str = descriptor["digest"]
    declared_type = descriptor.get("mediaType")
    try:
        algorithm, _, encoded = digest.partition(":")
        content = files.read(f"blobs/{algorithm}/{encoded}", limit=4 * 1024 * 1024)
    except ImageSourceError as exc:
        hint = " (was the layout copied without --all?)" if depth else ""
        raise ImageSourceError(f"manifest {digest} named by {where} is missing{hint}") from exc
    if algorithm != "sha256" or sha256_digest(content) != digest:
        raise ImageSourceError(f"{files.path}: manifest {digest} does not match its digest")
    try:
        parsed = parse_manifest(content, declared_type if isinstance(declared_type, str) else None)
    except RegistryError as exc:
        raise ImageSourceError(f"{files.path}: manifest {digest}: {exc.message}") from exc
    children: list[Manifest] = []
    if parsed.media_type in mediatypes.INDEXES:
        document = json.loads(content)
        for i, child in enumerate(document["manifests"]):
            children.append(_load_manifest(files, child, f"{digest} manifests[{i}]", depth + 1))
    blobs = tuple(files.blob(str(d.digest), d.size, d.media_type) for d in parsed.blobs)
    return Manifest(
        digest, parsed.media_type, content, blobs, tuple(children), _platform(descriptor)
    )


def _platform(descriptor: dict[str, Any]) -> str | None:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p) or None


def _load_docker(files: _Files, ref: str | None) -> Manifest:
    entries = _json_object(files.read("manifest.json"), f"{files.path}: manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageSourceError(f"{files.path}: manifest.json names no image")
    if ref is not None:
        entries = [e for e in entries if isinstance(e, dict) and ref in (e.get("RepoTags") or [])]
        if not entries:
            raise ImageSourceError(f"{files.path}: manifest.json has no image tagged {ref!r}")
    if len(entries) != 1:
        tags = sorted(t for e in entries if isinstance(e, dict) for t in e.get("RepoTags") or [])
        raise ImageSourceError(
            f"{files.path}: manifest.json names {len(entries)} images; pick one with --ref "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    entry = entries[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise ImageSourceError(f"{files.path}: manifest.json entry lacks Config or Layers")
    config = files.read(config_name)
    config_path, config_offset, _ = files.locate(config_name)
    config_blob = Blob(
        sha256_digest(config), len(config), DOCKER_CONFIG, config_path, config_offset
    )
    layers = [_docker_layer(files, name) for name in layer_names]
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST,
        "config": _descriptor(config_blob),
        "layers": [_descriptor(layer) for layer in layers],
    }
    content = json.dumps(document, indent=3).encode()
    return Manifest(
        sha256_digest(content),
        mediatypes.DOCKER_MANIFEST,
        content,
        (config_blob, *layers),
    )


def _descriptor(blob: Blob) -> dict[str, Any]:
    return {"mediaType": blob.media_type, "size": blob.size, "digest": blob.digest}


def _docker_layer(files: _Files, name: Any) -> Blob:
    if not isinstance(name, str):
        raise ImageSourceError(f"{files.path}: manifest.json has a layer that is not a path")
    path, offset, size = files.locate(name)
    hasher = hashlib.sha256()
    head = b""
    for chunk in Blob("", size, "", path, offset).chunks():
        if not head:
            head = chunk[:2]
        hasher.update(chunk)
    media_type = DOCKER_LAYER_GZIP if head == _GZIP_MAGIC else DOCKER_LAYER
    return Blob("sha256:" + hasher.hexdigest(), size, media_type, path, offset)
