"""The body of ``POST /api/v1/relay/jobs``, parsed into typed values (pure)::

    {"source": {"repository": "<project-id>", "reference": "<build-id | save-tag | digest>"},
     "targets": ["registry.example/team/app:v1", "registry.example/team/app:latest"],
     "credentials": {"registry.example": {"username": "u", "password": "p"}}}

``repository`` is named as in a pull from this edge (a project id, or ``org/path``).
``credentials`` are per registry name as Docker keys them (``docker.io`` for Docker Hub);
a target registry without an entry is spoken to anonymously.

Bad input is an ``InputError`` (400): its message names the field, never a value of
``credentials``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.client.credentials import Credentials
from core.digest import Digest
from core.errors import InputError, RegistryError
from core.image_reference import ImageReference, normalise_registry, parse_image_reference
from core.reference import RepositoryName, Tag, parse_manifest_reference, parse_repository_name

MAX_CREDENTIAL_CHARS = 64 * 1024


@dataclass(frozen=True)
class JobRequest:
    repository: RepositoryName  # as the caller named it (external)
    reference: Tag | Digest
    targets: tuple[ImageReference, ...]
    credentials: Mapping[str, Credentials] = field(repr=False)

    @property
    def source(self) -> str:
        separator = "@" if isinstance(self.reference, Digest) else ":"
        return f"{self.repository}{separator}{self.reference}"


def parse_job_request(document: Any) -> JobRequest:
    if not isinstance(document, dict):
        raise InputError("the body must be a JSON object")
    unknown = set(document) - {"source", "targets", "credentials"}
    if unknown:
        raise InputError(f"unknown fields: {', '.join(sorted(map(str, unknown)))[:200]}")
    source = document.get("source")
    if not isinstance(source, dict):
        raise InputError("source must be an object with repository and reference")
    repository_text, reference_text = source.get("repository"), source.get("reference")
    if not isinstance(repository_text, str) or not isinstance(reference_text, str):
        raise InputError("source.repository and source.reference must be strings")
    try:
        repository = parse_repository_name(repository_text)
        reference = parse_manifest_reference(reference_text)
    except RegistryError as exc:
        raise InputError(f"invalid source: {exc.message}") from exc
    targets = document.get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise InputError("targets must be a list of REGISTRY/REPOSITORY:TAG strings")
    parsed_targets = tuple(parse_image_reference(target) for target in targets)
    return JobRequest(
        repository, reference, parsed_targets, _credentials(document.get("credentials"))
    )


def _credentials(value: Any) -> dict[str, Credentials]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError("credentials must map registry names to {username, password}")
    found: dict[str, Credentials] = {}
    for registry, entry in value.items():
        name = normalise_registry(str(registry))
        if not name or not isinstance(entry, dict):
            raise InputError("credentials must map registry names to {username, password}")
        username, password = entry.get("username"), entry.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise InputError(f"credentials for {name[:100]}: username and password must be strings")
        if len(username) + len(password) > MAX_CREDENTIAL_CHARS:
            raise InputError(f"credentials for {name[:100]} are too long")
        found[name] = Credentials(username, password)
    return found
