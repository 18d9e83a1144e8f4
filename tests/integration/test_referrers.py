"""The referrers API: an image index of the manifests whose ``subject`` is a digest."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.integration.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    TIMEOUT,
    Manifest,
    config_blob,
    guarded,
    image_manifest,
    index_manifest,
    new_artifact,
    new_image,
    push_manifest,
    random_blob,
)

SBOM = "application/vnd.example.sbom.v1+json"
SIGNATURE = "application/vnd.example.signature.v1+json"


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


async def referrers(
    http: httpx.AsyncClient, repo: str, digest: str, **params: str
) -> tuple[httpx.Response, list[dict[str, object]]]:
    response = await http.get(f"/v2/{repo}/referrers/{digest}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == OCI_INDEX
    body = response.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    assert set(body) == {"schemaVersion", "mediaType", "manifests"}
    return response, body["manifests"]


def descriptor(manifest: Manifest, artifact_type: str, **annotations: str) -> dict[str, object]:
    entry: dict[str, object] = {
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": manifest.size,
        "artifactType": artifact_type,
    }
    if annotations:
        entry["annotations"] = annotations
    return entry


async def test_no_referrers(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        subject = new_image()
        await push_manifest(http, "lib/app", subject, "v1")
        response, manifests = await referrers(http, "lib/app", subject.digest)
        assert manifests == []
        assert "OCI-Filters-Applied" not in response.headers
        # A subject the repository has never seen has no referrers either.
        _, manifests = await referrers(http, "lib/app", new_image().digest)
        assert manifests == []
        _, manifests = await referrers(http, "lib/app", new_image().digest, artifactType=SBOM)
        assert manifests == []


async def test_referrers_listed_and_filtered(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        subject = new_image()
        await push_manifest(http, "lib/app", subject, "v1")
        sbom = new_artifact(SBOM, subject, annotations={"org.example.kind": "sbom"})
        signature = new_artifact(
            SIGNATURE,
            subject,
            annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "x": "y"},
        )
        for artifact in (sbom, signature):
            pushed = await push_manifest(http, "lib/app", artifact)
            assert str(pushed.subject) == subject.digest  # the client reads OCI-Subject
        # An unrelated manifest with a different subject is not listed.
        await push_manifest(http, "lib/app", new_artifact(SBOM, new_image()))

        response, manifests = await referrers(http, "lib/app", subject.digest)
        expected = [
            descriptor(sbom, SBOM, **{"org.example.kind": "sbom"}),
            descriptor(
                signature,
                SIGNATURE,
                **{"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "x": "y"},
            ),
        ]
        assert sorted(manifests, key=lambda d: str(d["digest"])) == sorted(
            expected, key=lambda d: str(d["digest"])
        )
        assert "OCI-Filters-Applied" not in response.headers

        response, manifests = await referrers(http, "lib/app", subject.digest, artifactType=SBOM)
        assert manifests == [expected[0]]
        assert response.headers["OCI-Filters-Applied"] == "artifactType"

        response, manifests = await referrers(
            http, "lib/app", subject.digest, artifactType="application/x.none"
        )
        assert manifests == []
        assert response.headers["OCI-Filters-Applied"] == "artifactType"


async def test_referrers_before_subject_exists(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        subject = new_image()
        artifact = new_artifact(SBOM, subject)
        await push_manifest(http, "lib/app", artifact)
        _, manifests = await referrers(http, "lib/app", subject.digest)
        assert manifests == [descriptor(artifact, SBOM)]
        await push_manifest(http, "lib/app", subject, "v1")
        _, manifests = await referrers(http, "lib/app", subject.digest)
        assert manifests == [descriptor(artifact, SBOM)]


async def test_artifact_type_defaults_to_config_media_type(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        subject = new_image()
        config = config_blob("application/vnd.example.config.v1+json")
        image = image_manifest(config, [random_blob()], subject=subject)
        await push_manifest(http, "lib/app", image)
        _, manifests = await referrers(http, "lib/app", subject.digest)
        assert manifests == [descriptor(image, "application/vnd.example.config.v1+json")]
        assert image.media_type == OCI_MANIFEST


async def test_index_as_referrer(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        subject = new_image()
        child = new_image()
        index = index_manifest(
            [child], subject=subject, artifact_type=SIGNATURE, annotations={"a": "b"}
        )
        await push_manifest(http, "lib/app", index)
        _, manifests = await referrers(http, "lib/app", subject.digest)
        assert manifests == [descriptor(index, SIGNATURE, a="b")]


async def test_referrers_are_per_repository(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        subject = new_image()
        await push_manifest(http, "lib/app", subject)
        await push_manifest(http, "lib/app", new_artifact(SBOM, subject))
        await push_manifest(http, "lib/other", subject)
        _, manifests = await referrers(http, "lib/other", subject.digest)
        assert manifests == []


async def test_deleted_referrer_disappears(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        subject = new_image()
        await push_manifest(http, "lib/app", subject)
        sbom, signature = new_artifact(SBOM, subject), new_artifact(SIGNATURE, subject)
        await push_manifest(http, "lib/app", sbom)
        await push_manifest(http, "lib/app", signature)
        response = await http.delete(f"/v2/lib/app/manifests/{sbom.digest}")
        assert response.status_code == 202
        _, manifests = await referrers(http, "lib/app", subject.digest)
        assert manifests == [descriptor(signature, SIGNATURE)]


async def test_referrers_of_unknown_repository(http: httpx.AsyncClient) -> None:
    """ "The registry MUST NOT return a 404 Not Found to a referrers API request": an
    unknown repository has no referrers."""
    with trio.fail_after(TIMEOUT):
        response, manifests = await referrers(http, "lib/unknown", new_image().digest)
        assert manifests == []
        assert "OCI-Filters-Applied" not in response.headers
