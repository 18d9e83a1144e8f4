"""Building blobs and manifests and pushing them over HTTP, for the integration tests.

Everything here speaks plain OCI Distribution to whatever ``httpx.AsyncClient`` it is given;
nothing reaches into the origin's internals. Valid pushes go through the project's registry
client (:func:`registry` wraps the given httpx client, so its base URL, headers and hooks
apply); the raw helpers (:func:`start_upload`, :func:`put_manifest`, :func:`chunked`) stay for
tests that check the server's answers themselves or send it malformed requests.
:func:`guarded` makes a client fail the test on any 5xx answer: a 500 on client input is
always a bug.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from core.client.registry import PushedManifest, RegistryClient
from core.digest import parse_digest
from core.reference import parse_manifest_reference, parse_repository_name

#: Seconds every integration test body may take (``with trio.fail_after(TIMEOUT):``).
TIMEOUT = 30

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _fail_on_server_error(response: httpx.Response) -> None:
    if response.status_code >= 500:
        await response.aread()
        request = response.request
        raise AssertionError(
            f"{request.method} {request.url} answered {response.status_code}: {response.text[:500]}"
        )


def guarded(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Make every response of ``client`` with a 5xx status fail the test (idempotent)."""
    hooks = client.event_hooks
    if _fail_on_server_error not in hooks["response"]:
        hooks["response"] = [*hooks["response"], _fail_on_server_error]
        client.event_hooks = hooks
    return client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """``response`` is ``status`` with the OCI error envelope naming ``code``.

    HEAD answers carry no body; for the others the envelope is checked field by field.
    Returns the matching error entry ({} for HEAD).
    """
    request = response.request
    where = f"{request.method} {request.url}"
    text = "" if request.method == "HEAD" else response.text[:500]
    assert response.status_code == status, (where, response.status_code, text)
    assert response.headers["Content-Type"] == "application/json", where
    if request.method == "HEAD":
        assert response.content == b"", where
        return {}
    body = response.json()
    assert isinstance(body, dict) and list(body) == ["errors"], (where, body)
    errors = body["errors"]
    assert isinstance(errors, list) and errors, (where, body)
    for entry in errors:
        assert set(entry) == {"code", "message", "detail"}, (where, entry)
        assert isinstance(entry["code"], str) and isinstance(entry["message"], str), where
        assert entry["message"], (where, entry)
    codes = [entry["code"] for entry in errors]
    assert code in codes, (where, body)
    return dict(errors[codes.index(code)])


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str = OCI_LAYER

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}

    async def source(self, offset: int) -> AsyncIterator[bytes]:
        """The bytes from ``offset``, as the registry client reads a blob to upload."""
        yield self.data[offset:]


def random_blob(size: int = 1024, media_type: str = OCI_LAYER) -> Blob:
    return Blob(os.urandom(size), media_type)


def config_blob(media_type: str = OCI_CONFIG) -> Blob:
    """A small, unique image config."""
    document = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": {"nonce": os.urandom(8).hex()}},
    }
    return Blob(json.dumps(document).encode(), media_type)


EMPTY_CONFIG = Blob(b"{}", OCI_EMPTY)


@dataclass(frozen=True)
class Manifest:
    payload: bytes
    media_type: str
    blobs: tuple[Blob, ...] = ()  # what must be pushed first
    children: tuple[Manifest, ...] = ()

    @property
    def digest(self) -> str:
        return sha256_digest(self.payload)

    @property
    def size(self) -> int:
        return len(self.payload)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


def encode(document: dict[str, Any]) -> bytes:
    """Indented JSON: the registry must keep these exact bytes (never re-serialise)."""
    return json.dumps(document, indent=3).encode()


