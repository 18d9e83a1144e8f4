"""skopeo copies an image and a two-platform index into one origin and out of another, both
on one PostgreSQL database and one S3 bucket (moto): same digests, same bytes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from tests.interop.oci_layout import OCI_INDEX, LayoutWriter, read_layout, sha256_digest
from tests.interop.test_skopeo import assert_image_in_layout
from tests.many_origins import cluster

if TYPE_CHECKING:
    from tests.interop.conftest import Skopeo

pytestmark = [pytest.mark.interop, pytest.mark.postgres, pytest.mark.slow]


async def test_skopeo_in_through_one_origin_out_through_the_other(
    tmp_path: Path, skopeo: Skopeo
) -> None:
    source = LayoutWriter(tmp_path / "source")
    image = source.image(layer_sizes=(7 * 1024 * 1024, 4096))  # a big layer: S3 multipart
    index = source.index()
    source.tag(image, "image")
    source.tag(index, "index")
    with trio.fail_after(180):
        async with cluster(tmp_path / "cluster") as origins:
            async with origins.origin() as one, origins.origin() as two:
                await skopeo.copy(f"oci:{source.root}:image", f"docker://{one.host}/acme/app:v1")
                await skopeo.copy(
                    f"oci:{source.root}:index", f"docker://{one.host}/acme/multi:v1", "--all"
                )

                raw = await skopeo.inspect_raw(f"docker://{two.host}/acme/app:v1")
                assert sha256_digest(raw) == image.manifest_digest
                out = tmp_path / "out"
                await skopeo.copy(f"docker://{two.host}/acme/app:v1", f"oci:{out}:image")
                assert read_layout(out, "image").digest == image.manifest_digest
                assert_image_in_layout(out, image)

                await skopeo.copy(f"docker://{two.host}/acme/multi:v1", f"oci:{out}:index", "--all")
                ref = read_layout(out, "index")
                assert ref.media_type == OCI_INDEX
                assert ref.digest == index.index_digest
                for child in index.children:
                    assert_image_in_layout(out, child)
