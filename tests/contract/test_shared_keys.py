"""Token-signing keys shared through PostgreSQL: every origin on the database signs with the
same key and publishes the same JWKS, whichever started first, and a token one issued
verifies at another."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from core.auth.tokens import Grant, sign_grant, verify_grant
from core.errors import DatabaseError
from origin.auth.keys import KeyRing, rotate, shared_key_ring
from origin.metadata.database import Database
from origin.upstreams.cipher import CredentialCipher

pytestmark = pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)


def cipher() -> CredentialCipher:
    return CredentialCipher(b"k" * 32)


async def test_origins_starting_together_agree_on_one_key(
    open_database: Callable[[], Database], tmp_path: Path
) -> None:
    rings: list[KeyRing] = []

    async def start(database: Database, name: str) -> None:
        rings.append(await shared_key_ring(database, cipher(), tmp_path / name, time.time()))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(start, open_database(), f"origin-{index}")
    jwks = [ring.jwks() for ring in rings]
    assert jwks[0] == jwks[1] == jwks[2] and len(jwks[0]["keys"]) == 1
    assert len({ring.current.kid for ring in rings}) == 1

    now = int(time.time())
    grant = Grant("u", "user", frozenset({"acme"}), (), now, now + 300, "jti")
    token = sign_grant(
        grant,
        private_key=rings[0].current.private_key,
        kid=rings[0].current.kid,
        issuer="depot-registry",
        audience="depot-registry",
    )
    verified = verify_grant(
        token, jwks=rings[2].jwks(), issuer="depot-registry", audience="depot-registry", now=now
    )
    assert verified.subject == "u"


async def test_key_files_join_the_shared_ring_and_a_wrong_cipher_key_is_refused(
    open_database: Callable[[], Database], tmp_path: Path
) -> None:
    (tmp_path / "keys").mkdir()
    older = rotate(tmp_path / "keys")
    await trio.sleep(0.002)  # key files are named by the millisecond they were made
    newer = rotate(tmp_path / "keys")
    with trio.fail_after(30):
        ring = await shared_key_ring(open_database(), cipher(), tmp_path / "keys", time.time())
        assert ring.current.kid == newer.kid
        assert [key["kid"] for key in ring.jwks()["keys"]] == [older.kid, newer.kid]
        # A newer key file (a rotation) joins at the next start, and signs from then on.
        await trio.sleep(0.002)
        rotated = rotate(tmp_path / "keys")
        ring = await shared_key_ring(open_database(), cipher(), tmp_path / "keys", time.time())
        assert ring.current.kid == rotated.kid
        assert [key["kid"] for key in ring.jwks()["keys"]] == [older.kid, newer.kid, rotated.kid]
        # Another origin without the file reads the same ring from the database.
        elsewhere = await shared_key_ring(open_database(), cipher(), tmp_path / "x", time.time())
        assert elsewhere.jwks() == ring.jwks()
        other = CredentialCipher(base64.b64decode(base64.b64encode(secrets.token_bytes(32))))
        with pytest.raises(DatabaseError, match="another key"):
            await shared_key_ring(open_database(), other, tmp_path / "none", time.time())
