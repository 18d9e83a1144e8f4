"""OCI image layouts written and read in pure Python (no docker, no umoci).

`LayoutWriter` builds what skopeo reads as ``oci:DIR:TAG``: ``oci-layout``, ``index.json`` and
``blobs/sha256/<hex>``. Every layer is fresh random bytes, so skopeo's blob-info cache (kept by
root under ``/var/lib/containers/cache``, which no flag or variable of skopeo 1.9 moves) never
knows a digest from an earlier test and cannot turn an upload into a cross-repository mount.
`read_layout` reads the layouts skopeo writes back out.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

# A layer above Quart's 16 MiB MAX_CONTENT_LENGTH is part of every image on purpose.
DEFAULT_LAYER_SIZES = (64 * 1024, 1024 * 1024, 20 * 1024 * 1024)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Image:
    """One single-platform image: the exact manifest bytes and what they reference."""

    manifest: bytes
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    platform: tuple[str, str]  # (os, architecture)

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": OCI_MANIFEST,
            "digest": self.manifest_digest,
            "size": len(self.manifest),
            "platform": {"os": self.platform[0], "architecture": self.platform[1]},
        }

    def blob_digests(self) -> set[str]:
        return {self.config_digest, *self.layer_digests}


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform image index and its child images."""

    index: bytes
    index_digest: str
    children: tuple[Image, ...]


def random_layer(size: int) -> tuple[bytes, str]:
    """A gzip'd tar holding ``size`` random bytes; returns (compressed bytes, diff_id)."""
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        payload = os.urandom(size)
        info = tarfile.TarInfo(f"data/{payload[:4].hex()}.bin")
        info.size = size
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    uncompressed = tar_buffer.getvalue()
    return gzip.compress(uncompressed, compresslevel=1, mtime=0), sha256_digest(uncompressed)


class LayoutWriter:
    """Writes blobs, images and indexes into an OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self._refs: list[dict[str, Any]] = []
        self._write_index()

    def add_blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256_digest(data)
        (self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(
        self,
        layer_sizes: Sequence[int] = DEFAULT_LAYER_SIZES,
        platform: tuple[str, str] = ("linux", "amd64"),
    ) -> Image:
        layers: list[dict[str, Any]] = []
        diff_ids: list[str] = []
        for size in layer_sizes:
            compressed, diff_id = random_layer(size)
            layers.append(self.add_blob(compressed, OCI_LAYER_GZIP))
            diff_ids.append(diff_id)
        config = {
            "architecture": platform[1],
            "os": platform[0],
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        config_descriptor = self.add_blob(canonical_json(config), OCI_CONFIG)
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_descriptor,
                "layers": layers,
            }
        )
        self.add_blob(manifest, OCI_MANIFEST)
        return Image(
            manifest=manifest,
            manifest_digest=sha256_digest(manifest),
            config_digest=config_descriptor["digest"],
            layer_digests=tuple(layer["digest"] for layer in layers),
            platform=platform,
        )

    def index(
        self,
        platforms: Sequence[tuple[str, str]] = (("linux", "amd64"), ("linux", "arm64")),
        layer_sizes: Sequence[int] = DEFAULT_LAYER_SIZES,
    ) -> ImageIndex:
        children = tuple(self.image(layer_sizes, platform) for platform in platforms)
        index = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [child.descriptor() for child in children],
            }
        )
        self.add_blob(index, OCI_INDEX)
        return ImageIndex(index=index, index_digest=sha256_digest(index), children=children)

    def tag(self, target: Image | ImageIndex, name: str) -> None:
        """Name ``target`` in ``index.json`` so skopeo can read it as ``oci:ROOT:NAME``."""
        if isinstance(target, Image):
            data, media_type = target.manifest, OCI_MANIFEST
        else:
            data, media_type = target.index, OCI_INDEX
        descriptor = {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}
        self._refs.append({**descriptor, "annotations": {REF_NAME: name}})
        self._write_index()

    def _write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self._refs}
        (self.root / "index.json").write_bytes(canonical_json(index))


@dataclass(frozen=True)
class LayoutRef:
    """What a layout's ``index.json`` names ``name``: descriptor plus the blob bytes, verified."""

    media_type: str
    digest: str
    content: bytes


def read_blob(root: Path, digest: str) -> bytes:
    """Read a blob of the layout at ``root`` and check that its bytes match ``digest``."""
    algorithm, _, hex_digest = digest.partition(":")
    data = (root / "blobs" / algorithm / hex_digest).read_bytes()
    actual = sha256_digest(data)
    assert actual == digest, f"blob {digest} in {root} hashes to {actual}"
    return data


def read_layout(root: Path, name: str) -> LayoutRef:
    index = json.loads((root / "index.json").read_bytes())
    named = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) == name]
    assert len(named) == 1, f"{root}/index.json names {name!r} {len(named)} times: {index}"
    descriptor = named[0]
    content = read_blob(root, descriptor["digest"])
    assert len(content) == descriptor["size"]
    return LayoutRef(descriptor.get("mediaType", ""), descriptor["digest"], content)


def referenced_blobs(manifest: bytes) -> set[str]:
    """Digests of the config and layers an image manifest references."""
    parsed = json.loads(manifest)
    return {parsed["config"]["digest"], *(layer["digest"] for layer in parsed["layers"])}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.interop.oci_layout DIR [TAG]``: write a small random demo image."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("tag", nargs="?", default="latest")
    args = parser.parse_args(argv)
    writer = LayoutWriter(args.directory)
    image = writer.image(layer_sizes=(64 * 1024, 256 * 1024, 1024 * 1024))
    writer.tag(image, args.tag)
    print(f"oci:{args.directory}:{args.tag} {image.manifest_digest}")


if __name__ == "__main__":
    main()
