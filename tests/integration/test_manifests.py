"""Manifests: push by tag and digest for every supported media type, validation, size limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from tests.integration.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    TIMEOUT,
    Manifest,
    assert_error,
    config_blob,
    encode,
    guarded,
    image_manifest,
    index_manifest,
    new_artifact,
    new_image,
    push_blob,
    push_manifest,
    push_prerequisites,
    put_manifest,
    random_blob,
    sha256_digest,
)

MAX_MANIFEST = 4 * 1024 * 1024


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


def new_manifest(kind: str) -> Manifest:
    if kind == "oci-image":
        return new_image(layers=2)
    if kind == "docker-image":
        return new_image(layers=2, docker=True)
    if kind == "oci-index":
        return index_manifest([new_image(), new_image(docker=True)])
    assert kind == "docker-list"
    return index_manifest(
        [new_image(docker=True), new_image(docker=True)], media_type=DOCKER_MANIFEST_LIST
    )


def assert_pushed(response: httpx.Response, manifest: Manifest) -> None:
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == manifest.digest


async def assert_manifest(
    http: httpx.AsyncClient, repo: str, reference: str, manifest: Manifest
) -> None:
    response = await http.get(f"/v2/{repo}/manifests/{reference}")
    assert response.status_code == 200, response.text
    assert response.content == manifest.payload
    assert response.headers["Content-Type"] == manifest.media_type
    assert response.headers["Docker-Content-Digest"] == manifest.digest
    assert response.headers["Content-Length"] == str(manifest.size)

    head = await http.head(f"/v2/{repo}/manifests/{reference}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Type"] == manifest.media_type
    assert head.headers["Docker-Content-Digest"] == manifest.digest
    assert head.headers["Content-Length"] == str(manifest.size)


KINDS = ["oci-image", "docker-image", "oci-index", "docker-list"]


@pytest.mark.parametrize("kind", KINDS)
async def test_push_by_tag(http: httpx.AsyncClient, kind: str) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_manifest(kind)
        await push_prerequisites(http, "lib/app", manifest)
        response = await put_manifest(http, "lib/app", "v1", manifest)
        assert_pushed(response, manifest)
        assert response.headers["Location"] == f"/v2/lib/app/manifests/{manifest.digest}"
        assert "OCI-Subject" not in response.headers
        assert response.content == b""
        await assert_manifest(http, "lib/app", "v1", manifest)
        await assert_manifest(http, "lib/app", manifest.digest, manifest)


@pytest.mark.parametrize("kind", KINDS)
async def test_push_by_digest(http: httpx.AsyncClient, kind: str) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_manifest(kind)
        await push_prerequisites(http, "lib/app", manifest)
        response = await put_manifest(http, "lib/app", manifest.digest, manifest)
        assert_pushed(response, manifest)
        assert response.headers["Location"] == f"/v2/lib/app/manifests/{manifest.digest}"
        await assert_manifest(http, "lib/app", manifest.digest, manifest)
        tags = await http.get("/v2/lib/app/tags/list")
        assert tags.json() == {"name": "lib/app", "tags": []}


async def test_push_is_idempotent_and_tags_move(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        first, second = new_image(), new_image()
        await push_manifest(http, "lib/app", first, "latest")
        await push_manifest(http, "lib/app", first, "latest")
        await push_manifest(http, "lib/app", second, "latest")
        await assert_manifest(http, "lib/app", "latest", second)
        await assert_manifest(http, "lib/app", first.digest, first)


async def test_media_type_from_document(http: httpx.AsyncClient) -> None:
    """Without a Content-Type the manifest's own mediaType decides."""
    with trio.fail_after(TIMEOUT):
        manifest = new_image(docker=True)
        for blob in manifest.blobs:
            await push_blob(http, "lib/app", blob)
        response = await http.put("/v2/lib/app/manifests/v1", content=manifest.payload)
        assert response.status_code == 201, response.text
        await assert_manifest(http, "lib/app", "v1", manifest)


