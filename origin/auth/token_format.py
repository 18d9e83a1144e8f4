"""The shape of long-lived registry tokens (pure: no I/O, no clock).

A token reads ``<prefix><token id><secret>``: a prefix naming its kind (so a leaked token is
recognisable in logs and by secret scanners), 16 characters ``[a-z0-9]`` of id (the database
key, safe to show and log), then 32 characters of base62 secret (~190 bits from ``secrets``).
Only ``hash_secret(secret)`` is stored; the full token is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string

USER, ORG, PROJECT, PULL, EDGE = "user", "org", "project", "pull", "edge"
PREFIXES = {USER: "dpu_", ORG: "dpo_", PROJECT: "dpp_", PULL: "dpr_", EDGE: "dpe_"}
KINDS = frozenset(PREFIXES)
_KIND_OF_PREFIX = {prefix: kind for kind, prefix in PREFIXES.items()}

TOKEN_ID_LENGTH = 16
SECRET_LENGTH = 32
_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
# Explicit ASCII ranges: ``\w`` or str.isalnum() would also accept non-ASCII letters.
_PREFIX_PATTERN = "|".join(map(re.escape, _KIND_OF_PREFIX))
_TOKEN = re.compile(
    f"({_PREFIX_PATTERN})([a-z0-9]{{{TOKEN_ID_LENGTH}}})([A-Za-z0-9]{{{SECRET_LENGTH}}})"
)


def random_string(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_token(kind: str) -> tuple[str, str, str]:
    """``(token_id, secret, full_token)`` for a fresh token of ``kind``."""
    prefix = PREFIXES.get(kind)
    if prefix is None:
        raise ValueError(f"unknown token kind {kind!r} (one of {', '.join(sorted(KINDS))})")
    token_id = random_string(_ID_ALPHABET, TOKEN_ID_LENGTH)
    secret = random_string(_SECRET_ALPHABET, SECRET_LENGTH)
    return token_id, secret, prefix + token_id + secret


def parse_token(text: str) -> tuple[str, str, str] | None:
    """``(kind, token_id, secret)``, or None for anything not shaped like a registry token."""
    match = _TOKEN.fullmatch(text)
    if match is None:
        return None
    return _KIND_OF_PREFIX[match.group(1)], match.group(2), match.group(3)


def hash_secret(secret: str) -> str:
    """The stored form of a secret: SHA-256, hex.

    A fast hash is right here: the secret is ~190 bits drawn from ``secrets``, so nothing can
    be guessed offline from a leaked hash, and a slow password hash (bcrypt, scrypt) would
    only add CPU to every authentication.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_registry_token(text: str) -> bool:
    """Whether ``text`` carries a registry token prefix (it may still be malformed or invalid;
    authentication decides). Lets callers route a credential to token authentication rather
    than, say, OIDC, and redact anything that looks like a token from logs."""
    return text.startswith(tuple(_KIND_OF_PREFIX))
