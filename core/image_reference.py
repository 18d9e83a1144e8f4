"""Image references the way Docker reads them: ``[REGISTRY/]REPOSITORY[:TAG][@DIGEST]``.

The first component of the name is the registry when it looks like a host (it holds a ``.``
or a ``:``, or is ``localhost``); otherwise the image is on Docker Hub (``docker.io``), where
one-component names live under ``library/``. So ``ubuntu`` is
``docker.io/library/ubuntu:latest`` and ``127.0.0.1:5000/team/app:v1`` is repository
``team/app`` on ``127.0.0.1:5000``.

Used by the ``depot push`` relay on both sides: the CLI, to pick the credentials of each
target's registry, and the edge, to know where to push. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.digest import Digest, parse_digest
from core.errors import DigestInvalid, InputError, ManifestInvalid, NameInvalid
from core.reference import RepositoryName, Tag, parse_repository_name, parse_tag

DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API answers (``docker.io`` is only its name).
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = Tag("latest")
_DOCKER_HUB_NAMES = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})


class ImageReferenceInvalid(InputError):
    """Not an image reference."""


@dataclass(frozen=True, slots=True)
class ImageReference:
    registry: str  # host[:port], lower case; "docker.io" for Docker Hub
    repository: RepositoryName
    tag: Tag | None
    digest: Digest | None

    @property
    def api_host(self) -> str:
        """The host[:port] whose ``/v2/`` serves this registry."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository``, with no tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def normalise_registry(host: str) -> str:
    """The name a registry's credentials are kept under: ``host[:port]`` in lower case, and
    ``docker.io`` for every name of Docker Hub."""
    name = host.strip().lower()
    return DOCKER_HUB if name in _DOCKER_HUB_NAMES else name


def _is_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def parse_image_reference(text: str, *, default_tag: Tag | None = DEFAULT_TAG) -> ImageReference:
    """Parse ``text`` as Docker does; ``default_tag`` when it names neither tag nor digest.

    ``ImageReferenceInvalid`` (an ``InputError``) when it is not a reference.
    """
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw):
        raise ImageReferenceInvalid(f"not an image reference: {text[:300]!r}")
    remainder, at, digest_text = raw.partition("@")
    digest: Digest | None = None
    if at:
        try:
            digest = parse_digest(digest_text)
        except DigestInvalid as exc:
            raise ImageReferenceInvalid(f"invalid digest in {text[:300]!r}") from exc
    tag: Tag | None = None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag_text = remainder[:colon], remainder[colon + 1 :]
        try:
            tag = parse_tag(tag_text)
        except ManifestInvalid as exc:
            raise ImageReferenceInvalid(f"invalid tag {tag_text[:130]!r} in {text!r}") from exc
    first, sep, rest = remainder.partition("/")
    if sep and _is_registry(first):
        registry, path = first.lower(), rest
    else:
        registry, path = DOCKER_HUB, remainder
    registry = normalise_registry(registry)
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    try:
        repository = parse_repository_name(path)
    except NameInvalid as exc:
        raise ImageReferenceInvalid(
            f"invalid repository name {path[:300]!r} (lower case, digits, . _ - and /)"
        ) from exc
    if tag is None and digest is None:
        tag = default_tag
    return ImageReference(registry, repository, tag, digest)