async def test_missing_layer(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        config, layer, missing = config_blob(), random_blob(), random_blob()
        manifest = image_manifest(config, [layer, missing])
        for blob in (config, layer):
            await push_blob(http, "lib/app", blob)
        response = await put_manifest(http, "lib/app", "v1", manifest)
        error = assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert missing.digest in json.dumps(error["detail"])
        assert_error(await http.get("/v2/lib/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_missing_config(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        layer = random_blob()
        await push_blob(http, "lib/app", layer)
        manifest = image_manifest(config_blob(), [layer])
        response = await put_manifest(http, "lib/app", manifest.digest, manifest)
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_blob_of_another_repository_is_missing(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_image()
        for blob in manifest.blobs:
            await push_blob(http, "lib/other", blob)
        await push_blob(http, "lib/app", random_blob(1))
        for repo in ("lib/app", "lib/new"):
            response = await put_manifest(http, repo, "v1", manifest)
            assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
async def test_index_child_missing(http: httpx.AsyncClient, media_type: str) -> None:
    with trio.fail_after(TIMEOUT):
        present, missing = new_image(docker=True), new_image(docker=True)
        await push_manifest(http, "lib/app", present)
        index = index_manifest([present, missing], media_type=media_type)
        response = await put_manifest(http, "lib/app", "v1", index)
        error = assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert missing.digest in json.dumps(error["detail"])
        # A blob with the child's digest is not a manifest.
        response = await http.post(
            "/v2/lib/app/blobs/uploads/",
            params={"digest": missing.digest},
            content=missing.payload,
        )
        assert response.status_code == 201
        response = await put_manifest(http, "lib/app", "v1", index)
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_subject_may_be_missing(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        subject = new_image()  # never pushed
        artifact = new_artifact("application/vnd.example.sbom", subject)
        await push_prerequisites(http, "lib/app", artifact)
        response = await put_manifest(http, "lib/app", artifact.digest, artifact)
        assert_pushed(response, artifact)
        assert response.headers["OCI-Subject"] == subject.digest
        await assert_manifest(http, "lib/app", artifact.digest, artifact)

        index = index_manifest([artifact], subject=subject, artifact_type="application/x.list")
        await push_prerequisites(http, "lib/app", index)
        response = await put_manifest(http, "lib/app", "sbom-list", index)
        assert_pushed(response, index)
        assert response.headers["OCI-Subject"] == subject.digest


async def test_digest_mismatch(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest, other = new_image(), new_image()
        await push_manifest(http, "lib/app", other)
        for blob in manifest.blobs:
            await push_blob(http, "lib/app", blob)
        response = await put_manifest(http, "lib/app", other.digest, manifest)
        assert_error(response, 400, "DIGEST_INVALID")
        await assert_manifest(http, "lib/app", other.digest, other)
        response = await http.put(
            f"/v2/lib/app/manifests/sha512:{'ab' * 64}",
            content=manifest.payload,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert_error(response, 400, "DIGEST_INVALID")


MALFORMED = [
    b"",
    b"{",
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'"text"',
    b"{}",
    b'{"schemaVersion": 1}',
    b'{"schemaVersion": 2, "mediaType": "application/x.unknown"}',
    b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'"}',
    b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "config": 5}',
    b'{"schemaVersion": 2, "mediaType": "' + OCI_INDEX.encode() + b'", "manifests": {}}',
    b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "config": '
    b'{"mediaType": "a/b", "digest": "sha256:00", "size": "big"}, "layers": []}',
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the JSON parser recurses
    b'{"schemaVersion": 2, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
]


async def test_malformed_manifest(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for payload in MALFORMED:
            for reference in ("v1", sha256_digest(payload)):
                response = await http.put(
                    f"/v2/lib/app/manifests/{reference}",
                    content=payload,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                assert_error(response, 400, "MANIFEST_INVALID")
        assert_error(await http.get("/v2/lib/app/manifests/v1"), 404, "NAME_UNKNOWN")


@pytest.mark.parametrize("field", ["artifactType", "configMediaType"])
async def test_text_that_is_not_utf8(http: httpx.AsyncClient, field: str) -> None:
    """JSON can escape a lone surrogate; no UTF-8 text holds one."""
    with trio.fail_after(TIMEOUT):
        await push_blob(http, "lib/app", EMPTY_CONFIG)
        config = EMPTY_CONFIG.descriptor()
        document: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if field == "artifactType":
            document["artifactType"] = "application/x.\ud800"
        else:
            config["mediaType"] = "application/x.\ud800"
        document["config"] = config
        document["layers"] = []
        payload = json.dumps(document).encode()  # ensure_ascii writes the escape
        assert b"\\ud800" in payload
        response = await http.put(
            "/v2/lib/app/manifests/v1", content=payload, headers={"Content-Type": OCI_MANIFEST}
        )
        assert_error(response, 400, "MANIFEST_INVALID")
        # Elsewhere (annotations) such text is kept as pushed.
        document["annotations"] = {"k\ud800": "v"}
        document["config"] = EMPTY_CONFIG.descriptor()
        document.pop("artifactType", None)
        payload = json.dumps(document).encode()
        response = await http.put(
            "/v2/lib/app/manifests/v1", content=payload, headers={"Content-Type": OCI_MANIFEST}
        )
        assert response.status_code == 201, response.text


async def test_media_type_conflicts_with_content_type(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_image()
        for blob in manifest.blobs:
            await push_blob(http, "lib/app", blob)
        response = await http.put(
            "/v2/lib/app/manifests/v1",
            content=manifest.payload,
            headers={"Content-Type": DOCKER_MANIFEST},
        )
        assert_error(response, 400, "MANIFEST_INVALID")


async def test_invalid_layer_digest(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        config = config_blob()
        await push_blob(http, "lib/app", config)
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [{"mediaType": "a/b", "digest": "sha256:short", "size": 1}],
        }
        response = await http.put(
            "/v2/lib/app/manifests/v1",
            content=encode(document),
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert_error(response, 400, "DIGEST_INVALID")


def padded_manifest(config_digest_source: Manifest, size: int) -> Manifest:
    """``config_digest_source``'s blobs in a manifest padded to exactly ``size`` bytes."""
    config, *layers = config_digest_source.blobs
    base = image_manifest(config, layers, annotations={"pad": ""})
    padding = size - base.size
    assert padding > 0
    return image_manifest(config, layers, annotations={"pad": "x" * padding})


@pytest.mark.parametrize("size", [4_000_000, MAX_MANIFEST])
async def test_large_manifest_accepted(http: httpx.AsyncClient, size: int) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = padded_manifest(new_image(), size)
        assert manifest.size == size
        await push_manifest(http, "lib/app", manifest, "big")
        await assert_manifest(http, "lib/app", "big", manifest)


async def test_manifest_too_large(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        source = new_image()
        for blob in source.blobs:
            await push_blob(http, "lib/app", blob)
        manifest = padded_manifest(source, MAX_MANIFEST + 1)
        response = await put_manifest(http, "lib/app", "big", manifest)
        assert_error(response, 413, "SIZE_INVALID")

        async def stream() -> AsyncIterator[bytes]:
            for start in range(0, manifest.size, 1 << 20):
                yield manifest.payload[start : start + (1 << 20)]

        response = await http.put(
            "/v2/lib/app/manifests/big", content=stream(), headers={"Content-Type": OCI_MANIFEST}
        )
        assert_error(response, 413, "SIZE_INVALID")
        assert_error(await http.get("/v2/lib/app/manifests/big"), 404, "MANIFEST_UNKNOWN")


async def test_unknown_manifest(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_image()
        await push_manifest(http, "lib/app", manifest, "v1")
        for method in ("GET", "HEAD"):
            response = await http.request(method, "/v2/lib/app/manifests/v2")
            assert_error(response, 404, "MANIFEST_UNKNOWN")
            response = await http.request(method, f"/v2/lib/app/manifests/{new_image().digest}")
            assert_error(response, 404, "MANIFEST_UNKNOWN")
            # A blob's digest is not a manifest.
            digest = manifest.blobs[0].digest
            response = await http.request(method, f"/v2/lib/app/manifests/{digest}")
            assert_error(response, 404, "MANIFEST_UNKNOWN")
            # Manifests are per repository.
            response = await http.request(method, f"/v2/lib/unknown/manifests/{manifest.digest}")
            assert_error(response, 404, "NAME_UNKNOWN")
            response = await http.request(method, "/v2/lib/unknown/manifests/v1")
            assert_error(response, 404, "NAME_UNKNOWN")


async def test_invalid_tag(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        manifest = new_image()
        for blob in manifest.blobs:
            await push_blob(http, "lib/app", blob)
        for tag in ("-bad", ".bad", "a" * 129, "bad+tag", "bad%25tag"):
            await check_invalid_tag(http, manifest, tag)


async def check_invalid_tag(http: httpx.AsyncClient, manifest: Manifest, tag: str) -> None:
    response = await put_manifest(http, "lib/app", tag, manifest)
    assert_error(response, 400, "MANIFEST_INVALID")
    # Reading one is a client error too (which one is not pinned down by the spec).
    response = await http.get(f"/v2/lib/app/manifests/{tag}")
    assert response.status_code in (400, 404), tag
    assert_error(response, response.status_code, response.json()["errors"][0]["code"])
