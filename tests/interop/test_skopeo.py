"""skopeo pushes to and pulls from the origin; images come out byte-identical.

Round trips run against the origin and, as a control, CNCF Distribution: a failure only on
``[origin]`` is the origin's. Layers are fresh random bytes per test (see ``oci_layout``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.interop.oci_layout import (
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    LayoutWriter,
    read_blob,
    read_layout,
    referenced_blobs,
    sha256_digest,
)

if TYPE_CHECKING:
    from tests.interop.conftest import Registry, Skopeo

pytestmark = pytest.mark.interop


def assert_image_in_layout(root: Path, image: Image) -> None:
    """The layout holds ``image``'s manifest, config and layers with their original digests."""
    manifest = read_blob(root, image.manifest_digest)
    assert manifest == image.manifest
    assert referenced_blobs(manifest) == image.blob_digests()
    for digest in image.blob_digests():
        read_blob(root, digest)


async def test_image_round_trip(tmp_path: Path, skopeo: Skopeo, registry: Registry) -> None:
    source = LayoutWriter(tmp_path / "source")
    image = source.image()
    source.tag(image, "latest")

    await skopeo.copy(f"oci:{source.root}:latest", registry.ref("demo/app", "v1"))

    raw = await skopeo.inspect_raw(registry.ref("demo/app", "v1"))
    assert sha256_digest(raw) == image.manifest_digest, raw[:500]
    by_digest = await skopeo.inspect_raw(registry.ref("demo/app", image.manifest_digest))
    assert by_digest == image.manifest

    out = tmp_path / "out"
    await skopeo.copy(registry.ref("demo/app", "v1"), f"oci:{out}:latest")
    ref = read_layout(out, "latest")
    assert ref.media_type == OCI_MANIFEST
    assert ref.digest == image.manifest_digest
    assert_image_in_layout(out, image)


async def test_index_round_trip_all(tmp_path: Path, skopeo: Skopeo, registry: Registry) -> None:
    source = LayoutWriter(tmp_path / "source")
    index = source.index()
    source.tag(index, "latest")

    await skopeo.copy(f"oci:{source.root}:latest", registry.ref("demo/multi", "v1"), "--all")

    raw = await skopeo.inspect_raw(registry.ref("demo/multi", "v1"))
    assert sha256_digest(raw) == index.index_digest, raw[:500]
    for child in index.children:
        child_raw = await skopeo.inspect_raw(registry.ref("demo/multi", child.manifest_digest))
        assert child_raw == child.manifest

    out = tmp_path / "out"
    await skopeo.copy(registry.ref("demo/multi", "v1"), f"oci:{out}:latest", "--all")
    ref = read_layout(out, "latest")
    assert ref.media_type == OCI_INDEX
    assert ref.digest == index.index_digest
    assert ref.content == index.index
    for child in index.children:
        assert_image_in_layout(out, child)


async def test_list_tags(tmp_path: Path, skopeo: Skopeo, registry: Registry) -> None:
    source = LayoutWriter(tmp_path / "source")
    image = source.image(layer_sizes=(4096,))
    source.tag(image, "latest")
    for tag in ("v1", "v2"):
        await skopeo.copy(f"oci:{source.root}:latest", registry.ref("demo/tags", tag))

    listed = json.loads(
        await skopeo.run("list-tags", "--tls-verify=false", f"docker://{registry.host}/demo/tags")
    )
    assert listed["Repository"] == f"{registry.host}/demo/tags"
    assert sorted(listed["Tags"]) == ["v1", "v2"]


@pytest.mark.parametrize("kind", ["image", "index"])
@pytest.mark.parametrize("direction", ["origin-to-distribution", "distribution-to-origin"])
async def test_copy_between_registries(
    tmp_path: Path,
    skopeo: Skopeo,
    origin: Registry,
    distribution: Registry,
    kind: str,
    direction: str,
) -> None:
    """Registry to registry: what one serves, the other accepts, and digests are unchanged."""
    first, second = (
        (origin, distribution) if direction == "origin-to-distribution" else (distribution, origin)
    )
    source = LayoutWriter(tmp_path / "source")
    target = source.image() if kind == "image" else source.index()
    source.tag(target, "latest")
    digest = target.manifest_digest if isinstance(target, Image) else target.index_digest

    await skopeo.copy(f"oci:{source.root}:latest", first.ref("demo/app", "v1"), "--all")
    await skopeo.copy(first.ref("demo/app", "v1"), second.ref("mirror/app", "v1"), "--all")

    raw = await skopeo.inspect_raw(second.ref("mirror/app", "v1"))
    assert sha256_digest(raw) == digest, raw[:500]
    if not isinstance(target, Image):
        for child in target.children:
            child_raw = await skopeo.inspect_raw(second.ref("mirror/app", child.manifest_digest))
            assert child_raw == child.manifest
