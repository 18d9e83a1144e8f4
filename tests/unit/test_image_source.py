"""Reading images for ``depot save``: OCI layouts, OCI archives and ``docker save`` tars,
all generated here with random small layers (single images and a 2-platform index)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from core import mediatypes
from core.manifest import parse_manifest
from depot.image_source import (
    DOCKER_ARCHIVE,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    OCI_ARCHIVE,
    OCI_LAYOUT,
    Blob,
    ImageSourceError,
    SourceImage,
    load_image,
)
from tests.interop.oci_layout import Image, ImageIndex, LayoutWriter, sha256_digest

SMALL_LAYERS = (1000, 70 * 1024)


def tar_directory(root: Path, archive: Path) -> Path:
    """An OCI archive: ``root``'s files at the top of an uncompressed tar."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return archive


def layer_tar(size: int) -> bytes:
    """An uncompressed layer tar holding one file of ``size`` random bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        payload = os.urandom(size)
        info = tarfile.TarInfo(f"data/{payload[:4].hex()}.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(
    path: Path,
    layer_sizes: tuple[int, ...] = SMALL_LAYERS,
    *,
    symlinked: bool = False,
    gzip_last: bool = False,
    tag: str = "app:v1",
) -> tuple[bytes, list[bytes]]:
    """A ``docker save`` tar of one image; returns (config bytes, layer bytes as stored).

    ``symlinked`` lays it out as docker 25 does without an index: layers under
    ``blobs/sha256/`` and ``<id>/layer.tar`` symlinks to them (no index.json here, so this is
    read as a docker archive). ``gzip_last`` stores the last layer gzip'd.
    """
    layers = [layer_tar(size) for size in layer_sizes]
    diff_ids = [sha256_digest(layer) for layer in layers]
    if gzip_last:
        layers[-1] = gzip.compress(layers[-1], mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    names = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, layer in enumerate(layers):
            layer_id = hashlib.sha256(f"{config_hex}{i}".encode()).hexdigest()
            if symlinked:
                blob_name = f"blobs/sha256/{hashlib.sha256(layer).hexdigest()}"
                _add(tar, blob_name, layer)
                link = tarfile.TarInfo(f"{layer_id}/layer.tar")
                link.type = tarfile.SYMTYPE
                link.linkname = f"../{blob_name}"
                tar.addfile(link)
            else:
                _add(tar, f"{layer_id}/layer.tar", layer)
            names.append(f"{layer_id}/layer.tar")
        _add(tar, f"{config_hex}.json", config)
        manifest = [{"Config": f"{config_hex}.json", "RepoTags": [tag], "Layers": names}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
        _add(tar, "repositories", b"{}")
    return config, layers


def read_all(blob: Blob) -> bytes:
    data = b"".join(blob.chunks(chunk_size=4096))
    assert len(data) == blob.size
    assert sha256_digest(data) == blob.digest
    return data


def assert_single(source: SourceImage, image: Image) -> None:
    root = source.root
    assert root.digest == image.manifest_digest
    assert root.content == image.manifest
    assert root.media_type == mediatypes.OCI_MANIFEST
    assert not root.children
    assert {b.digest for b in source.blobs()} == image.blob_digests()
    assert root.blobs[0].digest == image.config_digest
    assert tuple(b.digest for b in root.blobs[1:]) == image.layer_digests
    for blob in source.blobs():
        read_all(blob)
    assert [m.digest for m in source.manifests()] == [image.manifest_digest]


def assert_index(source: SourceImage, index: ImageIndex) -> None:
    root = source.root
    assert root.is_index
    assert root.digest == index.index_digest
    assert root.content == index.index
    assert [c.digest for c in root.children] == [c.manifest_digest for c in index.children]
    assert source.platforms() == ["linux/amd64", "linux/arm64"]
    manifests = source.manifests()
    assert [m.digest for m in manifests] == [
        *(c.manifest_digest for c in index.children),
        index.index_digest,
    ]
    expected = set().union(*(c.blob_digests() for c in index.children))
    assert {b.digest for b in source.blobs()} == expected
    assert len(source.blobs()) == len(expected)
    for child, image in zip(root.children, index.children, strict=True):
        assert child.content == image.manifest
        assert {b.digest for b in child.blobs} == image.blob_digests()
    for blob in source.blobs():
        read_all(blob)


def test_oci_layout_single_image(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    image = writer.image(SMALL_LAYERS)
    writer.tag(image, "latest")
    source = load_image(writer.root)
    assert source.kind == OCI_LAYOUT
    assert_single(source, image)
    assert all(b.offset == 0 and b.path.parent.name == "sha256" for b in source.blobs())


def test_oci_layout_two_platform_index(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    index = writer.index(layer_sizes=SMALL_LAYERS)
    writer.tag(index, "latest")
    source = load_image(writer.root)
    assert source.kind == OCI_LAYOUT
    assert_index(source, index)


def test_oci_archive_two_platform_index(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    index = writer.index(layer_sizes=SMALL_LAYERS)
    writer.tag(index, "latest")
    archive = tar_directory(writer.root, tmp_path / "image.tar")
    source = load_image(archive)
    assert source.kind == OCI_ARCHIVE
    assert_index(source, index)
    # Blobs are read in place, from inside the tar.
    assert all(b.path == archive and b.offset > 0 for b in source.blobs())


def test_oci_archive_single_image(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    image = writer.image(SMALL_LAYERS)
    writer.tag(image, "v1")
    source = load_image(tar_directory(writer.root, tmp_path / "image.tar"))
    assert source.kind == OCI_ARCHIVE
    assert_single(source, image)


@pytest.mark.parametrize("symlinked", [False, True], ids=["classic", "symlinked"])
def test_docker_archive(tmp_path: Path, symlinked: bool) -> None:
    archive = tmp_path / "docker.tar"
    config, layers = write_docker_archive(archive, (1000, 70 * 1024, 0), symlinked=symlinked)
    source = load_image(archive)
    assert source.kind == DOCKER_ARCHIVE
    root = source.root
    assert root.media_type == mediatypes.DOCKER_MANIFEST
    assert root.digest == sha256_digest(root.content)
    parsed = parse_manifest(root.content, mediatypes.DOCKER_MANIFEST)
    config_blob, *layer_blobs = root.blobs
    assert (config_blob.digest, config_blob.media_type) == (sha256_digest(config), DOCKER_CONFIG)
    assert read_all(config_blob) == config
    # Layers as stored, uncompressed: their digests are the config's diff_ids.
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert [b.digest for b in layer_blobs] == diff_ids
    assert [b.media_type for b in layer_blobs] == [DOCKER_LAYER] * 3
    assert [read_all(b) for b in layer_blobs] == layers
    assert [(str(d.digest), d.size, d.media_type) for d in parsed.blobs] == [
        (b.digest, b.size, b.media_type) for b in root.blobs
    ]
    # The manifest is a pure function of the tar: the same image gives the same digest.
    assert load_image(archive).root.content == root.content


def test_docker_archive_gzip_layer_keeps_its_bytes(tmp_path: Path) -> None:
    archive = tmp_path / "docker.tar"
    _, layers = write_docker_archive(archive, gzip_last=True)
    blobs = load_image(archive).root.blobs[1:]
    assert [b.media_type for b in blobs] == [DOCKER_LAYER, DOCKER_LAYER_GZIP]
    assert [b.digest for b in blobs] == [sha256_digest(layer) for layer in layers]


def test_several_images_need_ref(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    first, second = writer.image(SMALL_LAYERS), writer.image(SMALL_LAYERS)
    writer.tag(first, "one")
    writer.tag(second, "two")
    with pytest.raises(ImageSourceError, match="--ref"):
        load_image(writer.root)
    assert load_image(writer.root, "two").root.digest == second.manifest_digest
    with pytest.raises(ImageSourceError, match="three"):
        load_image(writer.root, "three")


def test_docker_archive_ref_picks_a_tag(tmp_path: Path) -> None:
    archive = tmp_path / "docker.tar"
    write_docker_archive(archive, tag="app:v2")
    assert load_image(archive, "app:v2").kind == DOCKER_ARCHIVE
    with pytest.raises(ImageSourceError, match="app:v3"):
        load_image(archive, "app:v3")


def test_index_with_a_missing_child_is_refused(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    index = writer.index(layer_sizes=SMALL_LAYERS)
    writer.tag(index, "latest")
    missing = index.children[1].manifest_digest.removeprefix("sha256:")
    (writer.root / "blobs" / "sha256" / missing).unlink()
    with pytest.raises(ImageSourceError, match="missing"):
        load_image(writer.root)


def test_corrupt_manifest_is_refused(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "layout")
    image = writer.image(SMALL_LAYERS)
    writer.tag(image, "latest")
    path = writer.root / "blobs" / "sha256" / image.manifest_digest.removeprefix("sha256:")
    path.write_bytes(image.manifest + b" ")
    with pytest.raises(ImageSourceError, match="does not match"):
        load_image(writer.root)


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSourceError, match="not an OCI image layout"):
        load_image(tmp_path / "empty")
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(ImageSourceError, match="neither a directory nor a tar"):
        load_image(tmp_path / "plain.txt")
    compressed = tmp_path / "image.tar.gz"
    compressed.write_bytes(gzip.compress(b"x" * 100))
    with pytest.raises(ImageSourceError, match="gzip"):
        load_image(compressed)
    with pytest.raises(ImageSourceError, match="does not exist"):
        load_image(tmp_path / "nope")
