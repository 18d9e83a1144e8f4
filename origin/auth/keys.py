"""The origin's token-signing keys, newest signs: PEM files under ``<data dir>/keys`` for an
origin on SQLite (one host); on a PostgreSQL database, shared by every origin through the
``signing_keys`` table, so a token issued by one verifies at every other and all publish the
same JWKS.

Every key stays in the published JWKS until it is removed, so tokens signed before a
rotation keep verifying (at edges too) until they expire.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from core.auth.tokens import (
    dump_private_pem,
    generate_signing_key,
    jwks,
    load_private_pem,
    public_jwk,
)
from origin.auth.schema import signing_keys
from origin.metadata.database import Database, advisory_key
from origin.upstreams.cipher import CredentialCipher


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


# -- shared through the database -----------------------------------------------------------------

#: Associated data binding a sealed key to its row (see ``origin/upstreams/cipher.py``): the
#: empty org id is no org's, so no upstream credential row can be passed off as a key.
_SEALED_AS = {"org_id": "", "name": "token-signing-key"}
_KEYS_LOCK = "signing-keys"


async def shared_key_ring(
    database: Database, cipher: CredentialCipher, seed_directory: Path, now: float
) -> KeyRing:
    """The keys every origin on ``database`` signs and verifies with. The first origin to
    start creates them, under a transaction-scoped advisory lock (two origins starting
    together agree on one set): the keys of its ``seed_directory`` if it has any (an origin
    moving from SQLite keeps its tokens valid), else a new one. DatabaseError when a key is
    sealed with another upstream credentials key than this origin's."""
    seeds = _keys_in(seed_directory)
    if not seeds:
        private_key, kid = generate_signing_key()
        seeds = [SigningKey(kid, private_key)]
    sealed = [
        (
            key.kid,
            cipher.encrypt(
                dump_private_pem(key.private_key).decode(), username=key.kid, **_SEALED_AS
            ),
            now + index * 1e-6,
        )
        for index, key in enumerate(seeds)
    ]
    rows = await database.write(_load_or_seed, sealed)
    keys = [
        SigningKey(kid, load_private_pem(cipher.decrypt(text, username=kid, **_SEALED_AS).encode()))
        for kid, text in rows
    ]
    return KeyRing(keys)


def _keys_in(directory: Path) -> list[SigningKey]:
    """The keys of a key directory, oldest first (start-up only: blocking reads)."""
    if not directory.is_dir():
        return []
    return [
        SigningKey(path.stem.split("-", 1)[1], load_private_pem(path.read_bytes()))
        for path in sorted(directory.glob("*.pem"))
    ]


def _load_or_seed(
    conn: sa.Connection, sealed: list[tuple[str, str, float]]
) -> list[tuple[str, str]]:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_key(_KEYS_LOCK))))
    query = sa.select(signing_keys.c.kid, signing_keys.c.sealed_pem).order_by(
        signing_keys.c.created_at, signing_keys.c.kid
    )
    found = [(str(kid), str(text)) for kid, text in conn.execute(query)]
    if found:
        return found
    conn.execute(
        sa.insert(signing_keys),
        [{"kid": kid, "sealed_pem": text, "created_at": at} for kid, text, at in sealed],
    )
    return [(kid, text) for kid, text, _ in sealed]
