"""Encryption at rest of orgs' upstream credentials (origin/upstreams/cipher.py)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from core.errors import ConfigError, DatabaseError
from origin.upstreams.cipher import CredentialCipher

ROW = {"org_id": "org_1", "name": "ghcr.io", "username": "bot"}


def test_a_new_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "upstream-credentials.key"
    first = CredentialCipher.load(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text().strip())) == 32
    again = CredentialCipher.load(path, create=True)
    assert again.key_id == first.key_id
    sealed = first.encrypt("hunter2", **ROW)
    assert again.decrypt(sealed, **ROW) == "hunter2"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_ciphertexts_are_bound_to_their_row_and_key(tmp_path: Path) -> None:
    cipher = CredentialCipher(b"k" * 32)
    sealed = cipher.encrypt("hunter2", **ROW)
    assert "hunter2" not in sealed and sealed.startswith(f"v1.{cipher.key_id}.")
    assert sealed != cipher.encrypt("hunter2", **ROW)  # a fresh nonce each time
    for other in ({"org_id": "org_2"}, {"name": "quay.io"}, {"username": "root"}):
        with pytest.raises(DatabaseError, match="do not verify"):
            cipher.decrypt(sealed, **{**ROW, **other})
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(DatabaseError, match="do not verify"):
        cipher.decrypt(tampered, **ROW)
    with pytest.raises(DatabaseError, match="another key"):
        CredentialCipher(b"j" * 32).decrypt(sealed, **ROW)
    with pytest.raises(DatabaseError, match="unreadable"):
        cipher.decrypt("plain text", **ROW)
    with pytest.raises(DatabaseError) as raised:
        CredentialCipher(b"j" * 32).decrypt(sealed, **ROW)
    assert "hunter2" not in str(raised.value)


def test_configured_keys_must_exist_and_be_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        CredentialCipher.load(tmp_path / "missing.key", create=False)
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(ConfigError, match="32 bytes"):
        CredentialCipher.load(short, create=False)
    junk = tmp_path / "junk.key"
    junk.write_text("not base64 at all!")
    with pytest.raises(ConfigError, match="no base64 key"):
        CredentialCipher.load(junk, create=False)
    url_safe = tmp_path / "urlsafe.key"
    url_safe.write_text(base64.urlsafe_b64encode(b"\xfb" * 32).decode() + "\n")
    assert (
        CredentialCipher.load(url_safe, create=False).key_id
        == CredentialCipher(b"\xfb" * 32).key_id
    )
