"""Parsing pushed manifests: media type, the descriptors they reference, subject, artifact type.

The registry stores the exact bytes it received; this module only reads them to decide
whether they are acceptable and what they point at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core import mediatypes
from core.digest import Digest, parse_digest
from core.errors import DigestInvalid, ManifestInvalid

# Docker foreign layers live elsewhere (their ``urls``); they are not required to be pushed.
_FOREIGN_LAYERS = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    blobs: tuple[Descriptor, ...]  # config + layers that must exist in the repository
    manifests: tuple[Descriptor, ...]  # index children that must exist in the repository
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} is not a descriptor")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where} has no mediaType")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where} has no digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where} has an invalid size")
    try:
        parsed = parse_digest(digest)
    except DigestInvalid as exc:
        raise DigestInvalid(f"{where} has an invalid digest", detail=exc.detail) from exc
    return Descriptor(media_type, parsed, size)


def _descriptor_list(value: Any, where: str) -> list[Descriptor]:
    if not isinstance(value, list):
        raise ManifestInvalid(f"{where} must be a list")
    return [_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _detect_media_type(content_type: str | None, document: dict[str, Any]) -> str:
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    header = (content_type or "").split(";", 1)[0].strip().lower()
    if header in mediatypes.MANIFESTS:
        if declared is not None and declared != header:
            raise ManifestInvalid(
                "mediaType does not match Content-Type",
                detail={"mediaType": declared, "contentType": header},
            )
        return header
    if declared in mediatypes.MANIFESTS:
        return declared
    if declared is None:
        if "manifests" in document:
            return mediatypes.OCI_INDEX
        if "config" in document and "layers" in document:
            return mediatypes.OCI_MANIFEST
    raise ManifestInvalid("unsupported manifest media type", detail={"mediaType": declared})


def parse_manifest(payload: bytes, content_type: str | None) -> ParsedManifest:
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: deep nesting
        raise ManifestInvalid("manifest is not valid JSON") from exc
    if not isinstance(document, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    if document.get("schemaVersion") != 2:
        raise ManifestInvalid("unsupported schemaVersion")
    media_type = _detect_media_type(content_type, document)

    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    annotations = document.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
    ):
        raise ManifestInvalid("annotations must map strings to strings")
    subject = (
        _descriptor(document["subject"], "subject") if document.get("subject") is not None else None
    )

    blobs: list[Descriptor] = []
    children: list[Descriptor] = []
    if media_type in mediatypes.INDEXES:
        children = _descriptor_list(document.get("manifests"), "manifests")
    else:
        config = _descriptor(document.get("config"), "config")
        layers = _descriptor_list(document.get("layers"), "layers")
        blobs = [config, *(layer for layer in layers if layer.media_type not in _FOREIGN_LAYERS)]
        if artifact_type is None:
            # The referrers API reports config.mediaType when artifactType is absent.
            artifact_type = config.media_type
    if artifact_type is not None and not _is_utf8(artifact_type):
        raise ManifestInvalid("artifactType is not valid UTF-8 text")
    return ParsedManifest(
        media_type=media_type,
        blobs=tuple(blobs),
        manifests=tuple(children),
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def _is_utf8(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates such as "\\ud800")."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