def image_manifest(
    config: Blob,
    layers: list[Blob],
    *,
    media_type: str = OCI_MANIFEST,
    subject: Manifest | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    document["config"] = config.descriptor()
    document["layers"] = [layer.descriptor() for layer in layers]
    if subject is not None:
        document["subject"] = subject.descriptor()
    if annotations is not None:
        document["annotations"] = annotations
    return Manifest(encode(document), media_type, blobs=(config, *layers))


def index_manifest(
    children: list[Manifest],
    *,
    media_type: str = OCI_INDEX,
    subject: Manifest | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    platform = {"architecture": "amd64", "os": "linux"}
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    document["manifests"] = [child.descriptor(platform=platform) for child in children]
    if subject is not None:
        document["subject"] = subject.descriptor()
    if annotations is not None:
        document["annotations"] = annotations
    return Manifest(encode(document), media_type, children=tuple(children))


def new_image(*, layers: int = 1, docker: bool = False, **kwargs: Any) -> Manifest:
    """A fresh image manifest (OCI, or Docker schema 2) over random layers."""
    if docker:
        config = config_blob(DOCKER_CONFIG)
        blobs = [random_blob(512 + i, DOCKER_LAYER) for i in range(layers)]
        return image_manifest(config, blobs, media_type=DOCKER_MANIFEST, **kwargs)
    blobs = [random_blob(512 + i) for i in range(layers)]
    return image_manifest(config_blob(), blobs, **kwargs)


def new_artifact(artifact_type: str, subject: Manifest, **kwargs: Any) -> Manifest:
    """An OCI 1.1 artifact: empty config, one layer, ``subject`` set."""
    layer = random_blob(64, "application/vnd.example.data")
    return image_manifest(
        EMPTY_CONFIG, [layer], artifact_type=artifact_type, subject=subject, **kwargs
    )


def upload_url(response: httpx.Response) -> str:
    location = response.headers["Location"]
    assert location, response.headers
    return location


async def start_upload(client: httpx.AsyncClient, repo: str) -> httpx.Response:
    response = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return response


def registry(client: httpx.AsyncClient) -> RegistryClient:
    """The registry client over ``client``: its base URL, default headers (credentials) and
    event hooks (:func:`guarded`) apply to every request."""
    return RegistryClient(client)


async def push_blob(client: httpx.AsyncClient, repo: str, blob: Blob) -> None:
    """Monolithic push through the registry client: POST, then PUT ?digest= with the whole
    body (the client checks the 201 and the digest the registry announces)."""
    await registry(client).upload_blob(
        parse_repository_name(repo), parse_digest(blob.digest), blob.size, blob.source
    )


async def push_blob_raw(client: httpx.AsyncClient, repo: str, blob: Blob) -> httpx.Response:
    """A raw monolithic push (POST, then PUT ?digest=) asserting the 201 and the digest; the
    answer for a test that checks more of it."""
    started = await start_upload(client, repo)
    response = await client.put(
        upload_url(started),
        params={"digest": blob.digest},
        content=blob.data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == blob.digest
    return response


async def put_manifest(
    client: httpx.AsyncClient, repo: str, reference: str, manifest: Manifest
) -> httpx.Response:
    """A raw manifest PUT: the test judges the answer."""
    return await client.put(
        f"/v2/{repo}/manifests/{reference}",
        content=manifest.payload,
        headers={"Content-Type": manifest.media_type},
    )


async def push_prerequisites(client: httpx.AsyncClient, repo: str, manifest: Manifest) -> None:
    """Push what ``manifest`` needs first: its blobs and child manifests."""
    for blob in manifest.blobs:
        await push_blob(client, repo, blob)
    for child in manifest.children:
        await push_manifest(client, repo, child)


async def push_manifest(
    client: httpx.AsyncClient, repo: str, manifest: Manifest, reference: str | None = None
) -> PushedManifest:
    """Push the blobs and child manifests ``manifest`` needs, then the manifest itself (by
    digest unless ``reference`` is given), through the registry client."""
    await push_prerequisites(client, repo, manifest)
    pushed = await registry(client).put_manifest(
        parse_repository_name(repo),
        parse_manifest_reference(reference or manifest.digest),
        manifest.payload,
        manifest.media_type,
    )
    assert str(pushed.digest) == manifest.digest
    return pushed


async def chunked(*pieces: bytes) -> AsyncIterator[bytes]:
    """A request body httpx sends with ``Transfer-Encoding: chunked`` (no Content-Length),
    as docker does for a streamed blob PATCH."""
    for piece in pieces:
        yield piece
