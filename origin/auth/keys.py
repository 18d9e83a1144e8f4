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
    database: Database, cipher: CredentialCipher, key_directory: Path, now: float
) -> KeyRing:
    """The keys every origin on ``database`` signs and verifies with, newest signing.

    Under a transaction-scoped advisory lock (origins starting together agree on one set),
    the key files of ``key_directory`` the database lacks are added, dated by their file
    name: the first origin to start stores its keys (an origin moving from SQLite keeps its
    tokens valid; a deployment's key Secret copied into the directory becomes the fleet's),
    and a newer file added later (a rotation) joins at the next start. With no key anywhere,
    a new one is made. DatabaseError when a key is sealed with another upstream credentials
    key than this origin's."""
    files = _keys_in(key_directory)
    fresh = None
    if not files:
        private_key, kid = generate_signing_key()
        fresh = (SigningKey(kid, private_key), now)

    def sealed(key: SigningKey, created: float) -> tuple[str, str, float]:
        pem = dump_private_pem(key.private_key).decode()
        return key.kid, cipher.encrypt(pem, username=key.kid, **_SEALED_AS), created

    rows = await database.write(
        _merge_keys,
        [sealed(key, created) for key, created in files],
        None if fresh is None else sealed(*fresh),
    )
    keys = [
        SigningKey(kid, load_private_pem(cipher.decrypt(text, username=kid, **_SEALED_AS).encode()))
        for kid, text in rows
    ]
    return KeyRing(keys)


def _keys_in(directory: Path) -> list[tuple[SigningKey, float]]:
    """The keys of a key directory with their creation times (from ``<ms>-<kid>.pem``),
    oldest first (start-up only: blocking reads)."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.pem")):
        stamp, _, kid = path.stem.partition("-")
        created = int(stamp) / 1000 if stamp.isdigit() else 0.0
        found.append((SigningKey(kid, load_private_pem(path.read_bytes())), created))
    return found


def _merge_keys(
    conn: sa.Connection,
    files: list[tuple[str, str, float]],
    fresh: tuple[str, str, float] | None,
) -> list[tuple[str, str]]:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_key(_KEYS_LOCK))))
    known = {str(kid) for (kid,) in conn.execute(sa.select(signing_keys.c.kid))}
    added = [row for row in files if row[0] not in known]
    if not known and not added and fresh is not None:
        added = [fresh]
    if added:
        conn.execute(
            sa.insert(signing_keys),
            [{"kid": kid, "sealed_pem": text, "created_at": at} for kid, text, at in added],
        )
    query = sa.select(signing_keys.c.kid, signing_keys.c.sealed_pem).order_by(
        signing_keys.c.created_at, signing_keys.c.kid
    )
    return [(str(kid), str(text)) for kid, text in conn.execute(query)]
