"""What a relay job copies where, decided without I/O.

- **Targets**: the ``-t REGISTRY/REPO:TAG`` references, grouped by registry and then by
  repository, so each registry gets one client and each repository one pass that sets all
  of its tags (:func:`plan_targets`). Registries on 127.0.0.0/8 (and ``localhost``, ``::1``)
  and those in the ``insecure_registries`` setting are spoken to over plain HTTP, as Docker
  does; every other one over TLS (:func:`base_url`).
- **The build**: the manifests reachable from the build's root (children before the index
  that lists them, so a registry that checks references accepts every PUT), the blobs they
  and the build's referrers reference, each once, largest first so the parallel copy does not
  end waiting on one big layer started last (:func:`build_plan`).
- **The referrers tag schema**: for a target without the referrers API, the index of a
  subject's referrers is kept under the tag ``sha256-<hex>`` (OCI distribution spec,
  "Referrers Tag Schema"): :func:`fallback_tag`, :func:`fallback_index`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core import mediatypes
from core.digest import Digest
from core.errors import InputError
from core.image_reference import ImageReference
from core.manifest import ParsedManifest
from core.reference import RepositoryName, Tag

#: The most ``-t`` targets one job takes.
MAX_TARGETS = 32


@dataclass(frozen=True, slots=True)
class TargetRepository:
    name: RepositoryName
    tags: tuple[Tag, ...]
    label: str  # "registry/repository", as events name it


@dataclass(frozen=True, slots=True)
class TargetRegistry:
    registry: str  # as the user named it ("docker.io", "127.0.0.1:5000"): credentials key
    base_url: str  # scheme://host[:port] of its /v2/ API
    repositories: tuple[TargetRepository, ...]  # the first one is where mounts come from


def parse_insecure(setting: str) -> frozenset[str]:
    """The ``insecure_registries`` setting: comma-separated ``host[:port]``, lower-cased."""
    return frozenset(part.strip().lower() for part in setting.split(",") if part.strip())


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is on this machine: 127.0.0.0/8, ``::1`` or ``localhost``."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def base_url(api_host: str, insecure: frozenset[str]) -> str:
    """``http://`` for loopback and insecure registries (by host:port or bare host), else
    ``https://``."""
    host = api_host.lower()
    bare = urlsplit(f"//{host}").hostname or host
    plain = is_loopback(host) or host in insecure or bare in insecure
    return f"{'http' if plain else 'https'}://{host}"


def plan_targets(
    references: Sequence[ImageReference], insecure: frozenset[str]
) -> tuple[TargetRegistry, ...]:
    """Targets grouped by registry, then repository, in the order first named; a repeated
    tag is set once. ``InputError`` for no target, too many, or one without a tag."""
    if not references:
        raise InputError("no target: name at least one REGISTRY/REPOSITORY:TAG")
    if len(references) > MAX_TARGETS:
        raise InputError(f"at most {MAX_TARGETS} targets")
    registries: dict[str, dict[RepositoryName, list[Tag]]] = {}
    hosts: dict[str, str] = {}
    for reference in references:
        if reference.tag is None or reference.digest is not None:
            raise InputError(f"a target needs a tag and no digest: {reference}")
        repositories = registries.setdefault(reference.registry, {})
        hosts[reference.registry] = reference.api_host
        tags = repositories.setdefault(reference.repository, [])
        if reference.tag not in tags:
            tags.append(reference.tag)
    return tuple(
        TargetRegistry(
            registry,
            base_url(hosts[registry], insecure),
            tuple(
                TargetRepository(name, tuple(tags), f"{registry}/{name}")
                for name, tags in repositories.items()
            ),
        )
        for registry, repositories in registries.items()
    )


# -- the build ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceManifest:
    digest: Digest
    media_type: str
    payload: bytes
    parsed: ParsedManifest


@dataclass(frozen=True, slots=True)
class SourceBlob:
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class BuildPlan:
    root: SourceManifest
    children: tuple[SourceManifest, ...]  # every manifest below the root, each before its index
    referrers: tuple[SourceManifest, ...]  # each after its subject (which may be a referrer)
    blobs: tuple[SourceBlob, ...]  # distinct, largest first

    @property
    def total_bytes(self) -> int:
        return sum(blob.size for blob in self.blobs)


def build_plan(
    root: SourceManifest,
    children: Sequence[SourceManifest],
    referrers: Sequence[SourceManifest],
) -> BuildPlan:
    """``children`` in the order they were found walking down from the root (an index
    before its children): reversed here, so every child is pushed before its index."""
    ordered = tuple(reversed(_distinct(children)))
    listed = _distinct(referrers)
    sizes: dict[Digest, int] = {}
    for manifest in (root, *ordered, *listed):
        for descriptor in manifest.parsed.blobs:
            sizes.setdefault(descriptor.digest, descriptor.size)
    blobs = sorted(
        (SourceBlob(digest, size) for digest, size in sizes.items()),
        key=lambda blob: (-blob.size, str(blob.digest)),
    )
    return BuildPlan(root, ordered, listed, tuple(blobs))


def _distinct(manifests: Iterable[SourceManifest]) -> tuple[SourceManifest, ...]:
    seen: set[Digest] = set()
    kept = []
    for manifest in manifests:
        if manifest.digest not in seen:
            seen.add(manifest.digest)
            kept.append(manifest)
    return tuple(kept)


# -- the referrers tag schema -------------------------------------------------------------------


def fallback_tag(subject: Digest) -> Tag:
    """``<algorithm>-<encoded>``, cut to the 128 characters a tag may have."""
    return Tag(f"{subject.algorithm}-{subject.encoded}"[:128])


def referrer_descriptor(manifest: SourceManifest) -> dict[str, Any]:
    """The descriptor of ``manifest`` in a referrers list: with its artifact type (the config's
    media type when it declares none) and its annotations."""
    descriptor: dict[str, Any] = {
        "mediaType": manifest.media_type,
        "digest": str(manifest.digest),
        "size": len(manifest.payload),
    }
    if manifest.parsed.artifact_type:
        descriptor["artifactType"] = manifest.parsed.artifact_type
    if manifest.parsed.annotations:
        descriptor["annotations"] = dict(manifest.parsed.annotations)
    return descriptor


def fallback_index(existing: bytes | None, referrers: Sequence[SourceManifest]) -> bytes:
    """The referrers index to store under the subject's fallback tag: what the target had
    there (``existing``; ignored unless it is an index) plus ``referrers``, each digest once."""
    entries: list[dict[str, Any]] = []
    if existing is not None:
        try:
            document = json.loads(existing)
        except (ValueError, UnicodeDecodeError):
            document = None
        listed = document.get("manifests") if isinstance(document, dict) else None
        if isinstance(listed, list):
            entries = [
                e for e in listed if isinstance(e, dict) and isinstance(e.get("digest"), str)
            ]
    present = {entry["digest"] for entry in entries}
    for manifest in referrers:
        if str(manifest.digest) not in present:
            present.add(str(manifest.digest))
            entries.append(referrer_descriptor(manifest))
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": entries}
    return json.dumps(index, separators=(",", ":")).encode()
