"""Encryption at rest of the credentials orgs register for upstream registries.

AES-256-GCM (``cryptography``'s AESGCM), not Fernet: GCM authenticates associated data, and
each ciphertext is bound to its row (the org's id, the upstream's name and the username), so
a ciphertext copied into another org's row, or under another username, does not decrypt.
Fernet has no associated data. A fresh 96-bit random nonce per encryption.

The key is 32 random bytes, base64 in a file (``upstream_credentials_key_file``; by default
``upstream-credentials.key`` in the data directory, created 0600 on first start like the
signing keys, written by rename so it is never half there). Origins that share a database
must share the key file. Stored text: ``v1.<key id>.<base64url(nonce || ciphertext)>``, the
key id being the first 8 bytes of the key's SHA-256 in hex, so a wrong key is named as such
instead of failing as corrupt data.

Nothing here logs or returns a secret in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import ConfigError, DatabaseError

KEY_BYTES = 32
NONCE_BYTES = 12
DEFAULT_KEY_FILE = "upstream-credentials.key"
_VERSION = "v1"


class CredentialCipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"an upstream credentials key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:16]

    @classmethod
    def load(cls, path: Path, *, create: bool) -> CredentialCipher:
        """The key in ``path``; with ``create``, a new one is written there if none exists.
        ConfigError when the file cannot be read or holds no 32-byte base64 key."""
        if create and not path.exists():
            _write_new_key(path)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the upstream credentials key {path}: {exc}") from exc
        try:
            key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{path} holds no base64 key") from exc
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{path}: an upstream credentials key is {KEY_BYTES} bytes")
        return cls(key)

    def encrypt(self, plaintext: str, *, org_id: str, name: str, username: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), _bound(org_id, name, username))
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{_VERSION}.{self.key_id}.{body}"

    def decrypt(self, stored: str, *, org_id: str, name: str, username: str) -> str:
        """The plaintext; DatabaseError (the row cannot be used) when the text is not ours,
        was sealed with another key, or does not belong to this row."""
        version, _, rest = stored.partition(".")
        key_id, _, body = rest.partition(".")
        if version != _VERSION or not body:
            raise DatabaseError(f"upstream {name!r}: unreadable stored credentials")
        if key_id != self.key_id:
            raise DatabaseError(
                f"upstream {name!r}: credentials sealed with another key ({key_id}); "
                "is upstream_credentials_key_file the key the other origins use?"
            )
        try:
            raw = base64.urlsafe_b64decode(body)
            opened = self._aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], _bound(org_id, name, username)
            )
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise DatabaseError(f"upstream {name!r}: stored credentials do not verify") from exc
        return opened.decode()


def _bound(org_id: str, name: str, username: str) -> bytes:
    return "\n".join(("depot-registry upstream credential", org_id, name, username)).encode()


def _write_new_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    text = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    # 0600 from the first byte, then renamed: never a readable or partial key.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(temporary, path)  # never replaces a key another process just wrote
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
