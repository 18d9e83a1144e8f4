"""The relay's plan (edge/relay/plan.py): targets grouped, plain HTTP only where Docker would
use it, the build's manifests and blobs in push order, the referrers tag schema."""

from __future__ import annotations

import json

import pytest

from core.digest import parse_digest, sha256_of
from core.errors import InputError
from core.image_reference import parse_image_reference
from core.manifest import parse_manifest
from core.reference import Tag
from edge.relay.plan import (
    SourceManifest,
    base_url,
    build_plan,
    fallback_index,
    fallback_tag,
    parse_insecure,
    plan_targets,
)
from tests.integration.oci import Manifest as OciManifest
from tests.integration.oci import (
    config_blob,
    image_manifest,
    index_manifest,
    new_artifact,
    random_blob,
)


def source(manifest: OciManifest) -> SourceManifest:
    return SourceManifest(
        parse_digest(manifest.digest),
        manifest.media_type,
        manifest.payload,
        parse_manifest(manifest.payload, manifest.media_type),
    )


def test_targets_grouped_by_registry_then_repository() -> None:
    references = [
        parse_image_reference(text)
        for text in (
            "127.0.0.1:5000/team/app:v1",
            "ghcr.io/o/app:v1",
            "127.0.0.1:5000/team/app:latest",
            "127.0.0.1:5000/mirror/app:v1",
            "127.0.0.1:5000/team/app:v1",  # repeated: set once
            "team/app:v2",
        )
    ]
    planned = plan_targets(references, frozenset())
    assert [t.registry for t in planned] == ["127.0.0.1:5000", "ghcr.io", "docker.io"]
    local = planned[0]
    assert local.base_url == "http://127.0.0.1:5000"
    assert [(r.name.value, r.tags, r.label) for r in local.repositories] == [
        ("team/app", (Tag("v1"), Tag("latest")), "127.0.0.1:5000/team/app"),
        ("mirror/app", (Tag("v1"),), "127.0.0.1:5000/mirror/app"),
    ]
    assert planned[1].base_url == "https://ghcr.io"
    assert planned[2].base_url == "https://registry-1.docker.io"
    assert planned[2].repositories[0].label == "docker.io/team/app"


def test_targets_refused() -> None:
    with pytest.raises(InputError):
        plan_targets([], frozenset())
    digest = parse_image_reference(f"r.example/app@sha256:{'0' * 64}")
    with pytest.raises(InputError):
        plan_targets([digest], frozenset())
    with pytest.raises(InputError):
        plan_targets([parse_image_reference(f"r.example/a:{i}") for i in range(33)], frozenset())


@pytest.mark.parametrize(
    ("host", "insecure", "url"),
    [
        ("127.0.0.1:5000", "", "http://127.0.0.1:5000"),
        ("127.8.9.10", "", "http://127.8.9.10"),
        ("localhost:5000", "", "http://localhost:5000"),
        ("[::1]:5000", "", "http://[::1]:5000"),
        ("10.0.0.1:5000", "", "https://10.0.0.1:5000"),
        ("registry.example", "", "https://registry.example"),
        ("registry.example:5000", "registry.example:5000", "http://registry.example:5000"),
        (
            "registry.example:5000",
            "other.example, registry.example",
            "http://registry.example:5000",
        ),
        ("registry.example:5000", "registry.example:6000", "https://registry.example:5000"),
        ("Registry.Example", "registry.example", "http://registry.example"),
    ],
)
def test_plain_http_only_for_loopback_and_insecure_registries(
    host: str, insecure: str, url: str
) -> None:
    assert base_url(host, parse_insecure(insecure)) == url


def test_build_plan_orders_children_first_and_lists_each_blob_once() -> None:
    shared = random_blob(100)
    amd = image_manifest(config_blob(), [shared, random_blob(5000)])
    arm = image_manifest(config_blob(), [shared, random_blob(3000)])
    index = index_manifest([amd, arm])
    sbom = new_artifact("application/vnd.example.sbom", index)
    plan = build_plan(source(index), [source(amd), source(arm)], [source(sbom)])
    assert [str(m.digest) for m in plan.children] == [arm.digest, amd.digest]
    assert [str(m.digest) for m in plan.referrers] == [sbom.digest]
    digests = [str(blob.digest) for blob in plan.blobs]
    expected = {b.digest for m in (amd, arm, sbom) for b in m.blobs}
    assert sorted(digests) == sorted(expected)  # each once
    sizes = [blob.size for blob in plan.blobs]
    assert sizes == sorted(sizes, reverse=True)  # largest first
    distinct = {b.digest: b.size for m in (amd, arm, sbom) for b in m.blobs}
    assert plan.total_bytes == sum(distinct.values())


def test_fallback_tag_and_index() -> None:
    subject = sha256_of(b"subject")
    assert fallback_tag(subject) == Tag(f"sha256-{subject.encoded}")
    index = image_manifest(config_blob(), [random_blob(10)])
    sbom = new_artifact("application/vnd.example.sbom", index, annotations={"k": "v"})
    signature = new_artifact("application/vnd.example.sig", index)
    existing = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": sbom.media_type, "digest": sbom.digest, "size": sbom.size},
                {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": 3},
                "junk",
            ],
        }
    ).encode()
    merged = json.loads(fallback_index(existing, [source(sbom), source(signature)]))
    assert merged["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["digest"] for m in merged["manifests"]] == [
        sbom.digest,  # already listed: kept as the target had it
        "sha256:" + "1" * 64,
        signature.digest,
    ]
    assert merged["manifests"][2] == {
        "mediaType": signature.media_type,
        "digest": signature.digest,
        "size": signature.size,
        "artifactType": "application/vnd.example.sig",
    }
    fresh = json.loads(fallback_index(b"not json", [source(sbom)]))
    assert fresh["manifests"] == [
        {
            "mediaType": sbom.media_type,
            "digest": sbom.digest,
            "size": sbom.size,
            "artifactType": "application/vnd.example.sbom",
            "annotations": {"k": "v"},
        }
    ]
