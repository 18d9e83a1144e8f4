"""A registry's credentials the way Docker finds them: ``config.json`` and credential helpers.

``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``), as ``docker login`` writes
it::

    {"auths": {"registry.example": {"auth": "<base64 user:password>"}},
     "credHelpers": {"ghcr.io": "gh"},
     "credsStore": "desktop"}

For a registry host, in Docker's order: its ``credHelpers`` entry (the program
``docker-credential-<name>``), else ``credsStore`` (the same protocol, for every registry), else
its ``auths`` entry; nothing found means anonymous. A helper is run as
``docker-credential-<name> get`` with the server address on stdin and answers
``{"ServerURL", "Username", "Secret"}``; an answer of "credentials not found" (non-zero exit)
falls back to ``auths``, as Docker does.

Keys in ``auths`` are written several ways (``registry.example``,
``https://registry.example/v1/``); Docker Hub is ``https://index.docker.io/v1/``. Lookups
match on the host[:port] of each key.

Secrets are never printed or logged: :class:`RegistryLogin` masks its password in ``repr``,
and error messages name the registry and the helper, never what they returned.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from core.errors import InputError

#: Docker Hub's key in ``auths`` and the server address its helpers are asked for.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
HELPER_SECONDS = 30
#: Username a helper answers for an identity (OAuth refresh) token instead of a password.
IDENTITY_TOKEN_USERNAME = "<token>"


class DockerCredentialsError(InputError):
    """The Docker config or a credential helper could not be used."""


@dataclass(frozen=True)
class RegistryLogin:
    username: str
    password: str = field(repr=False)
    #: Where it came from: "auths", "credHelpers:<name>" or "credsStore:<name>".
    source: str = ""

    def __repr__(self) -> str:
        return f"RegistryLogin(username={self.username!r}, password=<hidden>, {self.source})"


def config_dir(environ: Mapping[str, str]) -> Path:
    """``$DOCKER_CONFIG``, else ``~/.docker``."""
    configured = environ.get("DOCKER_CONFIG")
    if configured:
        return Path(configured)
    return Path(environ.get("HOME") or Path.home()) / ".docker"


def registry_host(reference_or_host: str) -> str:
    """The host[:port] credentials are looked up for: ``docker.io`` for Docker Hub names,
    otherwise the host part of ``host[:port]/repo...`` or of a URL, lower-cased."""
    text = reference_or_host.strip()
    if "://" in text:
        text = urlsplit(text).netloc
    host = text.split("/", 1)[0].lower()
    return "docker.io" if host in DOCKER_HUB_HOSTS else host


def read_config(directory: Path) -> dict[str, Any]:
    """The parsed ``config.json``; ``{}`` when there is none."""
    path = directory / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DockerCredentialsError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise DockerCredentialsError(f"{path} is not valid JSON") from exc
    if not isinstance(document, dict):
        raise DockerCredentialsError(f"{path} is not a JSON object")
    return document


def _entry_for(table: Any, host: str) -> Any:
    if not isinstance(table, dict):
        return None
    for key, value in table.items():
        if isinstance(key, str) and registry_host(key) == host:
            return value
    return None


def from_auths(config: Mapping[str, Any], host: str) -> RegistryLogin | None:
    """The ``auths`` entry for ``host`` (``auth`` base64, or ``username``/``password``)."""
    entry = _entry_for(config.get("auths"), host)
    if not isinstance(entry, dict):
        return None
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return RegistryLogin(IDENTITY_TOKEN_USERNAME, token, "auths")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise DockerCredentialsError(f"the auths entry for {host} is not base64") from exc
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise DockerCredentialsError(f"the auths entry for {host} has no password")
        return RegistryLogin(user, secret, "auths")
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str) and username:
        return RegistryLogin(username, password, "auths")
    return None


def helper_for(config: Mapping[str, Any], host: str) -> str | None:
    """The credential helper's name for ``host``: ``credHelpers``, else ``credsStore``."""
    named = _entry_for(config.get("credHelpers"), host)
    if isinstance(named, str) and named:
        return named
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def server_address(host: str) -> str:
    """What a helper is asked for: Docker Hub's legacy URL, else the host itself."""
    return DOCKER_HUB_KEY if host == "docker.io" else host


async def from_helper(name: str, host: str, environ: Mapping[str, str]) -> RegistryLogin | None:
    """Ask ``docker-credential-<name>``; None when it has nothing for ``host``."""
    program = f"docker-credential-{name}"
    try:
        with trio.fail_after(HELPER_SECONDS):
            result = await trio.run_process(
                [program, "get"],
                stdin=server_address(host).encode(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=dict(environ),
            )
    except FileNotFoundError as exc:
        raise DockerCredentialsError(f"credential helper {program} is not installed") from exc
    except trio.TooSlowError as exc:
        raise DockerCredentialsError(f"credential helper {program} did not answer") from exc
    if result.returncode != 0:
        return None  # "credentials not found in native keychain": Docker falls back too
    try:
        answer = json.loads(result.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DockerCredentialsError(f"credential helper {program} answered nonsense") from exc
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    return RegistryLogin(username, secret, f"helper:{name}")


async def lookup(
    reference_or_host: str, environ: Mapping[str, str] | None = None
) -> RegistryLogin | None:
    """The credentials Docker would use for the registry of ``reference_or_host``, or None
    (anonymous)."""
    env = os.environ if environ is None else environ
    host = registry_host(reference_or_host)
    config = read_config(config_dir(env))
    helper = helper_for(config, host)
    if helper is not None:
        found = await from_helper(helper, host, env)
        if found is not None:
            return found
    return from_auths(config, host)
