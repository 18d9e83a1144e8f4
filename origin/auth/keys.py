"""The origin's token-signing keys: PEM files under ``<data dir>/keys``, newest signs.

Every key stays in the published JWKS until it is removed, so tokens signed before a
rotation keep verifying (at edges too) until they expire.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.auth.tokens import (
    dump_private_pem,
    generate_signing_key,
    jwks,
    load_private_pem,
    public_jwk,
)


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Any  # cryptography EllipticCurvePrivateKey


class KeyRing:
    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._keys = keys  # oldest first

    @property
    def current(self) -> SigningKey:
        return self._keys[-1]

    def jwks(self) -> dict[str, Any]:
        return jwks(public_jwk(key.private_key, key.kid) for key in self._keys)

    @classmethod
    def load(cls, directory: Path, *, create: bool = True) -> KeyRing:
        """Read ``*.pem`` (named ``<created>-<kid>.pem``); make the first key when none."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        paths = sorted(directory.glob("*.pem"))
        if not paths and create:
            return cls([rotate(directory)])
        keys = [
            SigningKey(path.stem.split("-", 1)[1], load_private_pem(path.read_bytes()))
            for path in paths
        ]
        return cls(keys)


def rotate(directory: Path) -> SigningKey:
    """Create a new key that signs from the next start on; older keys keep verifying."""
    private_key, kid = generate_signing_key()
    path = directory / f"{int(time.time() * 1000):015d}-{kid}.pem"
    temporary = path.with_suffix(".tmp")
    # Written 0600 from the first byte, then renamed: never a readable or partial key.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(dump_private_pem(private_key))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    return SigningKey(kid, private_key)
