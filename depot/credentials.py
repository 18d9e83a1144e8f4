"""Which registry ``depot`` talks to, and with which token.

Each of the two is taken from the first place that has it: the command-line flag
(``--registry``, ``--token``), then the environment (``DEPOT_REGISTRY``, ``DEPOT_TOKEN``), then
the file ``depot login`` writes: ``$XDG_CONFIG_HOME/depot/credentials.json`` (default
``~/.config/depot/credentials.json``), mode 0600, holding one token per registry and the
registry logged in to last::

    {"current": "https://registry.example",
     "registries": {"https://registry.example": {"token": "dpu_..."}}}

A token from the file is used only for the registry it was saved for. Tokens are never
printed: :class:`Credentials` masks its token in ``repr``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.errors import InputError

REGISTRY_ENV = "DEPOT_REGISTRY"
TOKEN_ENV = "DEPOT_TOKEN"
FILE_MODE = 0o600


class CredentialsError(InputError):
    """No registry or no token could be found, or the credentials file is unreadable."""


@dataclass(frozen=True)
class Credentials:
    registry: str  # normalised base URL: scheme://host[:port]
    token: str = field(repr=False)
    registry_source: str  # "flag", "env" or "file"
    token_source: str

    def __repr__(self) -> str:
        return (
            f"Credentials(registry={self.registry!r}, token=<{self.token_source}>, "
            f"registry_source={self.registry_source!r})"
        )


def normalise_registry(text: str) -> str:
    """``registry.example`` → ``https://registry.example``; loopback hosts without a scheme
    (``127.0.0.1:5000``, ``localhost:5000``) get ``http://``, as docker treats them."""
    text = text.strip()
    if not text:
        raise CredentialsError("the registry address is empty")
    if "://" not in text:
        host = urlsplit(f"//{text}").hostname or ""
        text = f"{'http' if _is_loopback(host) else 'https'}://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CredentialsError(f"not a registry address: {text!r} (expected [http(s)://]HOST)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise CredentialsError(f"a registry address is only scheme://host[:port], not {text!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path(env.get("HOME", "~")) / ".config"
    return root.expanduser() / "depot" / "credentials.json"


def read_file(path: Path) -> dict[str, Any]:
    """The credentials file's content; an empty document when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"registries": {}}
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise CredentialsError(f"{path} is not valid JSON; run depot login again") from exc
    if not isinstance(document, dict) or not isinstance(document.get("registries"), dict):
        raise CredentialsError(f"{path} is not a depot credentials file")
    return document


def save_token(registry: str, token: str, path: Path) -> None:
    """Store ``token`` for ``registry`` in ``path`` (mode 0600, written atomically) and make
    ``registry`` the current one."""
    document = read_file(path)
    document["registries"][registry] = {"token": token}
    document["current"] = registry
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".credentials-", dir=path.parent)  # created 0600
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as file:
            json.dump(document, file, indent=2)
            file.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def resolve(
    registry_flag: str | None,
    token_flag: str | None,
    environ: Mapping[str, str] | None = None,
) -> Credentials:
    """Registry and token, each from flag, then environment, then the credentials file."""
    env = os.environ if environ is None else environ
    path = credentials_path(env)
    document: dict[str, Any] | None = None

    def file_document() -> dict[str, Any]:
        nonlocal document
        if document is None:
            document = read_file(path)
        return document

    if registry_flag:
        registry, registry_source = normalise_registry(registry_flag), "flag"
    elif env.get(REGISTRY_ENV):
        registry, registry_source = normalise_registry(env[REGISTRY_ENV]), "env"
    else:
        current = file_document().get("current")
        if not isinstance(current, str) or not current:
            raise CredentialsError(
                f"no registry: pass --registry, set {REGISTRY_ENV} or run depot login REGISTRY"
            )
        registry, registry_source = normalise_registry(current), "file"

    if token_flag:
        return Credentials(registry, token_flag, registry_source, "flag")
    if env.get(TOKEN_ENV):
        return Credentials(registry, env[TOKEN_ENV], registry_source, "env")
    entry = file_document()["registries"].get(registry)
    token = entry.get("token") if isinstance(entry, dict) else None
    if not isinstance(token, str) or not token:
        raise CredentialsError(
            f"no token for {registry}: pass --token, set {TOKEN_ENV} or run depot login {registry}"
        )
    return Credentials(registry, token, registry_source, "file")
