"""Repository names, tags and manifest references, validated as the OCI spec defines them.

Only the parsers here produce :class:`RepositoryName`, :class:`Tag` and manifest
references, so a value of those types is always valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.digest import Digest, parse_digest
from core.errors import ManifestInvalid, NameInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# Distribution's limit; with a host prefix the whole reference stays under 255.
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class RepositoryName:
    value: str

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Tag:
    value: str

    def __str__(self) -> str:
        return self.value


def parse_repository_name(text: str) -> RepositoryName:
    if len(text) > MAX_NAME_LENGTH or not _NAME.match(text):
        raise NameInvalid(detail={"name": text[:300]})
    return RepositoryName(text)


def is_tag(text: str) -> bool:
    return bool(_TAG.match(text))


def parse_tag(text: str) -> Tag:
    if not is_tag(text):
        raise ManifestInvalid("invalid tag", detail={"tag": text[:200]})
    return Tag(text)


def parse_manifest_reference(text: str) -> Tag | Digest:
    """A manifest reference is a digest when it contains ':' and a tag otherwise."""
    if ":" in text:
        return parse_digest(text)
    return parse_tag(text)
