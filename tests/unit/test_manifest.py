import json

import pytest

from core import mediatypes
from core.errors import DigestInvalid, ManifestInvalid
from core.manifest import parse_manifest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def _image(**extra: object) -> dict[str, object]:
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D1,
            "size": 10,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 20}
        ],
    }
    document.update(extra)
    return document


def _bytes(document: object) -> bytes:
    return json.dumps(document).encode()


def test_image_manifest_references_config_and_layers() -> None:
    parsed = parse_manifest(_bytes(_image()), mediatypes.OCI_MANIFEST)
    assert parsed.media_type == mediatypes.OCI_MANIFEST
    assert [str(d.digest) for d in parsed.blobs] == [D1, D2]
    assert parsed.manifests == ()
    assert parsed.subject is None
    # No artifactType: the referrers API reports the config media type.
    assert parsed.artifact_type == "application/vnd.oci.image.config.v1+json"


def test_subject_artifact_type_and_annotations() -> None:
    document = _image(
        artifactType="application/example",
        subject={"mediaType": mediatypes.OCI_MANIFEST, "digest": D3, "size": 5},
        annotations={"a": "b"},
    )
    parsed = parse_manifest(_bytes(document), None)
    assert parsed.subject is not None and str(parsed.subject.digest) == D3
    assert parsed.artifact_type == "application/example"
    assert parsed.annotations == {"a": "b"}


def test_index_references_children() -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST_LIST,
        "manifests": [
            {
                "mediaType": mediatypes.DOCKER_MANIFEST,
                "digest": D1,
                "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    parsed = parse_manifest(_bytes(document), mediatypes.DOCKER_MANIFEST_LIST)
    assert parsed.media_type == mediatypes.DOCKER_MANIFEST_LIST
    assert [str(d.digest) for d in parsed.manifests] == [D1]
    assert parsed.blobs == ()


def test_media_type_detected_without_header_or_field() -> None:
    document = _image()
    del document["mediaType"]
    assert parse_manifest(_bytes(document), "application/json").media_type == (
        mediatypes.OCI_MANIFEST
    )


def test_foreign_layers_need_not_exist() -> None:
    document = _image()
    document["layers"] = [
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": D2,
            "size": 1,
            "urls": ["https://example.invalid/l"],
        }
    ]
    assert [str(d.digest) for d in parse_manifest(_bytes(document), None).blobs] == [D1]


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (b"not json", None),
        (b"[]", None),
        (_bytes({"schemaVersion": 1}), None),
        (_bytes(_image()), mediatypes.OCI_INDEX),  # mediaType contradicts Content-Type
        (_bytes(_image(layers="x")), None),
        (_bytes(_image(config={"digest": D1})), None),
        (_bytes(_image(config={"mediaType": "x", "digest": D1, "size": -1})), None),
        (_bytes(_image(annotations={"a": 1})), None),
        (_bytes({"schemaVersion": 2, "mediaType": "application/unknown"}), None),
        (b"\xff\xfe", None),
    ],
)
def test_invalid_manifests(payload: bytes, content_type: str | None) -> None:
    with pytest.raises(ManifestInvalid):
        parse_manifest(payload, content_type)


def test_bad_descriptor_digest_is_digest_invalid() -> None:
    document = _image(config={"mediaType": "x", "digest": "sha256:bad", "size": 1})
    with pytest.raises(DigestInvalid):
        parse_manifest(_bytes(document), None)
