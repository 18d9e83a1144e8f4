"""Content digests (``algorithm:encoded``) as the OCI image spec defines them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from core.errors import DigestInvalid

# Algorithms we can verify; the grammar admits others, which we refuse as unsupported.
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_digest(text: str) -> Digest:
    """Parse and validate a digest string; raise :class:`DigestInvalid` when malformed."""
    if not _GRAMMAR.match(text):
        raise DigestInvalid("invalid digest format", detail={"digest": text[:200]})
    algorithm, encoded = text.split(":", 1)
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        raise DigestInvalid("unsupported digest algorithm", detail={"digest": text[:200]})
    if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise DigestInvalid("invalid digest encoding", detail={"digest": text[:200]})
    return Digest(algorithm, encoded)


def sha256_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())
