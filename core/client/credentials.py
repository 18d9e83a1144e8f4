"""Where the registry client gets a username and password for a registry host.

A :class:`CredentialsProvider` is asked each time the client needs credentials (for Basic
auth, or to fetch a Bearer token from the registry's token service), so a provider may read
them lazily and change them over time. Providers here:

- :data:`ANONYMOUS`: no credentials (anonymous pulls, token services that allow it);
- :class:`StaticCredentials`: one username and password for every host; the project's own
  tokens go as ``x-token:<token>`` (:func:`x_token_credentials`), which origin accepts both
  as Basic auth on ``/v2`` and at ``/token``;
- Docker's ``config.json`` (``auths``, ``credsStore``, ``credHelpers``) is the next provider
  to add here, for the ``depot push`` relay.

Secrets never appear in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Protocol

#: The username that marks a depot-registry token as the password.
X_TOKEN_USER = "x-token"


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_authorization(self) -> str:
        """The ``Authorization`` value for Basic auth with these credentials."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


class CredentialsProvider(Protocol):
    async def credentials(self, registry_host: str) -> Credentials | None:
        """Credentials for ``registry_host`` (``host[:port]``), or None: go anonymous."""
        ...


class AnonymousCredentials:
    async def credentials(self, registry_host: str) -> Credentials | None:
        return None


ANONYMOUS = AnonymousCredentials()


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """The same credentials for every registry host."""

    value: Credentials

    async def credentials(self, registry_host: str) -> Credentials | None:
        return self.value


def x_token_credentials(token: str) -> StaticCredentials:
    """A depot-registry token (org, pull, edge ...) as ``x-token:<token>``."""
    return StaticCredentials(Credentials(X_TOKEN_USER, token))
